"""Checks of a list of frames against what training or a model needs: the labels the
loss uses (`check_labels`) and the elements the model knows (`check_species`)."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from forcefield.data.frames import Frame, PathLike, is_isolated_atom, split_source
from forcefield.errors import InputError

__all__ = ["check_labels", "check_species"]


def _display_path(frames: Sequence[Frame], path: Optional[PathLike]) -> str:
    if path is not None:
        return os.fspath(path)
    for f in frames:
        p, _ = split_source(f.source)
        if p:
            return p
    return "data"


def _frame_index(frame: Frame, position: int) -> int:
    _, index = split_source(frame.source)
    return position if index is None else index


def check_labels(
    frames: Sequence[Frame],
    need_energy: bool,
    need_forces: bool,
    need_stress: bool,
    path: Optional[PathLike] = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
) -> None:
    """Raise InputError at the first frame lacking a label that the loss needs.

    Message example: ``data/x.xyz: frame 7 has no forces (key 'forces') but
    forces_weight > 0``. Exemptions: isolated atoms need no forces or stress (their
    forces are zero by symmetry), and frames not periodic in all three directions need
    no stress (it is undefined for them).
    """
    where = _display_path(frames, path)
    for pos, frame in enumerate(frames):
        idx = _frame_index(frame, pos)
        if need_energy and frame.energy is None:
            raise InputError(f"{where}: frame {idx} has no energy (key '{energy_key}') but energy_weight > 0")
        if is_isolated_atom(frame):
            continue
        if need_forces and frame.forces is None:
            raise InputError(f"{where}: frame {idx} has no forces (key '{forces_key}') but forces_weight > 0")
        if need_stress and frame.stress is None and bool(np.all(frame.pbc)):
            raise InputError(f"{where}: frame {idx} has no stress (key '{stress_key}') but stress_weight > 0")


def check_species(frames: Sequence[Frame], species: Sequence[str], path: Optional[PathLike] = None) -> None:
    """Raise InputError at the first frame containing an element not in ``species``.

    Message example: ``data/x.xyz: frame 3 contains element 'Zn', which is not in
    model.species ['Cu', 'Au']``.
    """
    from ase.data import atomic_numbers, chemical_symbols

    species = list(species)
    allowed = set()
    for s in species:
        if s not in atomic_numbers:
            raise InputError(f"model.species: unknown element symbol '{s}'")
        allowed.add(atomic_numbers[s])
    where = _display_path(frames, path)
    for pos, frame in enumerate(frames):
        unknown = [z for z in np.unique(frame.numbers) if int(z) not in allowed]
        if unknown:
            # report the first offending atom's element (file order)
            first = next(int(z) for z in frame.numbers if int(z) not in allowed)
            raise InputError(
                f"{where}: frame {_frame_index(frame, pos)} contains element "
                f"'{chemical_symbols[first]}', which is not in model.species {species}"
            )
