"""Checkpoints: the one module that writes and reads them.

A checkpoint is a `torch.save`d dict of plain data only (tensors, numbers, strings, None,
lists, tuples and dicts of them), so that it loads with `torch.load(weights_only=True)`:
loading a checkpoint somebody handed you never runs code. A file that needs anything else
is refused, not unpickled.

    {"format": "forcefield-checkpoint", "version": 3,
     "model_config": <ModelConfig as a JSON-able dict>,   # the architecture
     "normalization": <Normalization as a JSON-able dict>,  # shift, scale, E0,
                                                          # avg_num_neighbors and their sources
     "model_state": <state_dict to evaluate with>,        # the EMA weights when EMA is on
     ... training state (optimizer, schedule, EMA, RNG states as plain data, epoch,
         the position inside an epoch cut short by max_time) for --resume ...}

Versions 1 and 2 kept the normalisation inside model_config (keys e0, shift, scale,
avg_num_neighbors); reading them splits it off (source "unrecorded"). Version 1 (the first
release) also had no schedule state and predates the product basis (correlation 1).
A newer version than this code knows is refused with a message saying so.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from forcefield.atomic_io import save_torch
from forcefield.errors import InputError
from forcefield.model.forcefield import ForceField
from forcefield.model.normalization import Normalization, default_normalization, split_legacy_model_config

CHECKPOINT_FORMAT = "forcefield-checkpoint"
CHECKPOINT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def write_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Atomically write `ckpt` (format and version are filled in)."""
    save_torch({**ckpt, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}, path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path}: refused: not a forcefield checkpoint (it holds objects other than "
            "tensors and plain data, and loading those could run code)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {msg})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a forcefield checkpoint")
    version = ckpt.get("version")
    if version not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: checkpoint format version {version!r}; this forcefield reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (written by a newer release?)"
        )
    if not isinstance(ckpt.get("model_config"), dict):
        raise InputError(f"{path}: checkpoint has no model_config")
    if version == 1:
        # version 1 predates the product basis: its models are two-body (correlation 1)
        ckpt["model_config"].setdefault("correlation", 1)
    if version < 3:
        ckpt["model_config"], ckpt["normalization"] = _legacy_normalization(ckpt["model_config"])
    return ckpt


def _legacy_normalization(model_config: dict):
    """(architecture, normalisation dict) of a version 1-2 model_config, which held both."""
    arch, given = split_legacy_model_config(model_config)
    species = arch.get("species") or []
    norm = default_normalization(species, given)
    norm.source = {
        "shift": "unrecorded",
        "e0": {s: "unrecorded" for s in species},
        "scale": "unrecorded",
        "avg_num_neighbors": "unrecorded",
    }
    return arch, norm.model_dump(mode="json")


def model_from_checkpoint(path: str | Path) -> ForceField:
    ckpt = read_checkpoint(path)
    model = ForceField.from_config(ckpt["model_config"], Normalization.model_validate(ckpt["normalization"]))
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model
