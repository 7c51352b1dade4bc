"""Checkpoint <-> model. A checkpoint is a torch.save'd dict:

    {"format": "forcefield-checkpoint", "version": 1,
     "model_config": <ModelConfig as dict>,          # rebuilds the architecture
     "model_state": <state_dict to evaluate with>,   # the EMA weights when EMA is on
     ... training state (optimizer, scheduler, EMA, RNG, epoch) for --resume ...}
"""
from __future__ import annotations

from pathlib import Path

import torch

from forcefield.errors import InputError
from forcefield.model.forcefield import ForceField

CHECKPOINT_FORMAT = "forcefield-checkpoint"


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a forcefield checkpoint")
    return ckpt


def model_from_checkpoint(path: str | Path) -> ForceField:
    ckpt = read_checkpoint(path)
    model = ForceField.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model
