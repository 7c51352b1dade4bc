"""Checkpoint/model -> frozen TorchScript file for LAMMPS and Python (docs/design.md,
section "Export contract").

The exported module wraps the trained ForceField (never the DeNS force encoder or noise
head, which live outside it) with the deployment interface

    forward(pos (N,3), species (N,) int64, edge_index (2,E) int64, shifts (E,3), n_local: int)
        -> (energy (), node_energy (N,), forces (N,3), virial (6,) LAMMPS order xx yy zz xy xz yz)

energy sums atoms [0, n_local); forces cover all N atoms (LAMMPS ghosts included);
virial = -sum_ij r_ij (x) dE/dr_ij. Metadata travels as `_extra_files`.

This module only writes exports. Reading them (and checkpoints) is the core's job:
forcefield.model.deployed, which also defines FORMAT_VERSION and METADATA_KEYS; the
loaders are re-exported here for existing imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from forcefield.atomic_io import atomic_path
from forcefield.errors import InputError
from forcefield.model.deployed import (  # noqa: F401 - the loaders, re-exported for existing imports
    DTYPES,
    FORMAT_VERSION,
    METADATA_KEYS,
    is_exported_file,
    is_torchscript_archive,
    load_checkpoint_model,
    load_exported,
)
from forcefield.model.fast_tp import FUSED_OPERATORS, ChannelwiseTP
from forcefield.model.forcefield import ForceField


class DeployedModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, pos: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor, n_local: int
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        out = self.model(
            pos,
            species,
            edge_index,
            shifts,
            batch,
            1,
            n_local=n_local,
            compute_forces=True,
            compute_virial=True,
            create_graph=False,
        )
        w = out["virial"][0]
        virial = torch.stack([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        return out["energy"][0].detach(), out["node_energy"].detach(), out["forces"].detach(), virial.detach()


def metadata_of(model: nn.Module, dtype: str) -> dict:
    import e3nn

    import forcefield

    sw = model.switch
    norm = model.normalization()
    return {
        "format_version": FORMAT_VERSION,
        "species": list(model.species),
        "r_max": float(model.r_max),
        "num_layers": int(model.num_layers),
        "dtype": dtype,
        "switch": {"enabled": bool(sw.enabled), "tau": sw.tau, "r_on": sw.r_on, "r_off": sw.r_off},
        # e0 / shift / scale at the top level as in earlier exports; the full record (with
        # avg_num_neighbors and where each value came from) is "normalization"
        "e0": norm.e0,
        "shift": norm.shift,
        "scale": norm.scale,
        "model_config": model.model_config().model_dump(),
        "normalization": norm.model_dump(mode="json"),
        "package": "forcefield",
        "package_version": forcefield.__version__,
        "torch_version": torch.__version__,
        "e3nn_version": e3nn.__version__,
    }


def export_model(
    model: Union[nn.Module, str, Path], path: Union[str, Path], dtype: Optional[str] = None, fused_ops: bool = True
) -> Path:
    """Script `model` (a ForceField or a checkpoint path) and write it atomically to `path`.

    fused_ops: the model's message products on CPU (without create_graph) call the operators
    forcefield::channelwise_tp, _sum and _vjp, which the LAMMPS plugin runs as a fused C++
    kernel (export/pair_style/channelwise_tp.cpp) and `import forcefield` defines in Python
    (same numbers, plain torch). The file then loads only where they are registered. False:
    a self-contained file that loads with torch alone (slower in LAMMPS)."""
    from e3nn.util.jit import script

    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name for the exported model")
    if not isinstance(model, nn.Module):
        model = load_checkpoint_model(model)
    cfg = model.model_config()
    dtype = dtype or cfg.dtype
    if dtype not in DTYPES:
        raise InputError(f"export: dtype must be float32 or float64, got '{dtype}'")
    cfg.dtype = dtype
    fresh = ForceField.from_config(
        cfg, model.normalization()
    )  # a clean copy in the target dtype, nothing training-only
    state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    fresh.load_state_dict(state)
    fresh.eval()
    for m in fresh.modules():
        if isinstance(m, ChannelwiseTP):
            m.fused_ops = fused_ops  # a TorchScript constant: False leaves the calls out
    scripted = script(DeployedModel(fresh))
    meta = metadata_of(fresh, dtype)
    meta["operators"] = list(FUSED_OPERATORS) if fused_ops else []
    extra = {
        "format_version": str(FORMAT_VERSION),
        "species": " ".join(meta["species"]),
        "r_max": repr(meta["r_max"]),
        "num_layers": str(meta["num_layers"]),
        "dtype": dtype,
        # the operators the file calls, one word each ("" for none): what a loader checks for
        "operators": " ".join(meta["operators"]),
        "metadata.json": json.dumps(meta, indent=2),
    }
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path
