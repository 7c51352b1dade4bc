"""Dataset statistics for the model's normalisation: per-species energy shift, force
scale and average number of neighbours (of frames, or of the graphs already built)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from forcefield.data.cell import check_cell
from forcefield.data.checks import check_species
from forcefield.data.frames import frame_location, is_isolated_atom
from forcefield.data.graph import Graph, neighbour_list
from forcefield.errors import InputError

__all__ = [
    "composition_matrix",
    "fit_species_shift",
    "force_rms",
    "avg_num_neighbors",
    "avg_num_neighbors_of_graphs",
    "neighbor_pairs",
]


def composition_matrix(frames: Sequence, species: Sequence[str]) -> np.ndarray:
    """(n_frames, n_species) counts of each species in each frame.

    InputError (naming the frame) for an element not in ``species``.
    """
    from ase.data import atomic_numbers

    check_species(frames, species)
    z_to_col = {atomic_numbers[s]: k for k, s in enumerate(species)}
    counts = np.zeros((len(frames), len(species)), dtype=np.float64)
    for row, frame in enumerate(frames):
        zs, c = np.unique(frame.numbers, return_counts=True)
        for z, k in zip(zs, c):
            counts[row, z_to_col[int(z)]] += k
    return counts


def fit_species_shift(
    frames: Sequence,
    species: Sequence[str],
    e0: Optional[Mapping[str, float]] = None,
    use_e0: bool = False,
) -> dict[str, float]:
    """Per-species energy shift ``mu`` (eV/atom) from a least-squares fit of the frame
    energies on their composition: ``E_frame ~ sum_Z n_Z mu_Z``.

    - ``use_e0=True`` and ``e0`` covering every species: return ``e0`` (no fit).
    - Species absent from the data (or all frames without energy): their ``e0`` if
      known, else 0.0.
    - Rank-deficient composition (e.g. every frame has the same stoichiometry, as in a
      molecular MD dataset): the fit is unique only up to the null space, so we solve
      for a correction to a baseline (``e0[Z]`` where known, otherwise the mean
      per-atom energy left after the known ``e0``): a shift common to all species
      (least squares on the atom count) plus the minimum-norm species-resolved rest.
      A single-element dataset thus gives the mean energy per atom; a fixed stoichiometry without ``e0`` gives
      every element the same mean energy per atom; with ``e0`` the shifts stay ``e0``
      plus an equal share of the binding energy per atom. When the composition has full
      column rank the result is the ordinary least-squares solution, independent of
      the baseline.
    Frames without an energy are ignored. Isolated-atom frames are used like any other
    frame; take them out with ``extract_e0`` first if they should only define ``e0``.
    """
    species = list(species)
    e0 = {k: float(v) for k, v in (e0 or {}).items()}
    if use_e0 and all(s in e0 for s in species):
        return {s: e0[s] for s in species}
    labelled = [f for f in frames if f.energy is not None]
    result = {s: e0.get(s, 0.0) for s in species}
    if not labelled:
        return result
    counts = composition_matrix(labelled, species)
    energies = np.array([f.energy for f in labelled], dtype=np.float64)
    present = counts.sum(axis=0) > 0
    cols = np.nonzero(present)[0]
    A = counts[:, cols]
    known = np.array([species[k] in e0 for k in cols])
    e0_vec = np.array([e0.get(species[k], 0.0) for k in cols])
    # baseline: e0 where known, else the mean per-atom residual energy
    known_part = A[:, known] @ e0_vec[known] if known.any() else np.zeros(len(energies))
    n_unknown = A[:, ~known].sum()
    mean_unknown = (energies - known_part).sum() / n_unknown if n_unknown > 0 else 0.0
    baseline = np.where(known, e0_vec, mean_unknown)
    residual = energies - A @ baseline
    # first a correction common to all species (an equal share per atom), then the
    # minimum-norm species-resolved correction of what is left
    n_atoms = A.sum(axis=1)
    norm = float(n_atoms @ n_atoms)
    common = float(residual @ n_atoms / norm) if norm > 0 else 0.0
    residual = residual - common * n_atoms
    delta, *_ = np.linalg.lstsq(A, residual, rcond=None)
    mu = baseline + common + delta
    for k, value in zip(cols, mu):
        result[species[k]] = float(value)
    return result


def force_rms(frames: Sequence, shift: Optional[Mapping[str, float]] = None) -> float:
    """RMS of all force components (eV/Å) over frames with forces.

    Isolated atoms are left out (their forces are zero by symmetry). Without any
    (non-zero) forces: the RMS of the per-atom energy residuals ``(E - sum mu)/N``
    after the species shift (fitted here if ``shift`` is None); 1.0 if that is not
    available or zero either.
    """
    total = 0.0
    count = 0
    for f in frames:
        if f.forces is None or is_isolated_atom(f):
            continue
        total += float(np.sum(np.square(f.forces)))
        count += f.forces.size
    if count > 0 and total > 0:
        return float(np.sqrt(total / count))
    labelled = [f for f in frames if f.energy is not None and not is_isolated_atom(f)]
    if not labelled:
        return 1.0
    from ase.data import chemical_symbols

    if shift is None:
        species = sorted({chemical_symbols[int(z)] for f in labelled for z in f.numbers})
        shift = fit_species_shift(labelled, species)
    residuals = []
    for f in labelled:
        try:
            ref = sum(shift[chemical_symbols[int(z)]] for z in f.numbers)
        except KeyError as exc:
            raise InputError(f"species shift has no entry for element {exc}") from None
        residuals.append((f.energy - ref) / len(f.numbers))
    rms = float(np.sqrt(np.mean(np.square(residuals))))
    return rms if rms > 0 and np.isfinite(rms) else 1.0


def neighbor_pairs(frame, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list ``(i, j)`` within ``r_max`` (Å), periodic images included: the
    graph builder's `neighbour_list`. A cell the neighbour list cannot handle is an
    InputError naming the frame (`check_cell`)."""
    check_cell(frame.cell, frame.pbc, frame_location(frame), r_max)
    edge_index, _ = neighbour_list(frame.positions, frame.cell, frame.pbc, r_max)
    return edge_index[0], edge_index[1]


def avg_num_neighbors(frames: Sequence, r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` per atom over all atoms of ``frames``
    (periodic images counted). 0.0 for empty input."""
    if r_max <= 0:
        raise InputError(f"model.r_max must be positive, got {r_max}")
    n_edges = 0
    n_atoms = 0
    for frame in frames:
        i, _ = neighbor_pairs(frame, r_max)
        n_edges += len(i)
        n_atoms += len(frame.numbers)
    return float(n_edges / n_atoms) if n_atoms else 0.0


def avg_num_neighbors_of_graphs(graphs: Sequence[Graph]) -> float:
    """`avg_num_neighbors` of graphs already built (their edges are the neighbour pairs
    within the graphs' cutoff). 0.0 for empty input."""
    n_edges = sum(int(g.edge_index.shape[1]) for g in graphs)
    n_atoms = sum(g.num_atoms for g in graphs)
    return float(n_edges / n_atoms) if n_atoms else 0.0
