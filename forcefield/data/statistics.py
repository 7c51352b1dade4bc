"""Dataset statistics for the model's normalisation: per-species energy shift, force
scale and average number of neighbours (of frames, or of the graphs already built)."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from forcefield.data.cell import check_cell
from forcefield.data.checks import check_species
from forcefield.data.frames import frame_location, is_isolated_atom
from forcefield.data.graph import Graph, neighbour_list
from forcefield.errors import InputError

__all__ = [
    "DatasetStatistics",
    "frame_statistics",
    "energy_residual_rms",
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


MAX_Z = 119  # accumulator columns are atomic numbers 0..118
PINV_RCOND = 1e-10  # eigenvalues of A^T A below this fraction of the largest are its null space


class DatasetStatistics:
    """Sums, gathered one structure at a time, from which the normalisation statistics follow:
    the per-species shift (a least-squares fit of energies on composition), the force RMS and
    the mean neighbour count. Memory is fixed (a 119 x 119 matrix), so `forcefield preprocess`
    gathers them in one streaming pass and stores them; the in-memory path gathers the same
    sums from its frames in the same order, so both give identical numbers.

    The shift fit needs only A^T A, A^T E, the column sums and the energy sum of the
    composition matrix A (frames x elements) of the structures with an energy: the minimum-norm
    least-squares solution is pinv(A^T A) A^T r, the same solution `numpy.linalg.lstsq` gives,
    with directions whose eigenvalue of A^T A is below PINV_RCOND of the largest treated as
    null (composition matrices hold small integers, so A^T A is exact).
    Isolated atoms are left out of the force sums (their forces are zero by symmetry)."""

    def __init__(self) -> None:
        self.gram = np.zeros((MAX_Z, MAX_Z))  # A^T A over structures with an energy
        self.ate = np.zeros(MAX_Z)  # A^T E
        self.counts = np.zeros(MAX_Z)  # column sums of A
        self.energy_sum = 0.0
        self.n_energy = 0
        self.seen = np.zeros(MAX_Z, dtype=bool)  # elements of any structure
        self.force_sq = 0.0
        self.force_n = 0
        self.n_edges = 0
        self.n_atoms = 0
        self.n_frames = 0

    def add(self, numbers, energy=None, forces=None, n_edges: int = 0, isolated: bool = False) -> None:
        numbers = np.asarray(numbers, dtype=np.int64)
        row = np.bincount(numbers, minlength=MAX_Z).astype(np.float64)
        self.seen |= row > 0
        self.n_frames += 1
        self.n_atoms += len(numbers)
        self.n_edges += int(n_edges)
        if energy is not None:
            nz = np.nonzero(row)[0]
            self.gram[np.ix_(nz, nz)] += np.outer(row[nz], row[nz])
            self.ate[nz] += row[nz] * float(energy)
            self.counts += row
            self.energy_sum += float(energy)
            self.n_energy += 1
        if forces is not None and not isolated:
            f = np.asarray(forces, dtype=np.float64)
            self.force_sq += float(np.sum(np.square(f)))
            self.force_n += f.size

    def elements(self, labelled_only: bool = False) -> list[str]:
        from ase.data import chemical_symbols

        mask = self.counts > 0 if labelled_only else self.seen
        return [chemical_symbols[z] for z in np.nonzero(mask)[0]]

    def shift(self, species: Sequence[str], e0: Optional[Mapping[str, float]] = None) -> dict[str, float]:
        """`fit_species_shift` of the gathered structures (see there for the treatment of a
        rank-deficient composition)."""
        from ase.data import atomic_numbers

        species = list(species)
        e0 = {k: float(v) for k, v in (e0 or {}).items()}
        result = {s: e0.get(s, 0.0) for s in species}
        if self.n_energy == 0:
            return result
        zs = np.array([atomic_numbers[s] for s in species])
        present = self.counts[zs] > 0
        cols = zs[present]
        names = [s for s, p in zip(species, present) if p]
        G = self.gram[np.ix_(cols, cols)]
        ate, c = self.ate[cols], self.counts[cols]
        known = np.array([s in e0 for s in names], dtype=bool)
        e0_vec = np.array([e0.get(s, 0.0) for s in names])
        # baseline: e0 where known, else the mean per-atom residual energy
        known_sum = float(c[known] @ e0_vec[known]) if known.any() else 0.0
        n_unknown = float(c[~known].sum())
        mean_unknown = (self.energy_sum - known_sum) / n_unknown if n_unknown > 0 else 0.0
        baseline = np.where(known, e0_vec, mean_unknown)
        # a correction common to all species (an equal share per atom), then the minimum-norm
        # species-resolved correction of what is left; n = A 1 (atoms per structure)
        g1 = G.sum(axis=1)  # A^T n
        norm = float(g1.sum())  # n . n
        common = float(ate.sum() - baseline @ g1) / norm if norm > 0 else 0.0
        rhs = ate - G @ baseline - common * g1  # A^T (residual - common n)
        w, v = np.linalg.eigh(G)
        keep = w > PINV_RCOND * max(float(w.max()), 0.0)
        delta = v[:, keep] @ ((v[:, keep].T @ rhs) / w[keep])
        mu = baseline + common + delta
        for s, value in zip(names, mu):
            result[s] = float(value)
        return result

    def force_rms(self) -> Optional[float]:
        """RMS of the force components, None without (non-zero) forces."""
        if self.force_n > 0 and self.force_sq > 0:
            return float(np.sqrt(self.force_sq / self.force_n))
        return None

    def avg_num_neighbors(self) -> float:
        return float(self.n_edges / self.n_atoms) if self.n_atoms else 0.0

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        """Plain (JSON) data: the sums over the elements seen only."""
        z = np.nonzero(self.seen | (self.counts > 0))[0]
        return {
            "elements": z.tolist(),
            "gram": self.gram[np.ix_(z, z)].tolist(),
            "ate": self.ate[z].tolist(),
            "counts": self.counts[z].tolist(),
            "seen": self.seen[z].tolist(),
            **{k: getattr(self, k) for k in ("energy_sum", "n_energy", "force_sq", "force_n", "n_edges", "n_atoms")},
            "n_frames": self.n_frames,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "DatasetStatistics":
        out = cls()
        z = np.asarray(d["elements"], dtype=np.int64)
        out.gram[np.ix_(z, z)] = np.asarray(d["gram"], dtype=np.float64).reshape(len(z), len(z))
        out.ate[z] = d["ate"]
        out.counts[z] = d["counts"]
        out.seen[z] = d["seen"]
        for k in ("energy_sum", "force_sq"):
            setattr(out, k, float(d[k]))
        for k in ("n_energy", "force_n", "n_edges", "n_atoms", "n_frames"):
            setattr(out, k, int(d[k]))
        return out


def frame_statistics(frames: Iterable, n_edges: Optional[Iterable[int]] = None) -> DatasetStatistics:
    """`DatasetStatistics` of frames (with the edge count of each, if given)."""
    stats = DatasetStatistics()
    edges = iter(n_edges) if n_edges is not None else None
    for f in frames:
        stats.add(f.numbers, f.energy, f.forces, next(edges) if edges is not None else 0, is_isolated_atom(f))
    return stats


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
    Computed from `DatasetStatistics` sums, as for a preprocessed dataset.
    """
    species = list(species)
    e0 = {k: float(v) for k, v in (e0 or {}).items()}
    if use_e0 and all(s in e0 for s in species):
        return {s: e0[s] for s in species}
    check_species(frames, species)
    return frame_statistics(frames).shift(species, e0)


def energy_residual_rms(pairs: Iterable, shift: Mapping[str, float]) -> float:
    """RMS of the per-atom energy residuals ``(E - sum mu)/N`` of (numbers, energy) pairs
    (energies None skipped); 1.0 when there are none or the RMS is 0."""
    from ase.data import chemical_symbols

    residuals = []
    for numbers, energy in pairs:
        if energy is None:
            continue
        try:
            ref = sum(shift[chemical_symbols[int(z)]] for z in numbers)
        except KeyError as exc:
            raise InputError(f"species shift has no entry for element {exc}") from None
        residuals.append((energy - ref) / len(numbers))
    if not residuals:
        return 1.0
    rms = float(np.sqrt(np.mean(np.square(residuals))))
    return rms if rms > 0 and np.isfinite(rms) else 1.0


def force_rms(frames: Sequence, shift: Optional[Mapping[str, float]] = None) -> float:
    """RMS of all force components (eV/Å) over frames with forces.

    Isolated atoms are left out (their forces are zero by symmetry). Without any
    (non-zero) forces: the RMS of the per-atom energy residuals ``(E - sum mu)/N``
    after the species shift (fitted here if ``shift`` is None); 1.0 if that is not
    available or zero either.
    """
    rms = frame_statistics(frames).force_rms()
    if rms is not None:
        return rms
    labelled = [f for f in frames if f.energy is not None and not is_isolated_atom(f)]
    if not labelled:
        return 1.0
    from ase.data import chemical_symbols

    if shift is None:
        species = sorted({chemical_symbols[int(z)] for f in labelled for z in f.numbers})
        shift = fit_species_shift(labelled, species)
    return energy_residual_rms(((f.numbers, f.energy) for f in labelled), shift)


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
