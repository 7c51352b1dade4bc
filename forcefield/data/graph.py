"""Atoms -> graph (full neighbour list with periodic shifts) and batching.

Edges are directed pairs (i, j), i the centre, with r_ij = x_j - x_i + S_ij @ cell and
|r_ij| < r_max; both directions are present. vesin computes the list (cells smaller than
twice the cutoff and triclinic cells give every periodic image); a structure without a
cell or periodicity is treated as a molecule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from vesin import NeighborList

from forcefield.data.cell import MAX_PERIODIC_IMAGES, check_cell  # noqa: F401 - the one cell check
from forcefield.data.frames import Frame, frame_location
from forcefield.errors import InputError


@dataclass
class Graph:
    """One structure as arrays (numpy, float64); labels optional."""

    species: np.ndarray  # (N,) index into the model's species
    positions: np.ndarray  # (N,3)
    cell: np.ndarray  # (3,3)
    pbc: np.ndarray  # (3,) bool
    edge_index: np.ndarray  # (2,E) int64
    shifts: np.ndarray  # (E,3) Cartesian shift vectors
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None  # (3,3) eV/Å^3, ASE convention

    @property
    def num_atoms(self) -> int:
        return int(self.species.shape[0])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell))) if self.pbc.all() else 0.0


MIN_DISTANCE = 0.1  # Å: two atoms closer than this are the same atom twice


def check_distances(
    positions: np.ndarray,
    edge_index: np.ndarray,
    shifts: np.ndarray,
    where: str = "structure",
    min_distance: float = MIN_DISTANCE,
) -> None:
    """InputError naming the two atoms of the first edge shorter than `min_distance` Å."""
    if edge_index.shape[1] == 0:
        return
    vec = positions[edge_index[1]] - positions[edge_index[0]] + shifts
    length = np.sqrt(np.einsum("ij,ij->i", vec, vec))
    close = np.nonzero(length < min_distance)[0]
    if close.size == 0:
        return
    e = close[np.argmin(length[close])]
    i, j = sorted((int(edge_index[0, e]), int(edge_index[1, e])))
    if i == j:
        raise InputError(
            f"{where}: atom {i} is {length[e]:.3g} Å from its own periodic image (closer than {min_distance} Å)"
        )
    raise InputError(
        f"{where}: atoms {i} and {j} are {length[e]:.3g} Å apart (closer than {min_distance} Å: the same atom twice?)"
    )


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float):
    """(edge_index (2,E), shifts (E,3) Cartesian) for all pairs closer than r_max."""
    edge_index, shifts, _ = neighbour_list_with_cell_shifts(positions, cell, pbc, r_max)
    return edge_index, shifts


def neighbour_list_with_cell_shifts(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float):
    """`neighbour_list` and the integer lattice shifts S (E,3) of its edges (shifts = S @ cell)."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if len(positions) == 0:
        return np.zeros((2, 0), np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    if not pbc.any():
        cell = np.zeros((3, 3))
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    nl = NeighborList(cutoff=float(r_max), full_list=True)
    i, j, s, d = nl.compute(
        points=positions, box=cell, periodic=pbc.tolist() if pbc.any() else False, quantities="ijSd"
    )
    keep = d < r_max
    i, j, s = i[keep], j[keep], s[keep]
    edge_index = np.stack([i, j]).astype(np.int64)
    shifts = s.astype(np.float64) @ cell
    return edge_index, shifts, s


def recentred_positions(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """float64 positions with the same edge vectors but small coordinates: wrapped into the
    cell along periodic directions, then the bounding box centred on the origin.

    Edge vectors are differences of positions (plus lattice shifts), so this changes
    nothing but rounding; it keeps a float32 model as precise 1e5 Å from the origin (or
    with atoms that drifted many cells away) as at the origin. Like the LAMMPS pair
    style, which subtracts a reference position. Needs finite positions and a cell that
    passed `check_cell`.
    """
    pos = np.array(positions, dtype=np.float64).reshape(-1, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if len(pos) == 0:
        return pos
    if pbc.any():
        vectors = np.asarray(cell, dtype=np.float64).reshape(3, 3)[pbc]
        frac = pos @ np.linalg.pinv(vectors)  # coordinates along the periodic vectors
        pos = pos - np.floor(frac) @ vectors
    return pos - 0.5 * (pos.min(axis=0) + pos.max(axis=0))


def species_indices(numbers: Sequence[int], species: Sequence[str], where: str = "structure") -> np.ndarray:
    table = {chemical_symbols[z] if isinstance(z, (int, np.integer)) else z: k for k, z in enumerate(species)}
    out = np.empty(len(numbers), dtype=np.int64)
    for a, z in enumerate(numbers):
        sym = chemical_symbols[int(z)]
        if sym not in table:
            raise InputError(
                f"{where}: atom {a} is element '{sym}', which is not in the model's species {list(species)}"
            )
        out[a] = table[sym]
    return out


def atoms_to_graph(
    atoms, species: Sequence[str], r_max: float, where: str = "structure", min_distance: Optional[float] = MIN_DISTANCE
) -> Graph:
    """Graph of an ase.Atoms (no labels)."""
    return build_graph(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, species, r_max, where, min_distance=min_distance
    )


def build_graph(
    numbers,
    positions,
    cell,
    pbc,
    species: Sequence[str],
    r_max: float,
    where: str = "structure",
    energy=None,
    forces=None,
    stress=None,
    min_distance: Optional[float] = MIN_DISTANCE,
) -> Graph:
    """Validated graph: InputError (naming `where` and the atom) for a non-finite position,
    a degenerate cell (`check_cell`), an element not in `species` or two atoms closer than
    `min_distance` (`check_distances`; None skips that check: the model itself stays finite
    for coincident atoms, which tests of its numerics need)."""
    positions = np.asarray(positions, dtype=np.float64)
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise InputError(f"{where}: atom {int(np.argmax(bad))} has a non-finite position")
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    check_cell(cell, pbc, where, r_max)
    idx = species_indices(numbers, species, where)
    edge_index, shifts = neighbour_list(positions, cell, pbc, r_max)
    if min_distance is not None:
        check_distances(positions, edge_index, shifts, where, min_distance)
    return Graph(
        idx,
        positions,
        cell,
        pbc,
        edge_index,
        shifts,
        energy,
        None if forces is None else np.asarray(forces, dtype=np.float64),
        None if stress is None else np.asarray(stress, dtype=np.float64).reshape(3, 3),
    )


def frame_to_graph(frame: Frame, species: Sequence[str], r_max: float) -> Graph:
    """Validated, labelled graph of a frame (errors name the frame's file and index)."""
    return build_graph(
        frame.numbers,
        frame.positions,
        frame.cell,
        frame.pbc,
        species,
        r_max,
        where=frame_location(frame),
        energy=frame.energy,
        forces=frame.forces,
        stress=frame.stress,
    )


def collate(
    graphs: List[Graph], dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> Dict[str, torch.Tensor]:
    """Concatenate graphs into one batch (edge indices offset, `batch` maps atom -> graph)."""
    offsets = np.cumsum([0] + [g.num_atoms for g in graphs])
    n_graphs = len(graphs)
    if torch.device(device).type == "cuda":
        # through pinned host memory, so the copies to the GPU are asynchronous
        def t(a, dt=dtype):
            return torch.as_tensor(np.asarray(a), dtype=dt).pin_memory().to(device, non_blocking=True)
    else:
        t = lambda a, dt=dtype: torch.as_tensor(np.asarray(a), dtype=dt, device=device)  # noqa: E731
    out: Dict[str, torch.Tensor] = {
        "pos": t(np.concatenate([g.positions for g in graphs])),
        "species": t(np.concatenate([g.species for g in graphs]), torch.long),
        "edge_index": t(np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1), torch.long),
        "shifts": t(np.concatenate([g.shifts for g in graphs])),
        "batch": t(np.repeat(np.arange(n_graphs), [g.num_atoms for g in graphs]), torch.long),
        "num_atoms": t([g.num_atoms for g in graphs], torch.long),
        "volume": t([g.volume for g in graphs]),
    }
    if all(g.energy is not None for g in graphs):
        out["energy"] = t([g.energy for g in graphs])
    if all(g.forces is not None for g in graphs):
        out["forces"] = t(np.concatenate([g.forces for g in graphs]))
    if any(g.stress is not None for g in graphs):
        out["stress"] = t(np.stack([np.zeros((3, 3)) if g.stress is None else g.stress for g in graphs]))
        out["stress_mask"] = t([g.stress is not None for g in graphs], torch.bool)
    out["num_graphs"] = torch.tensor(n_graphs)
    return out
