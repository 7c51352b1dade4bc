"""Reading, validating and writing labelled atomic structures ("frames").

A :class:`Frame` is the data layer's plain representation of one structure with its
reference labels (energy, forces, stress). Frames are read with :func:`read_frames`
from anything ``ase.io.read`` understands; the labels may sit in ``atoms.info`` /
``atoms.arrays`` under user-chosen keys or on an attached calculator (ASE moves the
``energy``/``forces``/``stress`` of an extxyz frame onto a SinglePointCalculator).

Every problem with the input raises :class:`forcefield.errors.InputError` with a one-line
message naming the file, the frame index and, where it applies, the key, element or atom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from forcefield.data.cell import check_cell
from forcefield.errors import InputError

__all__ = [
    "Frame",
    "read_frames",
    "write_frames",
    "frame_location",
    "is_isolated_atom",
    "stress_to_3x3",
]

PathLike = Union[str, os.PathLike]


def split_source(source: str) -> tuple[str, Optional[int]]:
    """Split a ``"path:index"`` source into (path, index); index None if absent."""
    if source:
        head, sep, tail = source.rpartition(":")
        if sep and head:
            try:
                return head, int(tail)
            except ValueError:
                pass
    return source, None


def frame_location(frame_or_source: Union["Frame", str], position: Optional[int] = None) -> str:
    """Human-readable location of a frame: ``"data/x.xyz: frame 7"``.

    Uses the frame's ``source`` (``"path:index"``); ``position`` (the index in a list)
    is the fallback when the source carries no index.
    """
    source = frame_or_source if isinstance(frame_or_source, str) else frame_or_source.source
    path, index = split_source(source)
    if index is None:
        index = position
    if path and index is not None:
        return f"{path}: frame {index}"
    if path:
        return path
    if index is not None:
        return f"frame {index}"
    return "structure"


def stress_to_3x3(value, where: str = "structure", key: str = "stress") -> np.ndarray:
    """Convert a stress given as Voigt 6 (xx, yy, zz, yz, xz, xy; ASE order), 9 values
    (row-major) or a 3x3 array to a full 3x3 float64 array."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: stress (key '{key}') is not numeric ({exc})") from None
    if arr.shape == (3, 3):
        return arr.copy()
    flat = arr.reshape(-1)
    if flat.size == 9:
        return flat.reshape(3, 3).copy()
    if flat.size == 6:
        xx, yy, zz, yz, xz, xy = flat
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]], dtype=np.float64)
    raise InputError(
        f"{where}: stress (key '{key}') has shape {tuple(arr.shape)}; "
        "expected 6 (Voigt xx yy zz yz xz xy), 9 or 3x3 values"
    )


def _stress_3x3_to_voigt(stress: np.ndarray) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


@dataclass
class Frame:
    """One atomic structure with its (optional) reference labels.

    Units: positions and cell in Å, energy in eV, forces in eV/Å, stress in eV/Å^3 with
    ASE's sign convention (always stored as a full 3x3 array).
    ``source`` is ``"path:index"`` and is used in error messages.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    config_type: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        where = frame_location(self)
        numbers = np.asarray(self.numbers)
        if numbers.ndim != 1:
            raise InputError(f"{where}: atomic numbers have shape {numbers.shape}; expected (N,)")
        self.numbers = numbers.astype(np.int64)
        n = len(self.numbers)
        if n == 0:
            raise InputError(f"{where}: structure has no atoms")
        try:
            positions = np.asarray(self.positions, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: positions are not numeric ({exc})") from None
        if positions.shape != (n, 3):
            raise InputError(f"{where}: positions have shape {positions.shape}; expected ({n}, 3)")
        bad = np.nonzero(~np.isfinite(positions).all(axis=1))[0]
        if bad.size:
            raise InputError(f"{where}: atom {int(bad[0])} has a non-finite position {positions[bad[0]].tolist()}")
        self.positions = positions
        invalid = (self.numbers < 1) | (self.numbers > 118)
        if invalid.any():
            i = int(np.nonzero(invalid)[0][0])
            raise InputError(f"{where}: atom {i} has invalid atomic number {int(self.numbers[i])}")

        cell = np.asarray(self.cell if self.cell is not None else np.zeros((3, 3)), dtype=np.float64)
        if cell.shape != (3, 3):
            raise InputError(f"{where}: cell has shape {cell.shape}; expected (3, 3)")
        if not np.isfinite(cell).all():
            raise InputError(f"{where}: cell has non-finite entries")
        self.cell = cell
        pbc = np.asarray(self.pbc if self.pbc is not None else False, dtype=bool)
        if pbc.shape == ():
            pbc = np.array([bool(pbc)] * 3)
        if pbc.shape != (3,):
            raise InputError(f"{where}: pbc has shape {pbc.shape}; expected 3 booleans")
        self.pbc = pbc
        check_cell(cell, pbc, where)

        if self.energy is not None:
            e = np.asarray(self.energy, dtype=np.float64).reshape(-1)
            if e.size != 1:
                raise InputError(f"{where}: energy has {e.size} values; expected one number")
            if not np.isfinite(e[0]):
                raise InputError(f"{where}: energy is not finite ({e[0]})")
            self.energy = float(e[0])
        if self.forces is not None:
            f = np.asarray(self.forces, dtype=np.float64)
            if f.shape != (n, 3):
                raise InputError(f"{where}: forces have shape {f.shape}; expected ({n}, 3) for {n} atoms")
            bad = np.nonzero(~np.isfinite(f).all(axis=1))[0]
            if bad.size:
                raise InputError(f"{where}: atom {int(bad[0])} has a non-finite force")
            self.forces = f
        if self.stress is not None:
            s = stress_to_3x3(self.stress, where)
            if not np.isfinite(s).all():
                raise InputError(f"{where}: stress has non-finite entries")
            self.stress = s
        self.config_type = "" if self.config_type is None else str(self.config_type)
        self.source = str(self.source)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def symbols(self) -> list[str]:
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.numbers]

    def to_atoms(self):
        """An ``ase.Atoms`` with a SinglePointCalculator carrying the labels present."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(
            numbers=self.numbers.copy(),
            positions=self.positions.copy(),
            cell=self.cell.copy(),
            pbc=self.pbc.copy(),
        )
        if self.config_type:
            atoms.info["config_type"] = self.config_type
        results = {}
        if self.energy is not None:
            results["energy"] = float(self.energy)
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            results["stress"] = _stress_3x3_to_voigt(self.stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    @classmethod
    def from_atoms(
        cls,
        atoms,
        source: str = "",
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
    ) -> "Frame":
        """Build a frame from ``ase.Atoms``.

        Each label is taken from ``atoms.info`` (energy, stress) or ``atoms.arrays``
        (forces) under the given key if present there, otherwise from the attached
        calculator's ``results`` under the same key; absent labels are None.
        """
        where = frame_location(source)
        calc_results = {}
        calc = getattr(atoms, "calc", None)
        if calc is not None:
            calc_results = dict(getattr(calc, "results", None) or {})

        def lookup(container, key):
            if key in container and container[key] is not None:
                return container[key]
            if key in calc_results and calc_results[key] is not None:
                return calc_results[key]
            return None

        energy = lookup(atoms.info, energy_key)
        if energy is not None:
            try:
                energy = np.asarray(energy, dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{where}: energy (key '{energy_key}') is not a number: {energy!r}") from None
            if energy.size != 1:
                raise InputError(f"{where}: energy (key '{energy_key}') has {energy.size} values; expected one")
            energy = float(energy.reshape(-1)[0])
            if not np.isfinite(energy):
                raise InputError(f"{where}: energy (key '{energy_key}') is not finite ({energy})")
        forces = lookup(atoms.arrays, forces_key)
        if forces is None and forces_key in atoms.info:
            forces = atoms.info[forces_key]
        if forces is not None:
            try:
                forces = np.asarray(forces, dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{where}: forces (key '{forces_key}') are not numeric") from None
            if forces.shape != (len(atoms), 3):
                raise InputError(
                    f"{where}: forces (key '{forces_key}') have shape {forces.shape}; expected ({len(atoms)}, 3)"
                )
        stress = lookup(atoms.info, stress_key)
        if stress is not None:
            stress = stress_to_3x3(stress, where, stress_key)
        config_type = atoms.info.get("config_type", "")
        return cls(
            numbers=np.asarray(atoms.numbers),
            positions=np.asarray(atoms.positions),
            cell=np.asarray(atoms.cell[:]),
            pbc=np.asarray(atoms.pbc),
            energy=energy,
            forces=forces,
            stress=stress,
            config_type="" if config_type is None else str(config_type),
            source=source,
        )


def _normalise_type(config_type: str) -> str:
    return "".join(ch for ch in str(config_type).lower() if ch.isalnum())


def is_isolated_atom(frame) -> bool:
    """True if ``frame`` is an isolated atom.

    Either its config_type names it one (``isolated_atom``, ``IsolatedAtom``, any case,
    with or without ``_``/``-``/space) or it holds a single atom with no periodicity.
    """
    if _normalise_type(getattr(frame, "config_type", "")) == "isolatedatom":
        return True
    return len(frame.numbers) == 1 and not bool(np.any(frame.pbc))


def _selected_indices(index, count: int) -> list[int]:
    """Indices in the file of the frames ase.io.read returned for ``index``."""
    try:
        from ase.io.formats import string2index

        sel = string2index(index) if isinstance(index, str) else index
    except Exception:  # pragma: no cover - defensive
        return list(range(count))
    if isinstance(sel, (int, np.integer)) and sel >= 0:
        return [int(sel)]
    if isinstance(sel, slice):
        start = 0 if sel.start is None else sel.start
        step = 1 if sel.step is None else sel.step
        if start >= 0 and step > 0:
            return [start + i * step for i in range(count)]
    return list(range(count))


def read_frames(
    path: PathLike,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
    index=":",
    format: Optional[str] = None,
) -> list[Frame]:
    """Read all (or ``index``-selected) structures of ``path`` as validated frames.

    Raises InputError (naming ``path``) when the file is missing, unreadable, empty, or
    a frame is invalid (non-finite positions, forces of the wrong shape, ...).
    """
    import ase.io

    path_str = os.fspath(path)
    if path_str.startswith("~"):
        path_str = os.path.expanduser(path_str)
    p = Path(path_str)
    if not p.exists():
        raise InputError(f"{path_str}: file not found")
    if p.is_dir():
        raise InputError(f"{path_str}: is a directory, expected a structure file")
    try:
        images = ase.io.read(path_str, index=index, format=format)
    except InputError:
        raise
    except Exception as exc:  # ase raises many kinds; report its reason in one line
        reason = str(exc).strip() or "no details"
        raise InputError(f"{path_str}: cannot read structures ({type(exc).__name__}: {reason})") from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise InputError(f"{path_str}: contains no structures")
    indices = _selected_indices(index, len(images))
    frames = []
    for i, atoms in zip(indices, images):
        frames.append(
            Frame.from_atoms(
                atoms,
                source=f"{path_str}:{i}",
                energy_key=energy_key,
                forces_key=forces_key,
                stress_key=stress_key,
            )
        )
    return frames


def write_frames(frames: Iterable[Union[Frame, "object"]], path: PathLike) -> Path:
    """Write frames (or ase.Atoms) to ``path`` as extended XYZ, atomically.

    The data is written to a temporary file in the same directory, flushed to disk and
    moved over ``path`` with ``os.replace``, so readers never see a partial file.
    Labels are written under the standard keys ``energy``, ``forces``, ``stress``.
    """
    import ase.io

    from forcefield.atomic_io import atomic_path

    p = Path(path).expanduser()
    images = [f.to_atoms() if isinstance(f, Frame) else f for f in frames]
    with atomic_path(p) as tmp:
        with open(tmp, "w") as fh:
            if images:
                ase.io.write(fh, images, format="extxyz")
    return p
