"""Config `data` section -> train / valid / test frames, E0 and the statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from forcefield.data.frames import Frame, check_labels, check_species, read_frames
from forcefield.data.split import extract_e0, train_valid_split
from forcefield.data.statistics import avg_num_neighbors, fit_species_shift, force_rms
from forcefield.training.config import Config


@dataclass
class Datasets:
    train: List[Frame]
    valid: List[Frame]
    test: List[Frame] = field(default_factory=list)
    e0: Dict[str, float] = field(default_factory=dict)


def _read(path: str, cfg: Config) -> List[Frame]:
    d = cfg.data
    return read_frames(path, energy_key=d.energy_key, forces_key=d.forces_key, stress_key=d.stress_key)


def load_datasets(cfg: Config) -> Datasets:
    d, species, tr = cfg.data, cfg.model.species, cfg.training
    train, e0 = extract_e0(_read(d.train, cfg))
    if d.isolated_atoms:
        _, e0_file = extract_e0(_read(d.isolated_atoms, cfg))
        e0 = {**e0_file, **e0}
    if isinstance(d.valid, str):
        valid = extract_e0(_read(d.valid, cfg))[0]
    else:
        train, valid = train_valid_split(train, d.valid, tr.seed)
    test = extract_e0(_read(d.test, cfg))[0] if d.test else []
    need_forces = tr.forces_weight > 0 or cfg.dens.enabled
    for name, frames, path in (("train", train, d.train), ("valid", valid, d.valid), ("test", test, d.test)):
        if not frames and name != "test":
            from forcefield.errors import InputError
            raise InputError(f"{path}: no {name} structures (after removing isolated atoms)")
        check_species(frames, species, path if isinstance(path, str) else d.train)
        check_labels(frames, need_energy=tr.energy_weight > 0, need_forces=need_forces, need_stress=False,
                     path=path if isinstance(path, str) else d.train, energy_key=d.energy_key,
                     forces_key=d.forces_key, stress_key=d.stress_key)
    for s in e0:
        if s not in species:
            e0 = {k: v for k, v in e0.items() if k in species}
            break
    return Datasets(train, valid, test, e0)


def statistics(cfg: Config, data: Datasets) -> Dict[str, object]:
    """shift (mu_Z), scale (force RMS), e0 and avg_num_neighbors for the model config."""
    m = cfg.model
    e0 = dict(data.e0)
    e0.update(m.e0 or {})
    shift = m.shift or fit_species_shift(data.train, m.species, e0=e0 or None)
    return {"shift": shift, "scale": force_rms(data.train, shift), "e0": e0 or None,
            "avg_num_neighbors": avg_num_neighbors(data.train, m.r_max)}


def model_config_with_statistics(cfg: Config, stats: Dict[str, object]):
    m = cfg.model.model_copy(deep=True)
    m.shift = {k: float(v) for k, v in stats["shift"].items()}
    m.scale = float(stats["scale"])
    m.e0 = stats["e0"]
    m.avg_num_neighbors = float(stats["avg_num_neighbors"])
    return m

