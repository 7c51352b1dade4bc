"""Isolated-atom extraction (E0) and the deterministic train/validation split."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forcefield.data.frames import frame_location, is_isolated_atom
from forcefield.errors import InputError

__all__ = ["E0Collector", "extract_e0", "train_valid_split"]


class E0Collector:
    """Isolated-atom energies, one frame at a time (for `extract_e0` and streaming readers).
    InputError if an isolated-atom frame has no energy, more than one atom, or the same
    element appears twice with energies differing by more than ``atol`` eV; ``energy_key``
    (the key the energies were read under) is named for a missing energy."""

    def __init__(self, energy_key: str = "energy", atol: float = 1e-6):
        self.energy_key, self.atol = energy_key, atol
        self.values: dict[str, float] = {}
        self.where: dict[str, str] = {}

    def add(self, frame, position=None) -> None:
        from ase.data import chemical_symbols

        where = frame_location(frame, position)
        if len(frame.numbers) != 1:
            raise InputError(
                f"{where}: config_type '{frame.config_type}' marks an isolated atom "
                f"but the structure has {len(frame.numbers)} atoms"
            )
        if frame.energy is None:
            raise InputError(f"{where}: isolated atom has no energy (key '{self.energy_key}'), so its E0 is unknown")
        symbol = chemical_symbols[int(frame.numbers[0])]
        energy = float(frame.energy)
        if symbol in self.values:
            if abs(self.values[symbol] - energy) > self.atol:
                raise InputError(
                    f"{where}: isolated {symbol} atom has energy {energy!r} eV but "
                    f"{self.where[symbol]} gives {self.values[symbol]!r} eV"
                )
            return
        self.values[symbol] = energy
        self.where[symbol] = where


def extract_e0(frames: Sequence, atol: float = 1e-6, energy_key: str = "energy") -> tuple[list, dict[str, float]]:
    """Split isolated-atom frames off ``frames``: ``(remaining_frames, e0)`` where ``e0`` maps
    element symbol to the energy of its isolated atom (eV); the checks of `E0Collector`."""
    remaining = []
    e0 = E0Collector(energy_key, atol)
    for pos, frame in enumerate(frames):
        if is_isolated_atom(frame):
            e0.add(frame, pos)
        else:
            remaining.append(frame)
    return remaining, e0.values


def train_valid_split(frames: Sequence, valid_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic random split of ``frames`` into (train, valid).

    Uses ``numpy.random.default_rng(seed)``. The validation set holds
    ``round(valid_fraction * n)`` frames, at least 1 when ``valid_fraction > 0`` and
    ``n >= 2``, and never all of them. Both parts keep the original frame order.
    """
    frames = list(frames)
    try:
        fraction = float(valid_fraction)
    except (TypeError, ValueError):
        raise InputError(f"data.valid: expected a fraction in [0, 1), got {valid_fraction!r}") from None
    if not (0.0 <= fraction < 1.0) or not np.isfinite(fraction):
        raise InputError(f"data.valid: fraction must be in [0, 1), got {valid_fraction!r}")
    n = len(frames)
    n_valid = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_valid = max(n_valid, 1)
    n_valid = min(n_valid, max(n - 1, 0))
    if n_valid == 0:
        return frames, []
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    valid_idx = np.sort(perm[:n_valid])
    mask = np.zeros(n, dtype=bool)
    mask[valid_idx] = True
    train = [f for f, m in zip(frames, mask) if not m]
    valid = [f for f, m in zip(frames, mask) if m]
    return train, valid
