"""The fitted normalisation of a model, kept apart from its architecture.

    E_i = s_i (scale * e_i + shift_Z) + (1 - s_i) e0_Z,   messages / avg_num_neighbors

`ModelConfig` says what the network is (species, cutoff, widths, ...); `Normalization`
holds the numbers a training set gives it: the per-species energy shift, the energy
scale, the isolated-atom energies E0 and the average number of neighbours, with where
each came from (`source`). Checkpoints and exported models store it as its own record
beside the architecture, so a user can read, e.g., which E0 a potential falls back to and
whether it was given or guessed.

Sources: "given" (the `normalization` section of the training config), "fitted" (from
the training set), "isolated_atoms" (E0 read from isolated-atom structures), "shift"
(no E0 known: E0 = shift), "default" (an untrained model), "unrecorded" (a checkpoint
written before this record existed).
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field

from forcefield.errors import InputError

__all__ = [
    "NormalizationConfig",
    "Normalization",
    "default_normalization",
    "split_legacy_model_config",
    "move_legacy_model_keys",
    "LEGACY_MODEL_KEYS",
]

# keys of the `model` section (and of checkpoints' model_config) before version 3
LEGACY_MODEL_KEYS = ("e0", "shift", "scale", "avg_num_neighbors")


class NormalizationConfig(BaseModel):
    """The `normalization` section of the training config: values given by the user.
    Every key left null is fitted from the training data."""

    model_config = ConfigDict(extra="forbid")
    e0: Optional[Dict[str, float]] = Field(
        None, description="isolated-atom energies, eV; null: from isolated atoms in the data, else = shift"
    )
    shift: Optional[Dict[str, float]] = Field(
        None, description="per-species energy shift mu_Z, eV; null: least-squares fit on the training set"
    )
    scale: Optional[float] = Field(
        None, gt=0, description="energy scale sigma, eV; null: force RMS of the training set"
    )
    avg_num_neighbors: Optional[float] = Field(
        None, gt=0, description="message normalisation; null: training-set average within r_max"
    )

    def check_species(self, species: Sequence[str]) -> "NormalizationConfig":
        """InputError naming a given e0 or shift element not in `species`."""
        for key in ("e0", "shift"):
            for s in getattr(self, key) or {}:
                if s not in species:
                    raise InputError(f"normalization.{key}: element '{s}' is not in model.species {list(species)}")
        return self


class Normalization(BaseModel):
    """The normalisation a model carries (complete: every species has a shift and an E0)."""

    model_config = ConfigDict(extra="forbid")
    shift: Dict[str, float]
    e0: Dict[str, float]
    scale: float = Field(1.0, gt=0)
    avg_num_neighbors: float = Field(10.0, gt=0)
    # "shift", "scale", "avg_num_neighbors": one source each; "e0": {element: source}
    source: Dict[str, object] = Field(default_factory=dict)

    def check_species(self, species: Sequence[str]) -> "Normalization":
        """InputError naming the key and element that does not match `species`."""
        for key in ("shift", "e0"):
            table = getattr(self, key)
            for s in table:
                if s not in species:
                    raise InputError(f"normalization.{key}: element '{s}' is not in model.species {list(species)}")
            for s in species:
                if s not in table:
                    raise InputError(f"normalization.{key}: no value for element '{s}' of model.species")
        return self


def default_normalization(species: Sequence[str], given: Optional[dict] = None) -> Normalization:
    """An untrained model's normalisation: shift 0 (or E0 where given), E0 = shift, scale 1,
    avg_num_neighbors 10; any of these in `given` (NormalizationConfig keys) is used instead."""
    g = NormalizationConfig.model_validate(given or {}).check_species(species)
    e0_given, shift_given = g.e0 or {}, g.shift or {}
    shift = {s: float(shift_given.get(s, e0_given.get(s, 0.0))) for s in species}
    e0 = {s: float(e0_given.get(s, shift[s])) for s in species}
    src = lambda known: "given" if known else "default"  # noqa: E731
    return Normalization(
        shift=shift,
        e0=e0,
        scale=g.scale if g.scale is not None else 1.0,
        avg_num_neighbors=g.avg_num_neighbors if g.avg_num_neighbors is not None else 10.0,
        source={
            "shift": src(bool(shift_given)),
            "e0": {s: src(s in e0_given) for s in species},
            "scale": src(g.scale is not None),
            "avg_num_neighbors": src(g.avg_num_neighbors is not None),
        },
    )


def split_legacy_model_config(model: dict) -> Tuple[dict, dict]:
    """(architecture, normalisation keys) of a `model` dict that may still carry the keys
    version-2 checkpoints and older configs kept there (e0, shift, scale, avg_num_neighbors)."""
    arch = {k: v for k, v in model.items() if k not in LEGACY_MODEL_KEYS}
    norm = {k: model[k] for k in LEGACY_MODEL_KEYS if model.get(k) is not None}
    return arch, norm


def move_legacy_model_keys(
    model: dict, normalization, where: str, drop: Sequence[str] = (), stacklevel: int = 2
) -> Tuple[dict, object]:
    """(model, normalization) with the keys `model` held before the normalisation became its
    own record (LEGACY_MODEL_KEYS) moved out of it: the one treatment of both entry points,
    the training config file (`model:` section) and `ForceField.from_config`.

    Each such key moves into `normalization` (a dict of NormalizationConfig keys, or None)
    and a FutureWarning says where it lives now; keys in `drop` are discarded instead (the
    training config's scale and avg_num_neighbors, which training has always replaced by
    the training-set values). A key given in both places is an InputError. Moving rather
    than refusing keeps configs and scripts written for the old layout working, with the
    same numbers. Beside a `normalization` that is not a dict (a complete Normalization)
    they are an InputError too.
    """
    if not isinstance(model, dict) or not any(k in model for k in LEGACY_MODEL_KEYS):
        return model, normalization
    model = dict(model)
    norm = dict(normalization) if isinstance(normalization, dict) else ({} if normalization is None else normalization)
    moved, dropped = [], []
    for key in LEGACY_MODEL_KEYS:
        if key not in model:
            continue
        value = model.pop(key)
        if value is None:
            continue
        if key in drop:
            dropped.append(key)
            continue
        if not isinstance(norm, dict):
            raise InputError(f"{where}: model.{key} beside a complete normalization; give {key} there")
        if norm.get(key) is not None:
            raise InputError(f"{where}: model.{key} and normalization.{key} are both given; keep normalization.{key}")
        norm[key] = value
        moved.append(key)
    message = (
        f"{where}: model.e0 / model.shift / model.scale / model.avg_num_neighbors now live in the "
        f"normalization (the 'normalization' section of a config, the normalization= argument of "
        f"ForceField.from_config): {', '.join(f'model.{k}' for k in moved) or 'nothing'} moved there"
    )
    if dropped:
        message += (
            f"; {', '.join(f'model.{k}' for k in dropped)} ignored (training always replaced them by the "
            "training-set values)"
        )
    warnings.warn(message, FutureWarning, stacklevel=stacklevel)
    return model, norm
