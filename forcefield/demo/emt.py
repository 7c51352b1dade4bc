"""EMT helpers of the demo data (forcefield/demo/data.py): isolated-atom energies, dimer
curves, EMT-labelled frames, random compositions and strains, Langevin MD snapshots.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from forcefield.data.frames import Frame
from forcefield.errors import InputError

__all__ = [
    "LATTICE_CONSTANTS",
    "isolated_atom_energy",
    "dimer_curve",
    "check_elements",
    "emt_frame",
    "random_composition",
    "vegard",
    "random_strain",
    "apply_strain",
    "md_snapshots",
    "bulk_cell",
]

#: FCC lattice constants (Å) close to EMT's equilibrium, for the metals ASE's EMT supports
LATTICE_CONSTANTS = {
    "Al": 4.05,
    "Ni": 3.52,
    "Cu": 3.61,
    "Pd": 3.89,
    "Ag": 4.09,
    "Pt": 3.92,
    "Au": 4.08,
}

_TIMESTEP_FS = 4.0
_FRICTION_PER_FS = 0.02


def _emt():
    from ase.calculators.emt import EMT

    return EMT()


def check_elements(elements: Sequence[str]) -> list[str]:
    elements = list(elements)
    if not elements:
        raise InputError("demo data: no elements given")
    for el in elements:
        if el not in LATTICE_CONSTANTS:
            raise InputError(
                f"demo data: element '{el}' is not supported by the EMT demo data "
                f"(supported: {sorted(LATTICE_CONSTANTS)})"
            )
    if len(set(elements)) != len(elements):
        raise InputError(f"demo data: duplicate elements in {elements}")
    return elements


def isolated_atom_energy(symbol: str) -> float:
    """EMT energy (eV) of a single isolated atom of ``symbol``."""
    from ase import Atoms

    check_elements([symbol])
    atoms = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
    atoms.calc = _emt()
    return float(atoms.get_potential_energy())


def dimer_curve(symbol_a: str, symbol_b: str, distances, relative: bool = False) -> np.ndarray:
    """EMT energy (eV) of the ``symbol_a``-``symbol_b`` dimer at each distance (Å).

    With ``relative=False`` (default) these are absolute EMT energies, on the same scale
    as the demo data: beyond EMT's cutoff they equal
    ``isolated_atom_energy(a) + isolated_atom_energy(b)`` (the E0 of
    ``isolated_atoms.xyz``). With ``relative=True`` that sum is subtracted (binding curve,
    0 at dissociation).
    """
    from ase import Atoms

    check_elements([symbol_a] + ([symbol_b] if symbol_b != symbol_a else []))
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    energies = np.empty(len(distances))
    for k, d in enumerate(distances):
        atoms = Atoms([symbol_a, symbol_b], positions=[[0.0, 0.0, 0.0], [float(d), 0.0, 0.0]])
        atoms.calc = _emt()
        energies[k] = atoms.get_potential_energy()
    if relative:
        energies -= isolated_atom_energy(symbol_a) + isolated_atom_energy(symbol_b)
    return energies


# --------------------------------------------------------------------------- helpers


def emt_frame(atoms, config_type: str, source: str = "") -> Frame:
    """Evaluate EMT on ``atoms`` and return a labelled frame."""
    atoms = atoms.copy()
    atoms.calc = _emt()
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces())
    stress = None
    if bool(np.all(atoms.pbc)):
        stress = np.array(atoms.get_stress(voigt=False))
    atoms.calc = None
    return Frame(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=np.array(atoms.cell[:]),
        pbc=np.array(atoms.pbc),
        energy=energy,
        forces=forces,
        stress=stress,
        config_type=config_type,
        source=source,
    )


def random_composition(n: int, elements: Sequence[str], rng: np.random.Generator) -> list[str]:
    """``n`` symbols: pure (any element) or a random alloy with a random fraction."""
    if len(elements) == 1:
        return [elements[0]] * n
    mode = rng.integers(0, 3)
    if mode == 0:  # pure
        return [elements[int(rng.integers(len(elements)))]] * n
    weights = rng.dirichlet(np.ones(len(elements)))
    choice = rng.choice(len(elements), size=n, p=weights)
    return [elements[int(c)] for c in choice]


def vegard(symbols: Sequence[str]) -> float:
    return float(np.mean([LATTICE_CONSTANTS[s] for s in symbols]))


def random_strain(rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Symmetric deformation gradient I + eps with |eps_ij| <= amplitude."""
    eps = rng.uniform(-amplitude, amplitude, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    return np.eye(3) + eps


def apply_strain(atoms, F: np.ndarray) -> None:
    atoms.set_cell(atoms.cell[:] @ F.T, scale_atoms=True)


def md_snapshots(atoms, temperature: float, n_snapshots: int, rng, equilibrate: int = 10, every: int = 5):
    """Langevin MD with EMT; returns ``n_snapshots`` copies of the structure."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = _emt()
    # start near equilibrium at temperature: thermal displacements + Maxwell-Boltzmann
    atoms.positions += rng.normal(0.0, 0.03 * math.sqrt(temperature / 300.0), size=atoms.positions.shape)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        _TIMESTEP_FS * units.fs,
        temperature_K=temperature,
        friction=_FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(equilibrate)
    snaps = []
    for _ in range(n_snapshots):
        dyn.run(every)
        snap = atoms.copy()
        snap.calc = None
        snaps.append(snap)
    return snaps


_BULK_REPEATS = ((2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 1), (2, 1, 2), (1, 2, 2))


def bulk_cell(elements, rng):
    """A conventional FCC supercell (32 or 16 atoms) with a random composition."""
    from ase.build import bulk

    repeat = _BULK_REPEATS[int(rng.integers(len(_BULK_REPEATS)))]
    base = bulk("Cu", "fcc", a=1.0, cubic=True) * repeat
    symbols = random_composition(len(base), elements, rng)
    a = vegard(symbols) * rng.uniform(0.98, 1.02)
    base.set_cell(base.cell[:] * a, scale_atoms=True)
    base.set_chemical_symbols(symbols)
    return base
