"""Fixtures of the GPU tests (tests/gpu, all marked `gpu`).

`device`: where the tests run. "cuda" by default: then tests/conftest.py skips them when torch
sees no CUDA device (the only skip the suite allows). FORCEFIELD_TEST_DEVICE overrides it:
=cpu runs every one of them on CPU (what `bench/gpu.sh --device cpu --small` does, so that
the same code runs on every CI run and cannot rot; the comparisons "device against CPU" then
compare two CPU runs, the LAMMPS ones the pair style's device path, forced on CPU with
FORCEFIELD_DEVICE_PATH=1, against its CPU path), =cuda makes a missing GPU an error instead
of a skip (what bench/gpu.sh does on a GPU machine).

The LAMMPS helpers are those of tests/lammps_utils.py, shared with tests/export/test_lammps_*.py,
so that these tests drive LAMMPS the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest
import torch


def requested_device() -> str:
    return os.environ.get("FORCEFIELD_TEST_DEVICE", "").strip() or "cuda"


@pytest.fixture(scope="session")
def device() -> str:
    dev = requested_device()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"FORCEFIELD_TEST_DEVICE={dev} but torch {torch.__version__} sees no CUDA device")
    return dev


def load_lammps_helpers():
    """The LAMMPS helpers and constants of tests/lammps_utils.py (a module, not a test file)."""
    import lammps_utils

    return lammps_utils


@pytest.fixture(scope="session")
def lm():
    return load_lammps_helpers()


@pytest.fixture(scope="session")
def device_env(device) -> Dict[str, str]:
    """Environment of a LAMMPS run on `device`: on CPU the pair style's device path (one
    staged copy in and out), which is what runs on a GPU."""
    return {} if device.startswith("cuda") else {"FORCEFIELD_DEVICE_PATH": "1"}


@pytest.fixture(scope="session")
def gpu_models(tmp_path_factory, lm) -> Dict[str, Path]:
    """The tiny real model of tests/export/test_lammps_model.py (every weight re-drawn),
    exported in float64 and float32, and portable (no fused operators) in float64."""
    from model_utils import make_model

    from forcefield.export.torchscript import export_model

    d = tmp_path_factory.mktemp("gpu_models")
    model = make_model("float64", seed=11, species=lm.SPECIES, channels=8, lmax=2, num_layers=2, r_max=lm.R_MAX)
    return {
        "f64": export_model(model, d / "model64.pt"),
        "f32": export_model(model, d / "model32.pt", dtype="float32"),
        "portable": export_model(model, d / "portable64.pt", fused_ops=False),
    }


@pytest.fixture(scope="session")
def alloy_cell(tmp_path_factory, lm):
    """108 rattled atoms of a Cu/Au FCC alloy in a triclinic periodic cell (as the bulk case
    of tests/export/test_lammps_model.py) with its LAMMPS data file."""
    d = tmp_path_factory.mktemp("gpu_bulk")
    atoms = lm.alloy_case(d, seed=5, tilt=(0.7, -0.4, 0.5))
    return d, atoms
