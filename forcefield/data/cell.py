"""The one check of a periodic cell, made before any neighbour list is built."""

from __future__ import annotations

from typing import Optional

import numpy as np

from forcefield.errors import InputError

__all__ = ["MAX_PERIODIC_IMAGES", "check_cell"]

MAX_PERIODIC_IMAGES = 10**6


def _periodic_heights(vectors: np.ndarray) -> np.ndarray:
    """Distance of each vector from the span of the others (the layer thickness)."""
    gram = vectors @ vectors.T
    full = np.linalg.det(gram)
    heights = np.empty(len(vectors))
    for k in range(len(vectors)):
        rest = np.delete(np.delete(gram, k, 0), k, 1)
        sub = np.linalg.det(rest) if rest.size else 1.0
        heights[k] = np.sqrt(max(full, 0.0) / sub) if sub > 0 else 0.0
    return heights


def check_cell(cell, pbc, where: str = "structure", r_max: Optional[float] = None) -> None:
    """InputError unless (cell, pbc) is a cell a neighbour list can be built for.

    The one check of the cell, called by the frame reader and by `build_graph` (so by the
    calculator, evaluation and training) before any neighbour list: every periodic cell
    vector must be non-zero and the periodic vectors linearly independent (vesin dies with
    SIGFPE or a C++ exception otherwise). With `r_max`, a periodic direction so thin that
    the cutoff sphere would need more than MAX_PERIODIC_IMAGES images is refused too.
    Cell vectors along non-periodic directions are free (zero is fine).
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not np.isfinite(cell).all():
        raise InputError(f"{where}: cell has non-finite entries")
    for axis in range(3):
        if pbc[axis] and np.linalg.norm(cell[axis]) < 1e-8:
            raise InputError(f"{where}: periodic along cell vector {axis} but that cell vector is zero")
    if not pbc.any():
        return
    axes = np.nonzero(pbc)[0]
    vectors = cell[axes]
    if np.linalg.matrix_rank(vectors, tol=1e-8) < len(vectors):
        raise InputError(f"{where}: the periodic cell vectors are linearly dependent")
    if r_max is not None:
        heights = _periodic_heights(vectors)
        images = float(np.prod(2 * np.ceil(r_max / np.maximum(heights, 1e-300)) + 1))
        if images > MAX_PERIODIC_IMAGES:
            k = int(np.argmin(heights))
            raise InputError(
                f"{where}: the cell is only {heights[k]:.3g} Å thick along periodic cell "
                f"vector {int(axes[k])}, far below the cutoff r_max = {r_max} Å "
                f"(about {images:.3g} periodic images)"
            )
