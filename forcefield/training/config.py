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
    test: Optional[str] = None
    isolated_atoms: Optional[str] = Field(None, description="file with isolated-atom energies (E0)")
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
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
    enabled: bool = False
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
    enabled: bool = True
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
    max_epochs: int = Field(100, ge=1)
    max_time: Optional[float] = Field(None, gt=0, description="wall-time budget in seconds")
    batch_size: int = Field(5, ge=1)
    lr: float = Field(1e-2, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    amsgrad: bool = True
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    warmup_steps: int = Field(100, ge=0, description="optimizer steps of linear LR warm-up")
    patience_steps: int = Field(
        1000,
        ge=1,
        description="optimizer steps without validation improvement "
        "before the plateau LR drops (and, at the floor, before stopping)",
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    lr_min_ratio: float = Field(0.01, gt=0, le=1, description="LR floor as a fraction of the stage's LR")
    early_stop: bool = Field(True, description="stop when validation no longer improves at the LR floor")
    final_stage: FinalStageConfig = Field(default_factory=FinalStageConfig)
    ema_decay: Optional[float] = Field(0.99, ge=0, lt=1, description="null disables EMA")
    grad_clip: Optional[float] = Field(10.0, gt=0)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    energy_weight: float = Field(1.0, ge=0)
    forces_weight: float = Field(100.0, ge=0)
    stress_weight: float = Field(1.0, ge=0)
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


TEMPLATE = """\
# forcefield training config. Print with `forcefield template`; train with
# `forcefield train this.yaml --output run/`. Unknown keys are errors.
data:
  train: train.xyz            # extxyz or anything ase.io reads
  valid: 0.1                  # a file, or the fraction of train held out (seeded)
  test: null                  # optional file, evaluated at the end
  isolated_atoms: null        # optional file of single atoms (config_type=isolated_atom): E0
  energy_key: energy          # looked up in atoms.info / arrays or the attached calculator
  forces_key: forces
  stress_key: stress          # eV/Å^3, ASE sign convention
  num_workers: 0              # DataLoader processes reading batches (0: the main process)
  valid_max: null             # validate on at most this many structures (seeded choice)

model:
  species: [Cu, Au]           # element symbols, in model order
  r_max: 5.0                  # cutoff, Å
  num_layers: 2               # interaction blocks (LAMMPS ghost shell = num_layers * r_max)
  channels: 32                # multiplicity of each irrep
  lmax: 2                     # highest l of the hidden features and spherical harmonics
  correlation: 3              # body order of the node update (products of up to 3 messages); 1 = two-body
  num_basis: 8                # Bessel radial functions
  radial_hidden: 64           # width of the radial MLP
  dtype: float32              # float32 or float64 (whole model)
  switch:                     # smooth-min isolation switch: energy -> E0 for isolated atoms
    enabled: true
    tau: 0.1                  # softness of the minimum, Å
    r_on: null                # s = 1 below this soft-min distance (default 0.75 r_max)
    r_off: null               # s = 0 above it (default r_max)

normalization:                # numbers fitted to the training set unless given here
  e0: null                    # {symbol: eV} isolated-atom energies; null = from isolated atoms
                              # in data.isolated_atoms / data.train, else E0 = shift
  shift: null                 # {symbol: eV} per-species energy shift; null = least-squares fit
  scale: null                 # eV; null = force RMS of the training set
  avg_num_neighbors: null     # null = training-set average within r_max

dens:                         # denoising non-equilibrium structures (training only)
  enabled: false              # off by default: see bench/README.md (it did not beat plain
                              # training on ethanol at our budgets); true = denoising-only
  prob: 0.25                  # fraction of structures that become DeNS samples
  corrupt_ratio: 0.25         # fraction of their atoms displaced
  std: 0.05                   # Gaussian noise std, Å
  std_range: null             # [lo, hi]: per-structure std drawn log-uniformly instead
  coefficient: 5.0            # weight of the noise-prediction loss
  energy_loss: false          # true: energy loss of DeNS samples against the original energy
  uncorrupted_force_loss: false  # true: force loss on their undisplaced atoms (paper's regime)
  decay: true                 # coefficient decays linearly to 0 over training
  end: 1.0                    # fraction of the budget after which DeNS stops (decay reaches 0 there)

training:                     # defaults chosen on rMD17 ethanol, 50 structures: bench/README.md
  max_epochs: 100
  max_time: null              # wall-time budget of the training loop, seconds; both limits apply
  batch_size: 5               # global: under torchrun the N processes share each batch
  lr: 0.01
  optimizer: adam             # adam | adamw
  amsgrad: true
  weight_decay: 0.0
  scheduler: plateau          # plateau | cosine (sized from max_epochs / max_time) | none
  warmup_steps: 100           # linear LR warm-up, optimizer steps
  patience_steps: 1000        # steps without validation improvement before the LR drops;
                              # counted in steps, not epochs, so it suits 50 or 50 000 structures
  plateau_factor: 0.5
  lr_min_ratio: 0.01          # LR floor = lr * this
  early_stop: true            # stop once validation stops improving at the LR floor
  final_stage:                # last stage with other loss weights (MACE-style energy stage)
    enabled: true
    start: 0.8                # fraction of the budget, or earlier when stage 1 has converged
    energy_weight: 100.0      # null = keep training.energy_weight
    forces_weight: 10.0       # null = keep training.forces_weight
    stress_weight: null
    lr: null                  # LR at the start of the stage (null = 0.1 lr)
  ema_decay: 0.99             # exponential moving average of weights; null = off
  grad_clip: 10.0
  seed: 0
  device: auto                # cpu | cuda | auto
  energy_weight: 1.0          # loss weights (energies per atom, forces, stress; in units of the scale)
  forces_weight: 100.0
  stress_weight: 1.0
  num_threads: null
  valid_every: 1000           # also validate + checkpoint every N optimizer steps inside an epoch
"""
