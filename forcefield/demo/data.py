"""Built-in demo data: small Cu-Au structures labelled with ASE's EMT calculator.

``forcefield demo`` trains on this data, so it needs no download and no external files.
Everything is generated from a seed with numpy's ``Generator`` and written as extended
XYZ; the same seed gives byte-identical files.

Reference energy: the plain EMT energies of ASE (eV). EMT's zero is its fcc bulk
reference, so an isolated EMT atom does *not* have zero energy (Cu 3.51 eV, Au 3.80 eV).
``isolated_atoms.xyz`` holds exactly these EMT isolated-atom energies, and EMT has a
finite cutoff (about 6 Å for Cu-Au), so a dimer pulled apart ends exactly at the sum of
the isolated-atom energies: the dissociation limit is consistent with ``E0``.

Structure types (``config_type``):
``bulk`` (Langevin MD snapshots of 2x2x2 conventional FCC cells, 32 atoms, pure and random
alloys, 300-1500 K, small random strains), ``vacancy`` (the same with 1-2 atoms removed),
``surface`` ((111)/(100)/(110) slabs with vacuum, periodic in x and y, MD snapshots),
``adatom`` (an atom at a random site and height above a slab), ``cluster`` (4-13 atoms,
non-periodic), ``dimer`` (pairs at 1.8 Å to 7 Å, beyond EMT's cutoff) and
``isolated_atom``. Energy and forces are stored for all; stress only for fully periodic
cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from forcefield.data.frames import Frame, write_frames
from forcefield.demo.emt import (
    LATTICE_CONSTANTS,
    apply_strain,
    bulk_cell,
    check_elements,
    dimer_curve,
    emt_frame,
    isolated_atom_energy,
    md_snapshots,
    random_composition,
    random_strain,
    vegard,
)
from forcefield.errors import InputError

__all__ = [
    "generate_demo_dataset",
    "generate_demo_frames",
    "dimer_curve",
    "isolated_atom_energy",
    "LATTICE_CONSTANTS",
    "DIMER_DISTANCE_RANGE",
]

#: range of the dimer separations (Å) in the training data
DIMER_DISTANCE_RANGE = (1.8, 7.0)

_TEMPERATURES = (300.0, 600.0, 900.0, 1200.0, 1500.0)
_SURFACE_TEMPERATURES = (300.0, 600.0, 900.0)
_VACUUM = 6.0  # Å on each side of a slab


# --------------------------------------------------------------------------- categories


def _bulk_frames(n: int, elements, rng, vacancies: bool = False, per_run: int = 5) -> list[Frame]:
    frames: list[Frame] = []
    run = 0
    while len(frames) < n:
        atoms = bulk_cell(elements, rng)
        if vacancies:
            n_vac = int(rng.integers(1, 3))
            remove = sorted(rng.choice(len(atoms), size=n_vac, replace=False).tolist(), reverse=True)
            for idx in remove:
                del atoms[idx]
        temperature = _TEMPERATURES[(run + int(rng.integers(len(_TEMPERATURES)))) % len(_TEMPERATURES)]
        run += 1
        for snap in md_snapshots(atoms, temperature, min(per_run, n - len(frames)), rng):
            apply_strain(snap, random_strain(rng, 0.02))
            frames.append(emt_frame(snap, "vacancy" if vacancies else "bulk"))
    return frames


def _slab(elements, rng, layers: int = 4, size_xy: int = 2):
    from ase.build import fcc100, fcc110, fcc111

    kind = int(rng.integers(3))
    builder = (fcc111, fcc100, fcc110)[kind]
    nx, ny = size_xy, size_xy
    if kind == 2:  # (110) rows are short along x: use one more repeat there
        nx = size_xy + 1
    slab = builder("Cu", size=(nx, ny, layers), a=1.0, vacuum=None)
    symbols = random_composition(len(slab), elements, rng)
    a = vegard(symbols)
    slab = builder("Cu", size=(nx, ny, layers), a=a, vacuum=_VACUUM)
    slab.set_chemical_symbols(symbols)
    slab.pbc = (True, True, False)
    return slab


def _surface_frames(n: int, elements, rng, per_run: int = 3) -> list[Frame]:
    frames: list[Frame] = []
    run = 0
    while len(frames) < n:
        slab = _slab(elements, rng)
        temperature = _SURFACE_TEMPERATURES[run % len(_SURFACE_TEMPERATURES)]
        run += 1
        for snap in md_snapshots(slab, temperature, min(per_run, n - len(frames)), rng):
            frames.append(emt_frame(snap, "surface"))
    return frames


def _adatom_frames(n: int, elements, rng) -> list[Frame]:
    from ase.build import add_adsorbate
    from ase.geometry import get_distances

    frames: list[Frame] = []
    for _ in range(n):
        slab = _slab(elements, rng, layers=3, size_xy=3)
        cell_xy = slab.cell[:2, :2]
        frac = rng.uniform(0.0, 1.0, size=2)
        xy = frac @ cell_xy
        # height such that the nearest substrate atom is at a random distance
        # between 2.1 and 3.4 Å (first-neighbour bonding out to weak binding)
        target = rng.uniform(2.1, 3.4)
        top = slab.positions[:, 2].max()
        heights = np.arange(0.3, 4.0, 0.01)
        probes = np.column_stack([np.full_like(heights, xy[0]), np.full_like(heights, xy[1]), top + heights])
        _, dist = get_distances(probes, slab.positions, cell=slab.cell, pbc=slab.pbc)
        nearest = dist.min(axis=1)
        height = float(heights[np.argmax(nearest >= target)])
        adsorbate = elements[int(rng.integers(len(elements)))]
        add_adsorbate(slab, adsorbate, height=height, position=(float(xy[0]), float(xy[1])))
        slab.center(vacuum=_VACUUM, axis=2)  # vacuum above the adatom too
        # keep the adatom where it is, only jiggle the substrate a little
        slab.positions[:-1] += rng.normal(0.0, 0.05, size=slab.positions[:-1].shape)
        frames.append(emt_frame(slab, "adatom"))
    return frames


def _cluster_frames(n: int, elements, rng) -> list[Frame]:
    from ase import Atoms
    from ase.build import bulk

    lattice = bulk("Cu", "fcc", a=1.0, cubic=True) * (4, 4, 4)
    points = lattice.positions - lattice.positions.mean(axis=0)
    frames: list[Frame] = []
    for _ in range(n):
        size = int(rng.integers(4, 14))
        centre = rng.uniform(-0.5, 0.5, size=3)
        order = np.argsort(np.linalg.norm(points - centre, axis=1), kind="stable")
        chosen = points[order[:size]]
        symbols = random_composition(size, elements, rng)
        a = vegard(symbols) * rng.uniform(0.93, 1.07)
        positions = chosen * a
        positions += rng.normal(0.0, 0.1, size=positions.shape)
        positions -= positions.mean(axis=0)
        atoms = Atoms(symbols, positions=positions, pbc=False)
        frames.append(emt_frame(atoms, "cluster"))
    return frames


def _pairs(elements) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(elements) for b in elements[i:]]


def _dimer_frames(n: int, elements, rng) -> list[Frame]:
    from ase import Atoms

    pairs = _pairs(elements)
    lo, hi = DIMER_DISTANCE_RANGE
    frames: list[Frame] = []
    per_pair = [n // len(pairs) + (1 if k < n % len(pairs) else 0) for k in range(len(pairs))]
    for (a, b), count in zip(pairs, per_pair):
        if count == 0:
            continue
        # stratified: one random distance in each of `count` equal bins of [lo, hi]
        edges = np.linspace(lo, hi, count + 1)
        distances = rng.uniform(edges[:-1], edges[1:])
        for d in distances:
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            positions = np.array([-0.5 * d * direction, 0.5 * d * direction])
            atoms = Atoms([a, b], positions=positions, pbc=False)
            frames.append(emt_frame(atoms, "dimer"))
    return frames


def _isolated_frames(elements) -> list[Frame]:
    from ase import Atoms

    return [emt_frame(Atoms(el, positions=[[0.0, 0.0, 0.0]], pbc=False), "isolated_atom") for el in elements]


def generate_demo_frames(
    seed: int = 0,
    split: str = "train",
    n_bulk: int = 70,
    n_vacancy: int = 15,
    n_surface: int = 30,
    n_adatom: int = 20,
    n_cluster: int = 30,
    n_dimer: int = 36,
    elements: Sequence[str] = ("Cu", "Au"),
    include_isolated: bool = True,
) -> list[Frame]:
    """Generate one split of the demo data in memory (see :func:`generate_demo_dataset`).

    ``split`` ("train", "test" or any other name) selects an independent random stream,
    so different splits never share snapshots.
    """
    elements = check_elements(elements)
    stream = {"train": 0, "test": 1}.get(split, None)
    if stream is None:
        stream = 2 + sum(ord(c) for c in split)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), stream]))
    frames: list[Frame] = []
    frames += _bulk_frames(n_bulk, elements, rng)
    frames += _bulk_frames(n_vacancy, elements, rng, vacancies=True)
    frames += _surface_frames(n_surface, elements, rng)
    frames += _adatom_frames(n_adatom, elements, rng)
    frames += _cluster_frames(n_cluster, elements, rng)
    frames += _dimer_frames(n_dimer, elements, rng)
    if include_isolated:
        frames += _isolated_frames(elements)
    return frames


def generate_demo_dataset(
    out_dir: Path,
    seed: int = 0,
    n_bulk: int = 70,
    n_vacancy: int = 15,
    n_surface: int = 30,
    n_adatom: int = 20,
    n_cluster: int = 30,
    n_dimer: int = 36,
    n_test: int = 40,
    elements: Sequence[str] = ("Cu", "Au"),
) -> dict[str, Path]:
    """Write the demo data set into ``out_dir`` and return the paths.

    Files (keys of the returned dict):
    - ``train``: ``train.xyz``, the given numbers of each structure type plus one
      isolated atom per element (about 220 structures of at most 36 atoms by default);
    - ``test``: ``test.xyz``, about ``n_test`` held-out structures of the same types in
      the same proportions, from an independent random stream (no isolated atoms);
    - ``isolated_atoms``: ``isolated_atoms.xyz``, one ``config_type=isolated_atom``
      frame per element with EMT's isolated-atom energy (the E0).
    Labels are stored under the keys ``energy``, ``forces`` and (fully periodic cells
    only) ``stress``. The same seed gives byte-identical files.
    """
    elements = check_elements(elements)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = dict(
        n_bulk=n_bulk,
        n_vacancy=n_vacancy,
        n_surface=n_surface,
        n_adatom=n_adatom,
        n_cluster=n_cluster,
        n_dimer=n_dimer,
    )
    if any(int(v) < 0 for v in counts.values()) or n_test < 0:
        raise InputError(f"demo data: structure counts must be >= 0, got {counts}, n_test={n_test}")
    train = generate_demo_frames(seed, "train", elements=elements, **counts)
    total = sum(counts.values())
    if total > 0 and n_test > 0:
        scaled = {k: int(round(v * n_test / total)) for k, v in counts.items()}
        # keep every non-empty category represented in the test set
        scaled = {k: (max(s, 1) if counts[k] > 0 else 0) for k, s in scaled.items()}
        if counts["n_dimer"] > 0:
            scaled["n_dimer"] = max(scaled["n_dimer"], len(_pairs(elements)))
        test = generate_demo_frames(seed, "test", elements=elements, include_isolated=False, **scaled)
    else:
        test = []
    isolated = _isolated_frames(elements)
    paths = {
        "train": out / "train.xyz",
        "test": out / "test.xyz",
        "isolated_atoms": out / "isolated_atoms.xyz",
    }
    write_frames(train, paths["train"])
    write_frames(test, paths["test"])
    write_frames(isolated, paths["isolated_atoms"])
    return paths
