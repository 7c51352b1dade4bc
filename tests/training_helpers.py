"""Shared helpers of tests/test_training_*.py and tests/test_cli.py: slices of the real
ethanol data (revised MD17) and configs of tiny models that train in seconds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import List, Optional

import ase.io
from paths import DATASETS

DATA = DATASETS
ETHANOL = DATA / "ethanol" / "train.xyz"
ETHANOL_E0 = DATA / "ethanol" / "isolated_atoms.xyz"
SPECIES = ["H", "C", "O"]

TINY_MODEL = {
    "species": SPECIES,
    "r_max": 5.0,
    "num_layers": 2,
    "channels": 4,
    "lmax": 1,
    "num_basis": 8,
    "radial_hidden": 8,
    "dtype": "float64",
}


def ethanol_atoms(n: int = 20, start: int = 0) -> list:
    return ase.io.read(ETHANOL, index=f"{start}:{start + n}")


def write_ethanol(path: Path, n: int = 20, start: int = 0) -> Path:
    """Write frames [start, start+n) of the ethanol training set to `path` (extxyz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, ethanol_atoms(n, start), format="extxyz")
    return path


def merge(base: dict, over: Optional[dict]) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def tiny_config(train: Path, **sections) -> dict:
    """A complete config dict for a tiny model on `train`; keyword sections override."""
    base = {
        "data": {"train": str(train), "valid": 0.25, "isolated_atoms": str(ETHANOL_E0)},
        "model": dict(TINY_MODEL),
        # the paper's regime (every DeNS loss term on), so the tests exercise all of them
        "dens": {"enabled": True, "prob": 0.5, "energy_loss": True, "uncorrupted_force_loss": True},
        "training": {"max_epochs": 2, "batch_size": 4, "lr": 0.01, "seed": 0, "device": "cpu", "num_threads": 1},
    }
    return merge(base, sections)


def ethanol_graphs(n: int = 6, r_max: float = TINY_MODEL["r_max"]) -> List:
    """Training graphs (with labels) of the first n ethanol structures."""
    from forcefield.data.frames import read_frames
    from forcefield.data.graph import frame_to_graph

    frames = read_frames(ETHANOL, index=f":{n}")
    return [frame_to_graph(f, SPECIES, r_max) for f in frames]
