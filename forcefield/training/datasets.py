"""Config `data` section -> train / valid / test frames, E0 and the statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from forcefield.data.checks import check_labels, check_species
from forcefield.data.frames import Frame, read_frames
from forcefield.data.graph import Graph, frame_to_graph
from forcefield.data.split import extract_e0, train_valid_split
from forcefield.data.statistics import avg_num_neighbors, avg_num_neighbors_of_graphs, fit_species_shift, force_rms
from forcefield.errors import InputError
from forcefield.model.normalization import Normalization
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


def _without_e0(path: str, cfg: Config):
    return extract_e0(_read(path, cfg), energy_key=cfg.data.energy_key)


def _stages(cfg: Config):
    """(config prefix, {energy, forces, stress} weights) of each training stage."""
    tr = cfg.training
    w = {"energy": tr.energy_weight, "forces": tr.forces_weight, "stress": tr.stress_weight}
    yield "training.", w
    fs = getattr(tr, "final_stage", None)
    if fs is not None and fs.enabled:
        final = {k: v if getattr(fs, f"{k}_weight") is None else getattr(fs, f"{k}_weight") for k, v in w.items()}
        yield "training.final_stage.", final


def check_loss_weights(cfg: Config, train: List[Frame]) -> None:
    """InputError unless, in every stage, some loss term with a non-zero weight has data to
    act on (with all of them zero the first backward pass fails with a RuntimeError)."""
    has_stress = any(f.stress is not None for f in train)
    for prefix, w in _stages(cfg):
        if w["energy"] > 0 or w["forces"] > 0 or (w["stress"] > 0 and has_stress):
            continue
        names = ", ".join(f"{prefix}{k}_weight" for k in ("energy", "forces", "stress"))
        if w["stress"] > 0:
            raise InputError(
                f"{names}: only stress_weight is > 0 but no training structure has a stress "
                f"(key '{cfg.data.stress_key}'): nothing to train on"
            )
        raise InputError(f"{names} are all 0: nothing to train on")


def _check_test_geometry(frames: List[Frame], cfg: Config) -> None:
    """Coincident atoms or a bad cell in data.test are reported now, not after training."""
    for f in frames:
        frame_to_graph(f, cfg.model.species, cfg.model.r_max)


def load_datasets(cfg: Config) -> Datasets:
    d, species, tr = cfg.data, cfg.model.species, cfg.training
    train, e0 = _without_e0(d.train, cfg)
    if d.isolated_atoms:
        _, e0_file = _without_e0(d.isolated_atoms, cfg)
        e0 = {**e0_file, **e0}
    if isinstance(d.valid, str):
        valid = _without_e0(d.valid, cfg)[0]
    else:
        train, valid = train_valid_split(train, d.valid, tr.seed)
    test = _without_e0(d.test, cfg)[0] if d.test else []
    need_forces = tr.forces_weight > 0 or cfg.dens.enabled
    for name, frames, path in (("train", train, d.train), ("valid", valid, d.valid), ("test", test, d.test)):
        if not frames and name == "valid" and not isinstance(path, str):
            raise InputError(
                f"data.valid fraction {path}: no valid structures ({d.train} has "
                f"{len(train)} structure(s) after removing isolated atoms)"
            )
        if not frames and name != "test":
            raise InputError(f"{path}: no {name} structures (after removing isolated atoms)")
        check_species(frames, species, path if isinstance(path, str) else d.train)
        check_labels(
            frames,
            need_energy=tr.energy_weight > 0,
            need_forces=need_forces,
            need_stress=False,
            path=path if isinstance(path, str) else d.train,
            energy_key=d.energy_key,
            forces_key=d.forces_key,
            stress_key=d.stress_key,
        )
    check_loss_weights(cfg, train)
    _check_test_geometry(test, cfg)
    for s in e0:
        if s not in species:
            e0 = {k: v for k, v in e0.items() if k in species}
            break
    return Datasets(train, valid, test, e0)


def check_species_covered(cfg: Config, train: List[Frame], e0: Mapping[str, float]) -> None:
    """InputError naming the first species of model.species whose energy shift would be made
    up: it occurs in no training structure with an energy (when some have one) and neither
    normalization.e0, data.isolated_atoms, isolated atoms in data.train nor
    normalization.shift gives it."""
    from ase.data import chemical_symbols

    m, d = cfg.model, cfg.data
    given = set(e0) | set(cfg.normalization.shift or {})
    labelled = [f for f in train if f.energy is not None]
    seen = {chemical_symbols[int(z)] for f in (labelled or train) for z in f.numbers}
    for s in m.species:
        if s in seen or s in given:
            continue
        what = "structure with an energy" if labelled else "structure"
        raise InputError(
            f"model.species: element '{s}' occurs in no training {what} of {d.train}, so its "
            "energy shift and E0 would be made up; give its isolated-atom energy in normalization.e0 "
            "or data.isolated_atoms, or remove it from model.species"
        )


def fit_normalization(cfg: Config, data: Datasets, train_graphs: Optional[Sequence[Graph]] = None) -> Normalization:
    """The model's normalisation: each value given in cfg.normalization is used as is, the
    others come from the training set (shift: least-squares fit; scale: force RMS; E0:
    isolated atoms in the data, else = shift; avg_num_neighbors: mean neighbour count).
    With `train_graphs` (the graphs of data.train at model.r_max, as the trainer builds them)
    the neighbours are counted on those instead of building every neighbour list again."""
    m, given = cfg.model, cfg.normalization.check_species(cfg.model.species)
    given_e0 = given.e0 or {}
    e0 = dict(data.e0)
    e0.update(given_e0)
    check_species_covered(cfg, data.train, e0)
    if given.shift is not None:
        shift = {s: float(given.shift.get(s, e0.get(s, 0.0))) for s in m.species}
    else:
        shift = fit_species_shift(data.train, m.species, e0=e0 or None)
    if given.scale is not None:
        scale = float(given.scale)
    else:
        scale = force_rms(data.train, shift)
    if given.avg_num_neighbors is not None:
        neighbours = float(given.avg_num_neighbors)
    elif train_graphs is None:
        neighbours = avg_num_neighbors(data.train, m.r_max)
    else:
        neighbours = avg_num_neighbors_of_graphs(train_graphs)

    def e0_source(s: str) -> str:
        return "given" if s in given_e0 else "isolated_atoms" if s in data.e0 else "shift"

    return Normalization(
        shift={s: float(shift[s]) for s in m.species},
        e0={s: float(e0.get(s, shift[s])) for s in m.species},
        scale=float(scale),
        avg_num_neighbors=float(neighbours),
        source={
            "shift": "given" if given.shift is not None else "fitted",
            "e0": {s: e0_source(s) for s in m.species},
            "scale": "given" if given.scale is not None else "fitted",
            "avg_num_neighbors": "given" if given.avg_num_neighbors is not None else "fitted",
        },
    )
