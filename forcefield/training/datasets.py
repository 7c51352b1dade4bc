"""Config `data` section -> train / valid / test data, E0 and the statistics.

Two kinds of input: a plain structure file (extxyz or anything ase reads), read whole into
memory (`load_datasets`, then graphs), and a preprocessed HDF5 dataset
(forcefield/data/store.py), read one structure at a time (`StoredGraphs`). Both become
`GraphSource`s of a `TrainingData`, with the statistics of the normalisation gathered as
`DatasetStatistics` in the same order, so both give the same numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from forcefield.data.checks import check_labels, check_species
from forcefield.data.frames import Frame, is_isolated_atom, read_frames
from forcefield.data.graph import Graph, frame_to_graph
from forcefield.data.split import extract_e0, train_valid_split
from forcefield.data.statistics import DatasetStatistics, avg_num_neighbors, energy_residual_rms, frame_statistics
from forcefield.data.store import ENERGY, FORCES, STRESS, StoredDataset, is_stored_dataset, statistics_of
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


def check_loss_weights(cfg: Config, train: Union[List[Frame], bool]) -> None:
    """InputError unless, in every stage, some loss term with a non-zero weight has data to
    act on (with all of them zero the first backward pass fails with a RuntimeError).
    `train`: the training frames, or whether any of them has a stress."""
    has_stress = train if isinstance(train, bool) else any(f.stress is not None for f in train)
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


def check_species_covered(cfg: Config, stats: DatasetStatistics, e0: Mapping[str, float]) -> None:
    """InputError naming the first species of model.species whose energy shift would be made
    up: it occurs in no training structure with an energy (when some have one) and neither
    normalization.e0, data.isolated_atoms, isolated atoms in data.train nor
    normalization.shift gives it."""
    m, d = cfg.model, cfg.data
    given = set(e0) | set(cfg.normalization.shift or {})
    labelled = stats.n_energy > 0
    seen = set(stats.elements(labelled_only=labelled))
    for s in m.species:
        if s in seen or s in given:
            continue
        what = "structure with an energy" if labelled else "structure"
        raise InputError(
            f"model.species: element '{s}' occurs in no training {what} of {d.train}, so its "
            "energy shift and E0 would be made up; give its isolated-atom energy in normalization.e0 "
            "or data.isolated_atoms, or remove it from model.species"
        )


def fit_normalization(
    cfg: Config, data: Union[Datasets, "TrainingData"], train_graphs: Optional[Sequence[Graph]] = None
) -> Normalization:
    """The model's normalisation: each value given in cfg.normalization is used as is, the
    others come from the training set (shift: least-squares fit; scale: force RMS; E0:
    isolated atoms in the data, else = shift; avg_num_neighbors: mean neighbour count).
    `data`: frames (`Datasets`; with `train_graphs`, the graphs of data.train at model.r_max,
    the neighbours are counted on those) or a `TrainingData` with its statistics."""
    m, given = cfg.model, cfg.normalization.check_species(cfg.model.species)
    if isinstance(data, TrainingData):
        stats, pairs = data.statistics, data.energy_pairs
        neighbours_of = stats.avg_num_neighbors
    else:
        edges = None if train_graphs is None else [int(g.edge_index.shape[1]) for g in train_graphs]
        stats = frame_statistics(data.train, edges)
        frames = data.train

        def pairs():
            return ((f.numbers, f.energy) for f in frames if not is_isolated_atom(f))

        def neighbours_of():
            return stats.avg_num_neighbors() if edges is not None else avg_num_neighbors(frames, m.r_max)

    given_e0 = given.e0 or {}
    e0 = dict(data.e0)
    e0.update(given_e0)
    check_species_covered(cfg, stats, e0)
    if given.shift is not None:
        shift = {s: float(given.shift.get(s, e0.get(s, 0.0))) for s in m.species}
    else:
        shift = stats.shift(m.species, e0=e0 or None)
    if given.scale is not None:
        scale = float(given.scale)
    else:
        scale = stats.force_rms()
        if scale is None:
            scale = energy_residual_rms(pairs(), shift)
    if given.avg_num_neighbors is not None:
        neighbours = float(given.avg_num_neighbors)
    else:
        neighbours = neighbours_of()

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


# ------------------------------------------------------------------ graph sources


class GraphSource:
    """Labelled graphs by index: what the training loop and its DataLoader read."""

    name: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def graph(self, i: int) -> Graph:
        raise NotImplementedError

    def subset(self, indices: Sequence[int]) -> "GraphSource":
        raise NotImplementedError

    def close(self) -> None:
        """Drop open file handles (before DataLoader workers are forked)."""


class GraphList(GraphSource):
    """Graphs held in memory (the plain-file path)."""

    def __init__(self, graphs: Sequence[Graph], name: str = ""):
        self.graphs, self.name = list(graphs), name

    def __len__(self) -> int:
        return len(self.graphs)

    def graph(self, i: int) -> Graph:
        return self.graphs[i]

    def subset(self, indices: Sequence[int]) -> "GraphList":
        return GraphList([self.graphs[int(i)] for i in indices], self.name)


class StoredGraphs(GraphSource):
    """Structures `indices` of a preprocessed dataset, read on demand."""

    def __init__(self, store: StoredDataset, indices, species: Sequence[str], r_max: float):
        from ase.data import atomic_numbers

        self.store, self.indices, self.r_max = store, np.asarray(indices, dtype=np.int64), float(r_max)
        self.name = store.path
        self.table = np.full(119, -1, dtype=np.int64)
        for k, s in enumerate(species):
            self.table[atomic_numbers[s]] = k

    def __len__(self) -> int:
        return len(self.indices)

    def graph(self, i: int) -> Graph:
        return self.store.graph(int(self.indices[i]), self.table, self.r_max)

    def subset(self, indices: Sequence[int]) -> "StoredGraphs":
        out = StoredGraphs.__new__(StoredGraphs)
        out.__dict__.update(self.__dict__)
        out.indices = self.indices[np.asarray(indices, dtype=np.int64)]
        return out

    def close(self) -> None:
        self.store.close()


@dataclass
class TrainingData:
    train: GraphSource
    valid: GraphSource
    test: Optional[str]  # a file or dataset evaluated at the end
    e0: Dict[str, float]
    statistics: DatasetStatistics
    energy_pairs: Callable[[], Iterable]  # (numbers, energy) of the train structures (fallback scale)


def load_training_data(cfg: Config) -> TrainingData:
    """Train / valid sources, E0 and the statistics of `cfg.data`, checked as training needs."""
    if is_stored_dataset(cfg.data.train):
        return _stored_training_data(cfg)
    data = load_datasets(cfg)
    species, r_max = list(cfg.model.species), float(cfg.model.r_max)
    train = [frame_to_graph(f, species, r_max) for f in data.train]
    valid = [frame_to_graph(f, species, r_max) for f in data.valid]
    stats = frame_statistics(data.train, [int(g.edge_index.shape[1]) for g in train])
    # the fallback scale reads (numbers, energy) from the graphs: the frames are not kept
    from ase.data import atomic_numbers

    z_of = np.array([atomic_numbers[s] for s in species], dtype=np.int64)
    return TrainingData(
        GraphList(train, cfg.data.train),
        GraphList(valid, str(cfg.data.valid)),
        cfg.data.test,
        data.e0,
        stats,
        lambda: ((z_of[g.species], g.energy) for g in train),
    )


def _open_store(path: str, cfg: Config) -> StoredDataset:
    store = StoredDataset(path)
    m = cfg.model
    if abs(store.r_max - float(m.r_max)) > 1e-12 and store.attrs.get("neighbours"):
        raise InputError(
            f"{path}: preprocessed with r_max {store.r_max:g} Å but model.r_max is {float(m.r_max):g}; "
            f"run `forcefield preprocess` again with --r-max {float(m.r_max):g}"
        )
    for sym, where in store.attrs.get("first_seen", {}).items():
        if sym not in m.species:
            raise InputError(f"{path}: {where} contains element '{sym}', which is not in model.species {m.species}")
    keys = store.attrs["keys"]
    d = cfg.data
    for key in ("energy_key", "forces_key", "stress_key"):
        if keys[key] != getattr(d, key):
            raise InputError(
                f"data.{key}: '{getattr(d, key)}' but {path} was preprocessed with '{keys[key]}' "
                f"(run `forcefield preprocess` again with --{key.replace('_', '-')} {getattr(d, key)})"
            )
    return store


def _check_stored_labels(cfg: Config, store: StoredDataset, indices: np.ndarray) -> bool:
    """check_labels on a split of a stored dataset; whether any structure has a stress."""
    tr, d = cfg.training, cfg.data
    flags = store.flags()[indices]
    for need, bit, label, key in (
        (tr.energy_weight > 0, ENERGY, "energy", d.energy_key),
        (tr.forces_weight > 0 or cfg.dens.enabled, FORCES, "forces", d.forces_key),
    ):
        missing = np.nonzero((flags & bit) == 0)[0]
        if need and missing.size:
            raise InputError(
                f"{store.where(int(indices[missing[0]]))} has no {label} (key '{key}') but {label}_weight > 0"
            )
    return bool(np.any(flags & STRESS))


def _stored_training_data(cfg: Config) -> TrainingData:
    d, tr, m = cfg.data, cfg.training, cfg.model
    store = _open_store(d.train, cfg)
    train_idx = store.splits["train"]
    stats = store.statistics
    valid_explicit = "valid" in d.model_fields_set
    if isinstance(d.valid, str):
        if is_stored_dataset(d.valid):
            vstore = store if d.valid == d.train else _open_store(d.valid, cfg)
            if not len(vstore.splits["valid"]):
                raise InputError(f"data.valid {d.valid}: the dataset holds no valid split")
            valid: GraphSource = StoredGraphs(vstore, vstore.splits["valid"], m.species, m.r_max)
            _check_stored_labels(cfg, vstore, vstore.splits["valid"])
        else:
            frames = _without_e0(d.valid, cfg)[0]
            check_species(frames, m.species, d.valid)
            valid = GraphList([frame_to_graph(f, m.species, m.r_max) for f in frames], d.valid)
    elif len(store.splits["valid"]) and not valid_explicit:
        valid = StoredGraphs(store, store.splits["valid"], m.species, m.r_max)
    elif len(store.splits["valid"]):
        raise InputError(
            f"data.valid {d.valid}: {d.train} already holds a valid split (made by `forcefield preprocess`); "
            "leave data.valid out to use it, or give a file"
        )
    else:
        train_idx, valid_idx = train_valid_split(list(train_idx), d.valid, tr.seed)
        if not valid_idx:
            raise InputError(f"data.valid fraction {d.valid}: no valid structures ({d.train})")
        train_idx = np.asarray(train_idx, dtype=np.int64)
        valid = StoredGraphs(store, valid_idx, m.species, m.r_max)
        stats = statistics_of(store, train_idx)
    if not len(train_idx):
        raise InputError(f"{d.train}: no train structures")
    has_stress = _check_stored_labels(cfg, store, train_idx)
    check_loss_weights(cfg, has_stress)
    e0 = dict(store.e0)
    if d.isolated_atoms:
        _, e0_file = _without_e0(d.isolated_atoms, cfg)
        e0 = {**e0_file, **e0}
    e0 = {k: v for k, v in e0.items() if k in m.species}
    return TrainingData(
        StoredGraphs(store, train_idx, m.species, m.r_max),
        valid,
        d.test,
        e0,
        stats,
        lambda: store.numbers_and_energies(train_idx),
    )
