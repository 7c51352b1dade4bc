"""Plain autograd in use (eval mode, create_graph False, graphs of one chunk): the radial MLPs
run once per distinct edge length in forward mode and enter as w(r0) + w'(r0) (r - r0)
(ForceField.node_energies, first_order). Same energies, per-atom energies, forces and
virials as the training path to 1e-10 in float64, also where unrelated edges share a
length bitwise (a perfect lattice) and with LAMMPS' ghost pruning; second derivatives
(create_graph) are those of the full model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_utils import call_model, fcc_cu, make_model, molecule, one_thread, triclinic_cell  # noqa: F401

from forcefield.data.graph import atoms_to_graph, collate

KEYS = ("energy", "node_energy", "forces", "virial")


def _outputs(model, atoms_list, training_path=False, shared=True, n_local=-1):
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in atoms_list]
    b = collate(graphs, dtype=model.dtype)
    model.train(training_path)
    model.shared_radial = shared
    try:
        out = call_model(model, b, len(graphs), n_local=n_local, compute_virial=True)
    finally:
        model.eval()
        model.shared_radial = True
    return {k: out[k].detach().double().numpy() for k in KEYS}


def _assert_same(a, b, rtol=1e-10):
    for k in KEYS:
        scale = max(1.0, float(np.abs(a[k]).max()))
        err = float(np.abs(a[k] - b[k]).max())
        assert err <= rtol * scale, (k, err, scale)


def _perfect_lattice():
    """An FCC alloy without rattling: dozens of unrelated edges per distinct length."""
    atoms = fcc_cu(repeat=(2, 2, 2), cubic=True)
    atoms.symbols[[1, 6, 11]] = "Au"
    return atoms


@pytest.mark.parametrize("correlation", [1, 3])
def test_first_order_equals_training_path(correlation):
    model = make_model(correlation=correlation, seed=7 + correlation)
    model.edge_chunk = 0  # plain autograd at every size
    rattled = _perfect_lattice()
    rattled.rattle(0.05, seed=4)
    structures = [_perfect_lattice(), rattled, triclinic_cell(), molecule()]
    reference = _outputs(model, structures, training_path=True)
    assert np.abs(reference["forces"]).max() > 1e-2  # nothing passes vacuously
    _assert_same(_outputs(model, structures), reference)
    _assert_same(_outputs(model, structures, shared=False), reference)


def test_perfect_lattice_shares_lengths_across_unrelated_edges():
    """The case the Taylor form exists for: far fewer distinct lengths than edge pairs,
    and the forces (which vanish by symmetry only on the pure lattice) still right."""
    model = make_model(seed=3)
    atoms = _perfect_lattice()
    graph = collate([atoms_to_graph(atoms, model.species, model.r_max)], dtype=model.dtype)
    pos, edge_index, shifts = graph["pos"], graph["edge_index"], graph["shifts"]
    r = (pos[edge_index[1]] - pos[edge_index[0]] + shifts).norm(dim=-1)
    assert torch.unique(r).numel() * 10 < edge_index.shape[1] // 2
    reference = _outputs(model, [atoms], training_path=True)
    assert np.abs(reference["forces"]).max() > 1e-3  # the Au atoms break the symmetry
    _assert_same(_outputs(model, [atoms]), reference)


def test_first_order_with_ghost_pruning():
    model = make_model(num_layers=3, seed=5)
    model.edge_chunk = 0
    atoms = fcc_cu(repeat=(3, 3, 3), cubic=True)
    atoms.pbc = False  # the outer atoms play LAMMPS' ghosts; unrattled: many equal lengths
    reference = _outputs(model, [atoms], training_path=True, n_local=20)
    _assert_same(_outputs(model, [atoms], n_local=20), reference)


def test_first_order_float32_and_scripted(tmp_path):
    from e3nn.util.jit import script

    model = make_model(dtype="float32", seed=2)
    structures = [_perfect_lattice(), triclinic_cell()]
    reference = _outputs(model, structures, training_path=True)
    _assert_same(_outputs(model, structures), reference, 2e-5)
    path = tmp_path / "m.pt"
    script(model).save(str(path))
    loaded = torch.jit.load(str(path))
    assert loaded.shared_radial
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in structures]
    out = call_model(loaded, collate(graphs, dtype=model.dtype), len(graphs), compute_virial=True)
    _assert_same({k: out[k].detach().double().numpy() for k in KEYS}, reference, 2e-5)


def test_create_graph_keeps_full_second_derivatives():
    """With create_graph the radial MLPs are differentiated in full: d(force)/d(position)
    matches central differences of the forces (the Taylor form would drop w'')."""
    model = make_model(seed=11)
    atoms = triclinic_cell()
    graph = collate([atoms_to_graph(atoms, model.species, model.r_max)], dtype=model.dtype)
    pos = graph["pos"].clone().requires_grad_(True)
    out = model(pos, graph["species"], graph["edge_index"], graph["shifts"], graph["batch"], 1, create_graph=True)
    atom, axis = 1, 0
    row = torch.autograd.grad(out["forces"][atom, axis], pos)[0]

    def forces(p):
        o = model(p, graph["species"], graph["edge_index"], graph["shifts"], graph["batch"], 1)
        return o["forces"].detach()

    h = 1e-5
    fd = torch.zeros_like(row)
    for j in range(pos.shape[0]):
        for c in range(3):
            plus, minus = graph["pos"].clone(), graph["pos"].clone()
            plus[j, c] += h
            minus[j, c] -= h
            fd[j, c] = (forces(plus)[atom, axis] - forces(minus)[atom, axis]) / (2 * h)
    assert float(row.abs().max()) > 1e-2
    assert torch.allclose(row, fd, atol=1e-6 * max(1.0, float(row.abs().max()))), float((row - fd).abs().max())


def test_parameter_gradients_of_the_energy_unchanged():
    """Gradients of the energy with respect to the weights (e.g. for a user's own fitting
    loop in eval mode) are those of the full model, the radial MLPs' included."""
    model = make_model(seed=13)
    model.edge_chunk = 0
    atoms = _perfect_lattice()
    atoms.rattle(0.05, seed=2)
    b = collate([atoms_to_graph(atoms, model.species, model.r_max)], dtype=model.dtype)
    grads = {}
    for shared in (False, True):
        model.shared_radial = shared
        model.zero_grad()
        out = call_model(model, b, 1, compute_forces=False)  # the energy's graph only
        out["energy"].sum().backward()
        grads[shared] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.shared_radial = True
    radial = [n for n in grads[False] if ".radial." in n]
    assert radial and set(grads[True]) == set(grads[False])
    for n, g in grads[False].items():
        assert torch.allclose(grads[True][n], g, rtol=1e-10, atol=1e-12), n
