"""No NaN or inf in energy, forces, or the parameter gradient of a force loss (second
derivatives, as training takes them) for the hard cases of the isolation switch
(docs/design.md, section "Isolation switch"): an isolated atom,
two atoms at the same position, one far neighbour, tau = 0.05 Å; float32 and float64."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
from ase import Atoms
from model_utils import (
    R_MAX,
    make_model,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
)

from forcefield.data.graph import atoms_to_graph, collate

CASES = {
    "isolated_atom": Atoms("Cu", positions=[[0.1, 0.2, 0.3]]),
    "coincident_pair": Atoms("CuAu", positions=[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
    "coincident_same_species": Atoms("OO", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    "coincident_in_molecule": Atoms("CuCuOH", positions=[[0, 0, 0], [0, 0, 0], [1.9, 0, 0], [0, 1.0, 0.3]]),
    "coincident_in_cell": Atoms(
        "CuCu",
        positions=[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        cell=[[3.0, 0, 0], [0.5, 3.1, 0], [0.2, 0.4, 3.3]],
        pbc=True,
    ),
    "far_neighbour": Atoms("CuAu", positions=[[0, 0, 0], [0.999 * R_MAX, 0, 0]]),
    "barely_inside": Atoms("CuAu", positions=[[0, 0, 0], [R_MAX * (1 - 1e-6), 0, 0]]),
    "ramp_neighbour": Atoms("HO", positions=[[0, 0, 0], [3.7, 0.1, 0]]),
    "near_and_far": Atoms("CuAuAu", positions=[[0, 0, 0], [2.3, 0, 0], [0, 0.998 * R_MAX, 0]]),
    "very_close": Atoms("HH", positions=[[0, 0, 0], [1e-7, 0, 0]]),
}


@lru_cache(maxsize=None)
def _model(dtype: str, tau: float, seed: int = 41):
    """One randomised model per (dtype, tau) for the whole module (building one costs ~0.5 s)."""
    model = make_model(dtype, seed=seed, switch={"tau": tau})
    model.train()
    return model


def _check_finite(model, structures):
    graphs = [atoms_to_graph(a, model.species, model.r_max, min_distance=None) for a in structures]
    b = collate(graphs, dtype=model.dtype)
    model.zero_grad(set_to_none=True)
    out = model(
        b["pos"],
        b["species"],
        b["edge_index"],
        b["shifts"],
        b["batch"],
        len(graphs),
        compute_forces=True,
        compute_virial=True,
        create_graph=True,
    )
    for key in ("energy", "node_energy", "forces", "virial", "switch"):
        assert torch.isfinite(out[key]).all(), key
    target = torch.ones_like(out["forces"])
    loss = ((out["forces"] - target) ** 2).mean() + (out["energy"] ** 2).mean() + (out["virial"] ** 2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), f"non-finite gradient of {name}"
    return out, grads


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tau", [0.1, 0.05])
@pytest.mark.parametrize("case", CASES)
def test_finite_everywhere(dtype, tau, case):
    out, grads = _check_finite(_model(dtype, tau), [CASES[case]])
    if case != "isolated_atom":
        assert len(grads) > 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finite_in_one_batch_with_tiny_tau(dtype):
    """All cases in one batch, tau = 0.05; the gradients are finite and not all zero."""
    out, grads = _check_finite(_model(dtype, 0.05), list(CASES.values()))
    assert any(float(g.abs().max()) > 0 for g in grads.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_coincident_atoms_symmetric(dtype):
    """Two atoms of one species at the same place: equal energies, equal and opposite
    (here: zero by symmetry) forces, nothing blows up."""
    model = _model(dtype, 0.1)
    g = atoms_to_graph(CASES["coincident_same_species"], model.species, model.r_max, min_distance=None)
    b = collate([g], dtype=model.dtype)
    out = model(b["pos"], b["species"], b["edge_index"], b["shifts"], b["batch"], 1)
    ne = out["node_energy"].detach().numpy()
    assert ne[0] == pytest.approx(ne[1])
    assert np.abs(out["forces"].detach().numpy()).max() < 1e-3
