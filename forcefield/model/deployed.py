"""Loading a deployed model: exported TorchScript files and training checkpoints.

An exported model (written by `forcefield.export.torchscript.export_model`) is a
TorchScript archive whose `_extra_files` carry the metadata named in METADATA_KEYS;
`metadata.json` holds all of it, `format_version` says which layout this is. Reading one
is a core concern (the ASE calculator, `evaluate`), so it lives here and the export
package imports the constants from this module. See docs/design.md, section "Export
contract".
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import nn

from forcefield.errors import InputError
from forcefield.model.forcefield import DEFAULT_MESSAGE_CHUNK, message_pieces_pay
from forcefield.model.serialization import model_from_checkpoint

FORMAT_VERSION = 1
# Edges per chunk of the inference path and atoms per chunk of its node updates on a GPU.
# The exported defaults (forcefield.model.forcefield.DEFAULT_EDGE_CHUNK / DEFAULT_NODE_CHUNK)
# are CPU-sized (a chunk's temporaries stay below glibc's mmap threshold); on a GPU a chunk
# is a batch of kernel launches, so larger ones mean fewer launches, and 32768 edges keep a
# chunk's temporaries near 1 GB (float32, default model). The pair style uses the same
# numbers (export/pair_style/pair_forcefield.cpp); FORCEFIELD_EDGE_CHUNK and
# FORCEFIELD_NODE_CHUNK override them (on any device) for both.
GPU_EDGE_CHUNK = 32768
GPU_NODE_CHUNK = 16384
METADATA_KEYS = ("format_version", "species", "r_max", "num_layers", "dtype", "metadata.json")
# written by every export, read where present (older exports of the same format lack it):
# `operators` names the custom operators the file calls, space-separated ("" for none)
OPTIONAL_METADATA_KEYS = ("operators",)
DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "OPTIONAL_METADATA_KEYS",
    "DTYPES",
    "is_torchscript_archive",
    "is_exported_file",
    "load_checkpoint_model",
    "load_exported",
]


def _zip_names(path: Path) -> list:
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


def is_exported_file(path: Union[str, Path]) -> bool:
    """True for a forcefield export (a TorchScript archive with extra/format_version)."""
    return any(n.endswith("/extra/format_version") for n in _zip_names(Path(path).expanduser()))


def load_checkpoint_model(path: Union[str, Path]) -> nn.Module:
    """The ForceField of a training checkpoint; InputError (one line, no torch warning) for a
    missing file, an exported model, a foreign TorchScript file or anything else."""
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


def load_exported(path: Union[str, Path], device: str = "cpu") -> Tuple[torch.jit.ScriptModule, dict]:
    """(TorchScript module, metadata dict) of an exported model; InputError for anything else."""
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
        raise InputError(
            f"{path}: unsupported format_version {meta.get('format_version')} (this forcefield reads {FORMAT_VERSION})"
        )
    match_threads(module, device)
    return module, meta


def _chunk_from_env(name: str, fallback: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else fallback


def match_threads(module: torch.jit.ScriptModule, device: str = "cpu") -> None:
    """Set an exported model's chunk sizes for this process and device: on a GPU edge and
    node chunks of GPU_EDGE_CHUNK / GPU_NODE_CHUNK (on CPU the export's own; the environment
    variables FORCEFIELD_EDGE_CHUNK / FORCEFIELD_NODE_CHUNK override both), and the
    message-product pieces: `message_chunk` edges on one CPU thread, whole edge chunks on
    several threads or a GPU (forcefield.model.forcefield.DEFAULT_MESSAGE_CHUNK; the pair
    style does the same)."""
    core = getattr(module, "model", None)
    on_cpu = torch.device(device).type == "cpu"
    if core is not None and hasattr(core, "edge_chunk") and hasattr(core, "node_chunk"):
        edge_chunk = _chunk_from_env("FORCEFIELD_EDGE_CHUNK", core.edge_chunk if on_cpu else GPU_EDGE_CHUNK)
        node_chunk = _chunk_from_env("FORCEFIELD_NODE_CHUNK", core.node_chunk if on_cpu else GPU_NODE_CHUNK)
        if edge_chunk != core.edge_chunk:
            core.edge_chunk = edge_chunk
        if node_chunk != core.node_chunk:
            core.node_chunk = node_chunk
    if core is None or not hasattr(core, "message_chunk"):
        return  # an export from before message pieces
    core.message_chunk = (
        DEFAULT_MESSAGE_CHUNK if message_pieces_pay(torch.get_num_threads(), on_cpu) else core.edge_chunk
    )
