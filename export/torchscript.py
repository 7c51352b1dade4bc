"""Checkpoint/model -> frozen TorchScript file for LAMMPS and Python (DESIGN.md §5.5).

The exported module wraps the trained ForceField (never the DeNS force encoder or noise
head, which live outside it) with the deployment interface

    forward(pos (N,3), species (N,) int64, edge_index (2,E) int64, shifts (E,3), n_local: int)
        -> (energy (), node_energy (N,), forces (N,3), virial (6,) LAMMPS order xx yy zz xy xz yz)

energy sums atoms [0, n_local); forces cover all N atoms (LAMMPS ghosts included);
virial = -sum_ij r_ij (x) dE/dr_ij. Metadata travels as `_extra_files`.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from forcefield.atomic_io import atomic_path
from forcefield.errors import InputError

FORMAT_VERSION = 1
METADATA_KEYS = ("format_version", "species", "r_max", "num_layers", "dtype", "metadata.json")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DeployedModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pos: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                shifts: torch.Tensor, n_local: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        out = self.model(pos, species, edge_index, shifts, batch, 1, n_local, True, True, False, None)
        w = out["virial"][0]
        virial = torch.stack([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        return out["energy"][0].detach(), out["node_energy"].detach(), out["forces"].detach(), virial.detach()


def metadata_of(model: nn.Module, dtype: str) -> dict:
    import e3nn

    import forcefield

    sw = model.switch
    return {
        "format_version": FORMAT_VERSION,
        "species": list(model.species),
        "r_max": float(model.r_max),
        "num_layers": int(model.num_layers),
        "dtype": dtype,
        "switch": {"enabled": bool(sw.enabled), "tau": sw.tau, "r_on": sw.r_on, "r_off": sw.r_off},
        "e0": {s: float(v) for s, v in zip(model.species, model.e0.tolist())},
        "shift": {s: float(v) for s, v in zip(model.species, model.shift.tolist())},
        "scale": float(model.scale),
        "model_config": model.model_config().model_dump(),
        "package": "forcefield",
        "package_version": forcefield.__version__,
        "torch_version": torch.__version__,
        "e3nn_version": e3nn.__version__,
    }


def export_model(model: Union[nn.Module, str, Path], path: Union[str, Path],
                 dtype: Optional[str] = None) -> Path:
    """Script `model` (a ForceField or a checkpoint path) and write it atomically to `path`."""
    from e3nn.util.jit import script

    from forcefield.model.forcefield import ForceField

    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name for the exported model")
    if not isinstance(model, nn.Module):
        model = load_checkpoint_model(model)
    cfg = model.model_config()
    dtype = dtype or cfg.dtype
    if dtype not in _DTYPES:
        raise InputError(f"export: dtype must be float32 or float64, got '{dtype}'")
    cfg.dtype = dtype
    fresh = ForceField.from_config(cfg)  # a clean copy in the target dtype, nothing training-only
    state = {k: v.to(_DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    fresh.load_state_dict(state)
    fresh.eval()
    scripted = script(DeployedModel(fresh))
    meta = metadata_of(fresh, dtype)
    extra = {
        "format_version": str(FORMAT_VERSION),
        "species": " ".join(meta["species"]),
        "r_max": repr(meta["r_max"]),
        "num_layers": str(meta["num_layers"]),
        "dtype": dtype,
        "metadata.json": json.dumps(meta, indent=2),
    }
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path


def _zip_names(path: Path) -> list:
    import zipfile
    if not path.is_file() or not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return []


def is_torchscript_archive(path: Union[str, Path]) -> bool:
    """True for any TorchScript archive (a zip with code/ and constants.pkl), ours or not."""
    names = _zip_names(Path(path))
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_checkpoint_model(path: Union[str, Path]) -> nn.Module:
    """The ForceField of a training checkpoint; InputError (one line, no torch warning) for a
    missing file, an exported model, a foreign TorchScript file or anything else."""
    from forcefield.model.serialization import model_from_checkpoint

    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a checkpoint file (.ckpt)")
    if is_exported_file(path):
        raise InputError(f"{path}: is an exported model; this needs a training checkpoint (.ckpt)")
    if is_torchscript_archive(path):
        raise InputError(f"{path}: a TorchScript file but not a forcefield model (no forcefield metadata)")
    with warnings.catch_warnings():  # torch warns about files it can read only partly
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return model_from_checkpoint(path)


def is_exported_file(path: Union[str, Path]) -> bool:
    """True for a forcefield export (a TorchScript archive with extra/format_version)."""
    return any(n.endswith("/extra/format_version") for n in _zip_names(Path(path).expanduser()))


def load_exported(path: Union[str, Path], device: str = "cpu") -> Tuple[torch.jit.ScriptModule, dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    extra = {k: "" for k in METADATA_KEYS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a TorchScript model ({type(exc).__name__})") from None
    if not extra["metadata.json"]:
        raise InputError(f"{path}: not a forcefield export (no metadata)")
    meta = json.loads(extra["metadata.json"])
    if int(meta.get("format_version", -1)) != FORMAT_VERSION:
        raise InputError(f"{path}: unsupported format_version {meta.get('format_version')} "
                         f"(this forcefield reads {FORMAT_VERSION})")
    return module, meta
