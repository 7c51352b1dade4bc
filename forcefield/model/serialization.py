"""Checkpoints: the one module that writes and reads them.

A checkpoint is a `torch.save`d dict of plain data only (tensors, numbers, strings, None,
lists, tuples and dicts of them), so that it loads with `torch.load(weights_only=True)`:
loading a checkpoint somebody handed you never runs code. A file that needs anything else
is refused, not unpickled.

    {"format": "forcefield-checkpoint", "version": 2,
     "model_config": <ModelConfig as a JSON-able dict>,   # rebuilds the architecture
     "model_state": <state_dict to evaluate with>,        # the EMA weights when EMA is on
     ... training state (optimizer, schedule, EMA, RNG states as plain data, epoch,
         the position inside an epoch cut short by max_time) for --resume ...}

Version 1 (the first release) had the same content without the schedule state; it is read
as well. A newer version than this code knows is refused with a message saying so.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch

from forcefield.atomic_io import save_torch
from forcefield.errors import InputError
from forcefield.model.forcefield import ForceField

CHECKPOINT_FORMAT = "forcefield-checkpoint"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)


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
    if version == 1 and isinstance(ckpt.get("model_config"), dict):
        # version 1 predates the product basis: its models are two-body (correlation 1)
        ckpt["model_config"].setdefault("correlation", 1)
    return ckpt


def model_from_checkpoint(path: str | Path) -> ForceField:
    ckpt = read_checkpoint(path)
    model = ForceField.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model
