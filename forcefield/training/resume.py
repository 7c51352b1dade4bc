"""--resume: which config changes a resumed training run accepts (the budget and the
machine) and the one-line refusal naming the others."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict

from forcefield.errors import InputError
from forcefield.training.config import move_legacy_normalization

# config keys that may differ on --resume (budget and machine); anything else is refused
RESUMABLE_KEYS = {
    "training.max_epochs",
    "training.max_time",
    "training.num_threads",
    "training.device",
    "training.early_stop",
    "data.test",
}


def _flatten(d: dict, prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("e0", "shift"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> Dict[str, tuple]:
    """{dotted key: (old, new)} for every key whose value differs."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_config(old: dict, new: dict, where: Path) -> Dict[str, tuple]:
    """The allowed changes; InputError naming the others. `old` may be a config saved
    before the `normalization` section existed (its e0 / shift under `model`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = move_legacy_normalization(old)
    changes = config_changes(old, new)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS}
    if refused:
        shown = ", ".join(f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in list(refused.items())[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        hint = ""
        if "dens.enabled" in refused:
            hint = (
                "; turning DeNS on or off adds or removes trainable modules (force encoder, noise "
                "head) that the checkpoint's optimizer state does not have"
            )
        raise InputError(
            f"{where}: --resume with a changed config: {shown}{more}; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change (start a new run with "
            f"--overwrite or another --output){hint}"
        )
    return changes
