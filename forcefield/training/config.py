"""The training config file (YAML): data, model, normalization, dens and training sections (docs/design.md,
section "Training recipe").

Every section forbids unknown keys, so a misspelt key is an error that names it.
`TEMPLATE` is the commented default config printed by `forcefield template`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forcefield.errors import InputError
from forcefield.model.config import ModelConfig, format_validation_error
from forcefield.model.normalization import LEGACY_MODEL_KEYS, NormalizationConfig, move_legacy_model_keys


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: str = Field(
        ..., description="training structures: extxyz (or anything ase.io reads) or a `forcefield preprocess` dataset"
    )
    valid: Union[float, str] = Field(
        0.1,
        description="a file or dataset, or the fraction of train held out "
        "(a preprocessed train dataset with a valid split uses that split unless this is set)",
    )
    test: Optional[str] = Field(None, description="optional file or dataset, evaluated at the end")
    isolated_atoms: Optional[str] = Field(None, description="file with isolated-atom energies (E0)")
    energy_key: str = Field("energy", description="looked up in atoms.info / arrays or the attached calculator")
    forces_key: str = Field("forces", description="forces key, eV/Å")
    stress_key: str = Field("stress", description="stress key, eV/Å^3, ASE sign convention")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes reading batches (0: the main process)")
    valid_max: Optional[int] = Field(
        None, ge=1, description="validate on this many structures (a fixed, seeded choice)"
    )


class DensConfig(BaseModel):
    """DeNS (docs/design.md, section "DeNS"). Off by default and, when enabled, the
    denoising-only regime; the paper's regime (energy and uncorrupted-force losses of DeNS
    samples against the original labels) is two switches away (energy_loss,
    uncorrupted_force_loss). The measurements behind these defaults (bench/accuracy.py)
    are in bench/README.md."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="off by default; true = denoising-only (bench/README.md)")
    prob: float = Field(0.25, ge=0, le=1, description="fraction of structures that become DeNS samples")
    corrupt_ratio: float = Field(0.25, gt=0, le=1, description="fraction of atoms displaced in a DeNS sample")
    std: float = Field(0.05, gt=0, description="noise std, Å")
    std_range: Optional[Tuple[float, float]] = Field(
        None, description="if set, per-structure std drawn log-uniformly in [lo, hi] Å"
    )
    coefficient: float = Field(5.0, ge=0, description="weight of the denoising loss")
    energy_loss: bool = Field(False, description="energy loss of DeNS samples against the original energy")
    uncorrupted_force_loss: bool = Field(False, description="force loss on the undisplaced atoms of DeNS samples")
    decay: bool = Field(True, description="linear decay of the coefficient to 0 over training")
    end: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of the budget after which DeNS stops "
        "(with decay, the coefficient reaches 0 there); later structures are not corrupted",
    )


class FinalStageConfig(BaseModel):
    """A last stage with other loss weights (MACE's 'SWA' stage raises the energy weight)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="use a final stage")
    start: float = Field(
        0.8,
        gt=0,
        le=1,
        description="fraction of the budget (max_epochs or max_time) "
        "after which it starts, if stage 1 has not converged before",
    )
    energy_weight: Optional[float] = Field(100.0, ge=0, description="null: keep training.energy_weight")
    forces_weight: Optional[float] = Field(10.0, ge=0, description="null: keep training.forces_weight")
    stress_weight: Optional[float] = Field(None, ge=0, description="null: keep training.stress_weight")
    lr: Optional[float] = Field(None, gt=0, description="LR at the start of the stage; null: 0.1 training.lr")


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_epochs: int = Field(100, ge=1, description="budget in epochs; with max_time, whichever ends first")
    max_time: Optional[float] = Field(None, gt=0, description="wall-time budget in seconds")
    batch_size: int = Field(5, ge=1, description="global: under torchrun the processes share each batch")
    lr: float = Field(1e-2, gt=0, description="learning rate after warm-up")
    optimizer: Literal["adam", "adamw"] = Field("adam", description="adam | adamw")
    amsgrad: bool = Field(True, description="AMSGrad variant of Adam")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (adamw: decoupled)")
    scheduler: Literal["plateau", "cosine", "none"] = Field(
        "plateau", description="plateau | cosine (sized from max_epochs / max_time) | none"
    )
    warmup_steps: int = Field(100, ge=0, description="optimizer steps of linear LR warm-up")
    patience_steps: int = Field(
        1000,
        ge=1,
        description="optimizer steps without validation improvement "
        "before the plateau LR drops (and, at the floor, before stopping)",
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="LR factor at each plateau")
    lr_min_ratio: float = Field(0.01, gt=0, le=1, description="LR floor as a fraction of the stage's LR")
    early_stop: bool = Field(True, description="stop when validation no longer improves at the LR floor")
    final_stage: FinalStageConfig = Field(default_factory=FinalStageConfig)
    ema_decay: Optional[float] = Field(0.99, ge=0, lt=1, description="null disables EMA")
    grad_clip: Optional[float] = Field(10.0, gt=0, description="gradient-norm clipping; null: off")
    seed: int = Field(0, description="seeds the split, shuffling, DeNS and the initial weights")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="cpu | cuda | auto")
    energy_weight: float = Field(1.0, ge=0, description="loss weight of the energy per atom (units of the scale)")
    forces_weight: float = Field(100.0, ge=0, description="loss weight of the forces")
    stress_weight: float = Field(1.0, ge=0, description="loss weight of the stress")
    num_threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    valid_every: Optional[int] = Field(
        1000, ge=1, description="also validate (and checkpoint) every this many optimizer steps inside an epoch"
    )


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: DataConfig
    model: ModelConfig
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    dens: DensConfig = Field(default_factory=DensConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if isinstance(self.data.valid, float) and not 0.0 < self.data.valid < 1.0:
            raise ValueError("data.valid: a fraction must lie strictly between 0 and 1")
        return self


def load_config(source: Union[str, Path, dict], base_dir: Optional[Path] = None) -> Config:
    """Parse a YAML file (or a dict). Relative data paths resolve against the file's folder."""
    where = "config"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        base_dir = base_dir or path.parent
        if not isinstance(raw, dict):
            raise InputError(f"{path}: expected a mapping with sections data, model, normalization, dens, training")
    raw = move_legacy_normalization(raw, where)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{where}: {format_validation_error(exc)}") from None
    if base_dir is not None:
        d = cfg.data
        for key in ("train", "valid", "test", "isolated_atoms"):
            value = getattr(d, key)
            if isinstance(value, str):
                value = os.path.expanduser(value)
                if not Path(value).is_absolute():
                    value = str((Path(base_dir) / value).resolve())
                setattr(d, key, value)
    return cfg


def move_legacy_normalization(raw: dict, where: str = "config") -> dict:
    """A config written before the `normalization` section existed kept e0 and shift in
    `model` (used as given) and scale and avg_num_neighbors there too (always replaced by
    the training-set values). Accept it: e0 and shift move to `normalization`, scale and
    avg_num_neighbors are dropped as before, with a warning saying so. A key in both places
    is an error. The same treatment as `ForceField.from_config`'s (one function:
    forcefield.model.normalization.move_legacy_model_keys)."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not any(k in model for k in LEGACY_MODEL_KEYS):
        return raw
    model, norm = move_legacy_model_keys(
        model, raw.get("normalization"), where, drop=("scale", "avg_num_neighbors"), stacklevel=3
    )
    return dict(raw, model=model, normalization=norm)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# example values of the required keys, and a note per section (the keys' comments are the
# fields' descriptions: the template cannot drift from the defaults)
TEMPLATE_EXAMPLES = {("data", "train"): "train.xyz", ("model", "species"): ["Cu", "Au"]}
SECTION_NOTES = {
    "normalization": "numbers fitted to the training set unless given here",
    "dens": "denoising non-equilibrium structures (training only); off by default (bench/README.md)",
    "training": "defaults chosen on rMD17 ethanol, 50 structures (bench/README.md)",
}
COMMENT_COLUMN = 30


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _template_lines(model: type, path: tuple, indent: str) -> list:
    lines = []
    for name, field in model.model_fields.items():
        key = path + (name,)
        sub = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
        note = field.description or (
            SECTION_NOTES.get(name) if not path else (sub.__doc__ or "").strip().split("\n")[0] if sub else None
        )
        if sub is not None:
            head = f"{indent}{name}:"
            lines.append(f"{head:<{COMMENT_COLUMN - 1}} # {note}" if note else head)
            lines += _template_lines(sub, key, indent + "  ")
            continue
        value = TEMPLATE_EXAMPLES.get(key, field.default)
        head = f"{indent}{name}: {_yaml_value(value)}"
        lines.append(f"{head:<{COMMENT_COLUMN - 1}} # {note}" if note else head)
    return lines


def render_template() -> str:
    """The commented default config (`forcefield template`), made from the pydantic fields:
    every key with its default and description."""
    lines = [
        "# forcefield training config. Print with `forcefield template`; train with",
        "# `forcefield train this.yaml --output run/`. Unknown keys are errors.",
    ]
    for name, field in Config.model_fields.items():
        lines.append("")
        note = SECTION_NOTES.get(name)
        lines.append(f"{name + ':':<{COMMENT_COLUMN - 1}} # {note}" if note else f"{name}:")
        lines += _template_lines(field.annotation, (name,), "  ")
    return "\n".join(lines) + "\n"


TEMPLATE = render_template()
