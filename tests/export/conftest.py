"""Fixtures of the LAMMPS tests with a real exported model (test_lammps_model.py,
test_lammps_folding.py); their helpers are in tests/lammps_utils.py."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
from lammps_utils import R_MAX, SPECIES, alloy_case
from model_utils import make_model

from forcefield.export.torchscript import export_model


@pytest.fixture(scope="session")
def random_models(tmp_path_factory) -> Dict[str, Path]:
    """A tiny ForceField (lmax 2) with every weight re-drawn, exported in float64 and float32."""
    d = tmp_path_factory.mktemp("real_models")
    model = make_model("float64", seed=11, species=SPECIES, channels=8, lmax=2, num_layers=2, r_max=R_MAX)
    return {"f64": export_model(model, d / "model64.pt"), "f32": export_model(model, d / "model32.pt", dtype="float32")}


@pytest.fixture(scope="session")
def bulk_case(tmp_path_factory):
    """108 rattled atoms of a random Cu/Au FCC alloy in a triclinic periodic cell."""
    d = tmp_path_factory.mktemp("bulk")
    atoms = alloy_case(d, seed=3)
    return d, atoms
