"""Shared fixtures and markers of the test suite.

Markers (set here from the file a test lives in, so no test has to remember them):
  lammps  runs LAMMPS with the pair style plugin (tests/export/test_lammps_*.py)
  slow    takes minutes: the demo, the real-model LAMMPS runs, folding with MPI
  gpu     needs a CUDA device; skipped only when none is present. FORCEFIELD_TEST_DEVICE=cpu
          runs them on CPU instead (the dry run of bench/gpu.sh), =cuda makes a missing GPU
          a failure instead of a skip (tests/gpu/conftest.py)
The fast part runs in well under a minute: `make test-fast` (-m "not lammps and not slow").
Test helpers (model_utils, training_helpers, toy_exported_model, paths) are importable
because pyproject's [tool.pytest.ini_options] puts tests/ on the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SLOW_FILES = {"test_demo.py", "test_lammps_model.py", "test_lammps_folding.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = Path(str(item.fspath)).name
        if name.startswith("test_lammps_"):
            item.add_marker(pytest.mark.lammps)
        if name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if (
            item.get_closest_marker("gpu")
            and not torch.cuda.is_available()
            and not os.environ.get("FORCEFIELD_TEST_DEVICE")
        ):
            item.add_marker(pytest.mark.skip(reason="no CUDA device present"))


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Give torch's global intra-op thread count back after every test (the Trainer and
    several tests set it)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def plugin_path() -> Path:
    """The LAMMPS plugin, built once per session (cached between sessions by export/plugin.py)."""
    from forcefield.export import plugin as ffplugin

    path = ffplugin.build_plugin()
    assert path.is_absolute() and path.is_file() and path.name == "forcefieldplugin.so"
    return path
