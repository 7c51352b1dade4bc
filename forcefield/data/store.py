"""The preprocessed dataset: one HDF5 file (h5py) that training reads structure by structure.

Why HDF5: one self-describing, portable file with random access to slices of large arrays,
read through a maintained library (h5py) that needs no server and no write lock, and opened
read-only by every DataLoader worker at once; LMDB would need a serialisation of each record
of our own making and memory-mapped .npy folders would be many files with our own index.
Nothing in the file is ever unpickled: it holds numbers and JSON strings only.

Layout (all structures of all inputs concatenated; `F` structures, `A` atoms, `E` edges)::

    attrs   format, version, species, r_max, keys, sources, first_seen, e0, statistics, ...
    frames/atom_offset (F+1,) int64     frames/edge_offset (F+1,) int64 (edge counts: always)
    frames/cell (F,3,3) float64         frames/pbc (F,3) bool
    frames/energy (F,) float64          frames/stress (F,3,3) float64
    frames/flags (F,) uint8             bit 1 energy, 2 forces, 4 stress present
    frames/file (F,) int32              frames/index (F,) int64: source file and frame there
    atoms/numbers (A,) uint8            atoms/positions (A,3) float64   atoms/forces (A,3)
    edges/pairs (E,2) int32             edges/cell_shift (E,3) int32   (with neighbours only)
    split/train, split/valid, split/test (int64 structure indices)

Edges are local atom pairs (i, j) with their integer lattice shift S; the Cartesian shift is
S @ cell, computed exactly as `graph.neighbour_list` does, so a stored neighbour list gives
bitwise the graph the extxyz path builds. `statistics` holds the sums of
`DatasetStatistics` over the train split (normalisation without another pass over the data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Union

import numpy as np

from forcefield.data.frames import Frame, frame_location
from forcefield.data.graph import Graph
from forcefield.data.statistics import DatasetStatistics
from forcefield.errors import InputError

FORMAT = "forcefield-dataset"
VERSION = 1
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ENERGY, FORCES, STRESS = 1, 2, 4
LABEL_BITS = {"energy": ENERGY, "forces": FORCES, "stress": STRESS}
BUFFER_FRAMES = 2048  # structures per block of writes / statistics reads


def is_stored_dataset(path: Union[str, os.PathLike]) -> bool:
    """True for an HDF5 file (by its signature, not its name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def statistics_of(store: "StoredDataset", indices) -> DatasetStatistics:
    """`DatasetStatistics` of structures `indices` of an open dataset (in that order)."""
    return _statistics(store._file(), np.asarray(indices, dtype=np.int64))


def _statistics(h5, train_idx: np.ndarray) -> DatasetStatistics:
    """`DatasetStatistics` of the train split, in split order (the extxyz path's order)."""
    stats = DatasetStatistics()
    if len(train_idx) == 0:
        return stats
    ao = h5["frames/atom_offset"][:]
    eo = h5["frames/edge_offset"][:]
    for lo in range(0, len(train_idx), BUFFER_FRAMES):
        idx = train_idx[lo : lo + BUFFER_FRAMES]
        a0, a1 = int(ao[idx[0]]), int(ao[idx[-1] + 1])
        numbers = h5["atoms/numbers"][a0:a1]
        forces = h5["atoms/forces"][a0:a1]
        flags = h5["frames/flags"][int(idx[0]) : int(idx[-1]) + 1]
        energy = h5["frames/energy"][int(idx[0]) : int(idx[-1]) + 1]
        for i in idx:
            s, e = int(ao[i]) - a0, int(ao[i + 1]) - a0
            fl = int(flags[i - idx[0]])
            n_edges = int(eo[i + 1] - eo[i])
            stats.add(
                numbers[s:e].astype(np.int64),
                float(energy[i - idx[0]]) if fl & ENERGY else None,
                forces[s:e] if fl & FORCES else None,
                n_edges,
            )
    return stats


# ---------------------------------------------------------------------------- reading


class StoredDataset:
    """A preprocessed dataset, opened read-only. The HDF5 handle is opened on first use in each
    process (DataLoader workers open their own) and never shared across a fork."""

    def __init__(self, path: Union[str, os.PathLike]):
        import h5py

        self.path = str(Path(path).expanduser())
        if not Path(self.path).is_file():
            raise InputError(f"{self.path}: file not found")
        try:
            with h5py.File(self.path, "r") as h5:
                attrs = {k: json.loads(h5.attrs[k]) for k in h5.attrs}
                if attrs.get("format") != FORMAT:
                    raise InputError(f"{self.path}: an HDF5 file but not a forcefield dataset (no format '{FORMAT}')")
                if int(attrs.get("version", 0)) > VERSION:
                    raise InputError(
                        f"{self.path}: dataset version {attrs['version']} is newer than this forcefield reads "
                        f"({VERSION}); upgrade forcefield"
                    )
                self.atom_offset = h5["frames/atom_offset"][:]
                self.edge_offset = h5["frames/edge_offset"][:]
                self.neighbours = bool(attrs["neighbours"])
                self.splits = {k: h5[f"split/{k}"][:] for k in ("train", "valid", "test")}
                n = len(self.atom_offset) - 1
                sizes = {
                    "frames/flags": n,
                    "frames/cell": n,
                    "frames/energy": n,
                    "atoms/numbers": int(self.atom_offset[-1]),
                    "atoms/positions": int(self.atom_offset[-1]),
                }
                if self.neighbours:
                    sizes["edges/pairs"] = int(self.edge_offset[-1])
                for name, size in sizes.items():
                    if h5[name].shape[0] != size:
                        raise InputError(f"{self.path}: {name} holds {h5[name].shape[0]} rows, expected {size}")
        except InputError:
            raise
        except Exception as exc:  # truncated or corrupt: h5py raises OSError, KeyError, ValueError, ...
            msg = " ".join(str(exc).split())[:160]
            raise InputError(f"{self.path}: not a readable forcefield dataset ({type(exc).__name__}: {msg})") from None
        self.attrs = attrs
        self.species: List[str] = list(attrs["species"])
        self.r_max = float(attrs["r_max"])
        self.sources: List[str] = list(attrs["sources"])
        self.e0: Dict[str, float] = dict(attrs["e0"])
        self.statistics = DatasetStatistics.from_dict(attrs["statistics"])
        self._h5 = None
        self._pid = None
        self._ds: dict = {}

    def __len__(self) -> int:
        return len(self.atom_offset) - 1

    def _file(self):
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._ds = {}
        return self._h5

    def _dataset(self, name: str):
        """The dataset `name` of this process's handle (looked up once: lookups cost more than small reads)."""
        h5 = self._file()
        ds = self._ds.get(name)
        if ds is None:
            ds = self._ds[name] = h5[name]
        return ds

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._ds = None, {}

    def __getstate__(self):  # a copy sent to another process opens its own handle
        return {**self.__dict__, "_h5": None, "_pid": None, "_ds": {}}

    def where(self, i: int) -> str:
        """Structure `i` as error messages name it: "file: frame k"."""
        return frame_location(self._source(i))

    def _read(self, i: int) -> dict:
        try:
            ds = self._dataset
            a0, a1 = int(self.atom_offset[i]), int(self.atom_offset[i + 1])
            flags = int(ds("frames/flags")[i : i + 1][0])
            out = {
                "numbers": ds("atoms/numbers")[a0:a1].astype(np.int64),
                "positions": ds("atoms/positions")[a0:a1],
                "cell": ds("frames/cell")[i : i + 1][0],
                "pbc": ds("frames/pbc")[i : i + 1][0],
                "energy": float(ds("frames/energy")[i : i + 1][0]) if flags & ENERGY else None,
                "forces": ds("atoms/forces")[a0:a1] if flags & FORCES else None,
                "stress": ds("frames/stress")[i : i + 1][0] if flags & STRESS else None,
            }
            if self.neighbours:
                e0, e1 = int(self.edge_offset[i]), int(self.edge_offset[i + 1])
                out["pairs"] = ds("edges/pairs")[e0:e1]
                out["cell_shift"] = ds("edges/cell_shift")[e0:e1]
            return out
        except Exception as exc:  # noqa: BLE001 - a damaged file is the user's input
            msg = " ".join(str(exc).split())[:160]
            raise InputError(f"{self.path}: structure {i} cannot be read ({type(exc).__name__}: {msg})") from None

    def frame(self, i: int) -> Frame:
        r = self._read(i)
        return Frame(
            r["numbers"],
            r["positions"],
            r["cell"],
            r["pbc"],
            r["energy"],
            r["forces"],
            r["stress"],
            "",
            self._source(i),
        )

    def _source(self, i: int) -> str:
        h5 = self._file()
        return f"{self.sources[int(h5['frames/file'][i])]}:{int(h5['frames/index'][i])}"

    def graph(self, i: int, table: np.ndarray, r_max: float) -> Graph:
        """The labelled graph of structure `i`; `table` maps atomic number -> species index."""
        from forcefield.data.graph import neighbour_list

        r = self._read(i)
        species = table[r["numbers"]]
        cell, pbc = r["cell"], r["pbc"]
        if "pairs" in r:
            edge_index = r["pairs"].T.astype(np.int64)
            shifts = cartesian_shifts(r["cell_shift"], cell, pbc)
        else:
            edge_index, shifts = neighbour_list(r["positions"], cell, pbc, r_max)
        return Graph(species, r["positions"], cell, pbc, edge_index, shifts, r["energy"], r["forces"], r["stress"])

    def numbers_and_energies(self, indices: Iterable[int]) -> Iterator[tuple]:
        for i in indices:
            r = self._read(int(i))
            yield r["numbers"], r["energy"]

    def flags(self) -> np.ndarray:
        return self._file()["frames/flags"][:]


def cartesian_shifts(cell_shift: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """S @ cell as `graph.neighbour_list` computes it (zero cell without periodicity)."""
    cell = np.ascontiguousarray(cell if np.asarray(pbc).any() else np.zeros((3, 3)), dtype=np.float64)
    return cell_shift.astype(np.float64) @ cell
