"""`forcefield preprocess`: read structure files once, check every structure as training does,
and write the HDF5 dataset of forcefield/data/store.py (layout there) with the statistics
of its train split."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from forcefield.data.cell import check_cell
from forcefield.data.checks import check_labels
from forcefield.data.frames import Frame, frame_location, is_isolated_atom
from forcefield.data.graph import check_distances, neighbour_list_with_cell_shifts
from forcefield.data.split import E0Collector, train_valid_split
from forcefield.data.store import BUFFER_FRAMES, ENERGY, FORCES, FORMAT, LABEL_BITS, STRESS, VERSION, _statistics
from forcefield.errors import InputError

# integer edge arrays compress well (local indices, small shifts); LZF is fast and built into h5py
EDGE_COMPRESSION = {"compression": "lzf", "shuffle": True}


def iter_frames(path: str, energy_key: str, forces_key: str, stress_key: str) -> Iterator[Frame]:
    """Validated frames of one ase-readable file, one at a time (`read_frames`' errors)."""
    import ase.io

    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: file not found")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, expected a structure file")
    images = ase.io.iread(path, index=":")
    i = 0
    while True:
        try:
            atoms = next(images)
        except StopIteration:
            break
        except InputError:
            raise
        except Exception as exc:  # ase raises many kinds; report its reason in one line
            reason = str(exc).strip() or "no details"
            raise InputError(f"{path}: cannot read structures ({type(exc).__name__}: {reason})") from None
        yield Frame.from_atoms(atoms, f"{path}:{i}", energy_key, forces_key, stress_key)
        i += 1
    if i == 0:
        raise InputError(f"{path}: contains no structures")


# ---------------------------------------------------------------------------- writing


class _Writer:
    """Appends structures to the datasets of an open h5py File, in buffered blocks."""

    def __init__(self, h5, neighbours: bool):
        self.h5, self.neighbours = h5, neighbours
        self.n_frames = self.n_atoms = self.n_edges = 0
        self.atom_offset, self.edge_offset = [0], [0]
        self.buf: Dict[str, list] = {}
        specs = {
            "frames/cell": ((0, 3, 3), "f8"),
            "frames/pbc": ((0, 3), "?"),
            "frames/energy": ((0,), "f8"),
            "frames/stress": ((0, 3, 3), "f8"),
            "frames/flags": ((0,), "u1"),
            "frames/file": ((0,), "i4"),
            "frames/index": ((0,), "i8"),
            "atoms/numbers": ((0,), "u1"),
            "atoms/positions": ((0, 3), "f8"),
            "atoms/forces": ((0, 3), "f8"),
        }
        if neighbours:
            specs.update({"edges/pairs": ((0, 2), "i4"), "edges/cell_shift": ((0, 3), "i4")})
        for name, (shape, dt) in specs.items():
            # edges compressed in small chunks: a random read decompresses little beyond its structure
            rows = 16384 if name.startswith("frames") else 8192 if name.startswith("edges") else 65536
            chunk = (rows,) + shape[1:]
            extra = EDGE_COMPRESSION if name.startswith("edges") else {}
            h5.create_dataset(name, shape=shape, maxshape=(None,) + shape[1:], dtype=dt, chunks=chunk, **extra)
            self.buf[name] = []

    def add(self, frame: Frame, file_id: int, index: int, pairs=None, cell_shift=None) -> None:
        n = len(frame.numbers)
        flags = 0
        b = self.buf
        b["frames/cell"].append(frame.cell)
        b["frames/pbc"].append(frame.pbc)
        b["frames/energy"].append(np.nan if frame.energy is None else frame.energy)
        b["frames/stress"].append(np.zeros((3, 3)) if frame.stress is None else frame.stress)
        b["frames/file"].append(file_id)
        b["frames/index"].append(index)
        b["atoms/numbers"].append(frame.numbers)
        b["atoms/positions"].append(frame.positions)
        b["atoms/forces"].append(np.zeros((n, 3)) if frame.forces is None else frame.forces)
        flags |= ENERGY if frame.energy is not None else 0
        flags |= FORCES if frame.forces is not None else 0
        flags |= STRESS if frame.stress is not None else 0
        b["frames/flags"].append(flags)
        self.n_atoms += n
        self.atom_offset.append(self.n_atoms)
        if self.neighbours:
            b["edges/pairs"].append(pairs)
            b["edges/cell_shift"].append(cell_shift)
        self.n_edges += len(pairs)  # counted also when not stored (avg_num_neighbors)
        self.edge_offset.append(self.n_edges)
        self.n_frames += 1
        if len(b["frames/flags"]) >= BUFFER_FRAMES:
            self.flush()

    def flush(self) -> None:
        for name, items in self.buf.items():
            if not items:
                continue
            block = np.concatenate(items) if name.startswith(("atoms", "edges")) else np.stack(items)
            ds = self.h5[name]
            old = ds.shape[0]
            ds.resize(old + len(block), axis=0)
            ds[old:] = block
            items.clear()

    def close(self) -> None:
        self.flush()
        self.h5.create_dataset("frames/atom_offset", data=np.asarray(self.atom_offset, dtype=np.int64))
        self.h5.create_dataset("frames/edge_offset", data=np.asarray(self.edge_offset, dtype=np.int64))


def _species_of(frames_species: Optional[Sequence[str]]) -> Optional[set]:
    from ase.data import atomic_numbers

    if frames_species is None:
        return None
    for s in frames_species:
        if s not in atomic_numbers:
            raise InputError(f"--species: unknown element symbol '{s}'")
    return {atomic_numbers[s] for s in frames_species}


def preprocess(
    inputs: Sequence[str],
    output: Union[str, os.PathLike],
    r_max: float = 5.0,
    species: Optional[Sequence[str]] = None,
    valid: Union[float, str, Sequence[str]] = 0.1,
    test: Optional[Sequence[str]] = None,
    isolated_atoms: Optional[str] = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    require: Sequence[str] = ("energy", "forces"),
    seed: int = 0,
    neighbours: bool = True,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Read `inputs` (train), the valid and test files once, check every structure as training
    does (coincident atoms, bad cells, missing `require`d labels, elements outside `species`,
    naming file and frame), and write the dataset to `output` atomically (a temporary file
    renamed at the end: an existing `output` is only replaced, with `overwrite`, once the new
    one is complete). `valid`: a fraction of the train structures (the seeded split of
    `data.valid`) or file(s). Returns a summary dict."""
    import h5py

    from forcefield.atomic_io import atomic_path

    output = Path(output).expanduser()
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists; pass --overwrite to replace it")
    if r_max <= 0:
        raise InputError(f"--r-max must be positive, got {r_max}")
    for name in require:
        if name not in LABEL_BITS:
            raise InputError(f"--require: unknown label '{name}' (choose from energy, forces, stress)")
    allowed = _species_of(species)
    valid_files = [valid] if isinstance(valid, str) else (None if isinstance(valid, (int, float)) else list(valid))
    roles = (
        [("train", p) for p in inputs] + [("valid", p) for p in valid_files or []] + [("test", p) for p in test or []]
    )
    if not inputs:
        raise InputError("preprocess: no input files")
    keys = {"energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key}
    e0 = E0Collector(energy_key)
    e0_file = E0Collector(energy_key)
    if isolated_atoms:
        for f in iter_frames(isolated_atoms, **keys):
            if is_isolated_atom(f):
                e0_file.add(f)
    first_seen: Dict[str, str] = {}
    split_ids: Dict[str, List[int]] = {"train": [], "valid": [], "test": []}
    sources = [os.fspath(p) for _, p in roles]
    with atomic_path(output) as tmp:
        with h5py.File(tmp, "w") as h5:
            writer = _Writer(h5, neighbours)
            for file_id, (role, path) in enumerate(roles):
                count = 0
                for k, frame in enumerate(iter_frames(path, **keys)):
                    if is_isolated_atom(frame):
                        (e0 if role == "train" else E0Collector(energy_key)).add(frame)
                        continue
                    pairs, cell_shift = _check(frame, allowed, r_max, require, keys, first_seen)
                    split_ids[role].append(writer.n_frames)
                    writer.add(frame, file_id, k, pairs, cell_shift)
                    count += 1
                    if progress is not None:
                        progress(writer.n_frames)
                if count == 0:
                    raise InputError(f"{path}: no {role} structures (after removing isolated atoms)")
            writer.close()
            if valid_files is None:
                train_idx, valid_idx = train_valid_split(split_ids["train"], float(valid), seed)
                if not valid_idx and float(valid) > 0:
                    raise InputError(
                        f"--valid {valid}: no valid structures ({len(split_ids['train'])} train structure(s))"
                    )
            else:
                train_idx, valid_idx = split_ids["train"], split_ids["valid"]
            for name, idx in (("train", train_idx), ("valid", valid_idx), ("test", split_ids["test"])):
                h5.create_dataset(f"split/{name}", data=np.asarray(idx, dtype=np.int64))
            e0_all = {**e0_file.values, **e0.values}
            stats = _statistics(h5, np.asarray(train_idx, dtype=np.int64))
            from ase.data import atomic_numbers

            seen = sorted(first_seen, key=lambda sym: atomic_numbers[sym])
            species_out = list(species) if species is not None else seen
            attrs = {
                "format": FORMAT,
                "version": VERSION,
                "species": species_out,
                "r_max": float(r_max),
                "neighbours": bool(neighbours),
                "keys": keys,
                "sources": sources,
                "first_seen": first_seen,
                "e0": e0_all,
                "statistics": stats.to_dict(),
                "seed": int(seed),
                "valid": valid if isinstance(valid, (int, float)) else valid_files,
            }
            for k, v in attrs.items():
                h5.attrs[k] = json.dumps(v)
            summary = {
                "output": str(output),
                "structures": writer.n_frames,
                "atoms": writer.n_atoms,
                "edges": writer.n_edges,
                "train": len(train_idx),
                "valid": len(valid_idx),
                "test": len(split_ids["test"]),
                "e0": e0_all,
            }
    return summary


def _check(frame: Frame, allowed, r_max: float, require, keys, first_seen) -> tuple:
    """The checks of `build_graph` and `check_labels`; (pairs, cell_shift) of its neighbour list."""
    from ase.data import chemical_symbols

    where = frame_location(frame)
    check_labels([frame], *(name in require for name in ("energy", "forces", "stress")), **keys)
    for z in np.unique(frame.numbers).tolist():
        sym = chemical_symbols[z]
        if allowed is not None and z not in allowed:
            a = int(np.argmax(frame.numbers == z))
            raise InputError(
                f"{where}: atom {a} is element '{sym}', which is not in the model's species "
                f"{[chemical_symbols[s] for s in sorted(allowed)]}"
            )
        if sym not in first_seen:
            first_seen[sym] = where
    check_cell(frame.cell, frame.pbc, where, r_max)
    edge_index, shifts, cell_shift = neighbour_list_with_cell_shifts(frame.positions, frame.cell, frame.pbc, r_max)
    check_distances(frame.positions, edge_index, shifts, where)
    return edge_index.T.astype(np.int32), cell_shift.astype(np.int32)
