"""Shared helpers of tests/test_model_*.py: tiny models with randomised weights, structures,
and one-call evaluation of an ase.Atoms through the graph code.

Every test model has all of its weights re-drawn (torch.randn under a seed: e3nn's layers
already divide by sqrt(fan-in), and a smaller std, e.g. 0.3, shrinks the signal through the
normalised layers so much that forces come out ~1e-5 eV/Å), a
nonzero random per-species shift, scale and E0, so that a zero-initialised readout (or a
model that ignores geometry) cannot pass a test vacuously.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from forcefield import ForceField
from forcefield.data.graph import atoms_to_graph, collate

SPECIES = ["H", "C", "O", "Cu", "Au"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run each test module of the model on one intra-op thread (restored afterwards).

    The tensors here are tiny; with 2 OpenMP threads on a 2-core machine that is also busy
    with something else, every small op can wait milliseconds for a descheduled worker
    (measured: 600 ms instead of 5 ms per call). Import this into a test module to use it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def float64_default():
    """torch's default dtype float64 inside (e3nn builds its constants, e.g. Wigner 3j
    symbols and rotation matrices, in the default dtype)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


R_MAX = 5.0


def randomize(model: ForceField, seed: int = 0, weight_std: float = 1.0) -> ForceField:
    """Re-draw every parameter, shift, scale and E0 under `seed` (in place; returns model)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("radial_basis.freqs"):
                # keep the Bessel frequencies O(pi / r_max) (near-zero ones make every radial
                # function constant), but perturb them like the rest
                p.mul_((1.0 + 0.2 * randn(p.shape)).to(p.dtype))
            else:
                p.copy_((weight_std * randn(p.shape)).to(p.dtype))
        n = len(model.species)
        model.shift.copy_((-3.0 + randn(n)).to(model.shift.dtype))
        model.e0.copy_((-2.0 + randn(n)).to(model.e0.dtype))
        model.scale.fill_(0.7 + 0.5 * float(torch.rand(1, generator=g)))
    return model


def make_model(
    dtype: str = "float64",
    seed: int = 0,
    species: Sequence[str] = SPECIES,
    channels: int = 8,
    lmax: int = 2,
    num_layers: int = 2,
    r_max: float = R_MAX,
    switch: Optional[dict] = None,
    **extra,
) -> ForceField:
    cfg = {
        "species": list(species),
        "r_max": r_max,
        "channels": channels,
        "lmax": lmax,
        "num_layers": num_layers,
        "dtype": dtype,
        "num_basis": 8,
        "radial_hidden": 16,
    }
    if switch is not None:
        cfg["switch"] = switch
    cfg.update(extra)
    model = ForceField.from_config(cfg, {"avg_num_neighbors": 8.0})
    randomize(model, seed)
    model.eval()
    return model


def call_model(model: ForceField, b: dict, num_graphs: int, **kwargs) -> Dict[str, torch.Tensor]:
    """The model on a collated batch `b` (forces on; keyword arguments of forward pass through)."""
    kwargs.setdefault("compute_forces", True)
    return model(b["pos"], b["species"], b["edge_index"], b["shifts"], b["batch"], num_graphs, **kwargs)


def evaluate(model: ForceField, atoms_list, virial: bool = False) -> Dict[str, np.ndarray]:
    """Batch-evaluate a list of Atoms (or one Atoms) in the model's dtype.

    Returns numpy float64: energy (B,), forces (N,3) concatenated, node_energy (N,),
    switch (N,), and stress (B,3,3) = -virial / V when `virial` (periodic cells only).
    """
    single = isinstance(atoms_list, Atoms)
    if single:
        atoms_list = [atoms_list]
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in atoms_list]
    b = collate(graphs, dtype=model.dtype)
    out = call_model(model, b, len(graphs), compute_virial=virial)
    res = {k: out[k].detach().double().numpy() for k in ("energy", "forces", "node_energy", "switch")}
    if virial:
        vol = np.array([a.get_volume() if a.pbc.all() else np.nan for a in atoms_list])
        res["stress"] = -out["virial"].detach().double().numpy() / vol[:, None, None]
    return res


def energy_of(model: ForceField, atoms: Atoms) -> float:
    return float(evaluate(model, atoms)["energy"][0])


# ---------------------------------------------------------------- structures
def random_positions(n: int, box: np.ndarray, rng: np.random.Generator, min_dist: float, periodic: bool) -> np.ndarray:
    """Random points in the cell `box` (rows = cell vectors) at least `min_dist` apart
    (minimum image over the 27 neighbouring cells when periodic)."""
    inv = np.linalg.inv(box)
    images = (
        np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)]) @ box
        if periodic
        else np.zeros((1, 3))
    )
    pts = []
    while len(pts) < n:
        x = rng.random(3) @ box
        ok = True
        for p in pts:
            d = x - p
            if periodic:
                d = d - np.round(d @ inv) @ box
            if np.min(np.linalg.norm(d + images, axis=1)) < min_dist:
                ok = False
                break
        if ok:
            pts.append(x)
    return np.array(pts)


def triclinic_cell(seed: int = 1) -> Atoms:
    """A periodic triclinic Cu/Au/O cell smaller than 2 r_max (many periodic images)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[5.3, 0.0, 0.0], [1.4, 5.1, 0.0], [0.8, 1.2, 5.6]])
    pos = random_positions(9, cell, rng, 2.0, periodic=True)
    symbols = ["Cu", "Au", "Cu", "O", "Au", "Cu", "Cu", "Au", "O"]
    return Atoms(symbols, positions=pos, cell=cell, pbc=True)


def molecule(seed: int = 2) -> Atoms:
    """A non-periodic random H/C/O/Cu cluster, no cell, plus one Au atom 0.82 r_max from
    its nearest neighbour: inside the isolation switch's ramp (0 < s < 1 with the defaults)."""
    rng = np.random.default_rng(seed)
    pos = random_positions(8, np.eye(3) * 4.0, rng, 1.0, periodic=False)
    direction = np.array([0.6, -0.48, 0.64])
    far = pos.mean(axis=0) + direction * 2.0
    while np.min(np.linalg.norm(pos - far, axis=1)) < 0.82 * R_MAX:
        far = far + 0.01 * direction
    return Atoms(["C", "C", "O", "H", "H", "H", "Cu", "O", "Au"], positions=np.vstack([pos, far]))


def fcc_cu(a: float = 3.61, repeat=(1, 1, 1), cubic: bool = False) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=cubic).repeat(repeat)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
