"""Fixtures of the LAMMPS tests with a real exported model (test_lammps_model.py,
test_lammps_folding.py); their helpers are in tests/lammps_utils.py."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from ase import Atoms
from lammps_utils import R_MAX, SPECIES, lammps_cell
from model_utils import make_model
from toy_exported_model import write_lammps_data

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
    rng = np.random.default_rng(3)
    a, n = 3.75, 3
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.array([(b + [i, j, k]) / n for i in range(n) for j in range(n) for k in range(n) for b in base])
    cell = np.diag([a * n] * 3)
    cell[1, 0], cell[2, 0], cell[2, 1] = 0.8, -0.5, 0.6
    pos = frac @ cell + rng.normal(scale=0.12, size=(len(frac), 3))
    pos = (np.linalg.solve(cell.T, pos.T).T % 1.0) @ cell
    symbols = np.where(rng.random(len(pos)) < 0.4, "Au", "Cu")
    atoms = Atoms(list(symbols), positions=pos, cell=cell, pbc=True)
    types = np.array([SPECIES.index(s) + 1 for s in atoms.get_chemical_symbols()])
    write_lammps_data(d / "data.lmp", atoms.positions, types, lammps_cell(atoms), 2)
    return d, atoms
