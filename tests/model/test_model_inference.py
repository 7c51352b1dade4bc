"""The inference path (eval mode, create_graph False: forward without a graph, then block by
block recomputation of edge chunks) gives what plain autograd gives: energies, per-atom
energies, forces and virials to 1e-10 in float64, with any chunk size, with the LAMMPS
ghost pruning (n_local), in batches, in float32, and after TorchScript."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn.util.jit import script
from model_utils import call_model, fcc_cu, make_model, molecule, one_thread, triclinic_cell  # noqa: F401

from forcefield.data.graph import atoms_to_graph, collate

KEYS = ("energy", "node_energy", "forces", "virial")


def _run(model, batch, num_graphs, n_local=-1, training_path=False):
    model.train(training_path)
    out = call_model(model, batch, num_graphs, n_local=n_local, compute_virial=True)
    model.eval()
    return {k: out[k].detach().double().numpy() for k in KEYS}


def _batch(model, structures):
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in structures]
    return collate(graphs, dtype=model.dtype), len(graphs)


def _assert_same(a, b, rtol):
    for k in KEYS:
        scale = max(1.0, float(np.abs(a[k]).max()))
        err = float(np.abs(a[k] - b[k]).max())
        assert err <= rtol * scale, (k, err, scale)


@pytest.fixture(scope="module")
def structures():
    alloy = fcc_cu(repeat=(2, 2, 2), cubic=True)
    alloy.symbols[[1, 6, 11]] = "Au"
    alloy.rattle(0.1, seed=3)
    return [triclinic_cell(), molecule(), alloy, Atoms("Cu", cell=np.eye(3) * 2.6, pbc=True)]


@pytest.mark.parametrize("correlation", [1, 3])
@pytest.mark.parametrize("chunk", [1, 7, 100000])
def test_inference_path_equals_autograd(structures, correlation, chunk):
    model = make_model(correlation=correlation, seed=correlation)
    batch, n = _batch(model, structures)
    reference = _run(model, batch, n, training_path=True)
    assert np.abs(reference["forces"]).max() > 1e-2  # nothing passes vacuously
    model.edge_chunk = chunk  # 100000: more than the edges, so plain autograd
    model.node_chunk = chunk  # node updates in chunks of 1 and 7 atoms too
    model.message_chunk = 3  # message products in pieces of 3 edges within a chunk
    _assert_same(_run(model, batch, n), reference, 1e-10)
    model.edge_chunk = 0  # 0: plain autograd in eval mode too
    _assert_same(_run(model, batch, n), reference, 1e-12)


def test_inference_path_with_ghost_pruning():
    """n_local as LAMMPS calls it: the first atoms carry energy, the rest are ghosts."""
    model = make_model(num_layers=3, seed=5)
    atoms = fcc_cu(repeat=(3, 3, 3), cubic=True)
    atoms.rattle(0.1, seed=1)
    atoms.pbc = False  # the outer atoms play the ghosts
    batch, n = _batch(model, [atoms])
    reference = _run(model, batch, n, n_local=20, training_path=True)
    model.edge_chunk, model.node_chunk, model.message_chunk = 13, 10, 5
    _assert_same(_run(model, batch, n, n_local=20), reference, 1e-10)


def test_inference_path_float32():
    model = make_model(dtype="float32", seed=2)
    batch, n = _batch(model, [triclinic_cell()])
    reference = _run(model, batch, n, training_path=True)
    model.edge_chunk = 5
    _assert_same(_run(model, batch, n), reference, 2e-5)


def test_inference_path_scripted(tmp_path):
    model = make_model(seed=4)
    model.edge_chunk, model.node_chunk, model.message_chunk = 11, 6, 4
    batch, n = _batch(model, [triclinic_cell(), molecule()])
    eager = _run(model, batch, n)
    scripted = script(model)
    scripted.save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    out = call_model(loaded, batch, n, compute_virial=True)
    _assert_same({k: out[k].detach().double().numpy() for k in KEYS}, eager, 1e-12)


def test_inference_path_keeps_no_graph():
    """Inference outputs are plain tensors: no autograd graph over the model is kept alive."""
    model = make_model(seed=6)
    model.edge_chunk = 16
    batch, n = _batch(model, [triclinic_cell()])
    out = call_model(model, batch, n, compute_virial=True)
    assert all(out[k].grad_fn is None for k in KEYS)


def test_loaded_exports_match_the_thread_count(tmp_path):
    """An export's message pieces are set by whoever loads it (TorchScript cannot read the
    thread count): pieces on one CPU thread, whole edge chunks on several; the calculator
    follows a later change of the thread count."""
    from forcefield.calculator import make_runner
    from forcefield.export.torchscript import export_model
    from forcefield.model.deployed import load_exported
    from forcefield.model.forcefield import DEFAULT_MESSAGE_CHUNK

    path = export_model(make_model(seed=3), tmp_path / "m.pt")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        module, _ = load_exported(path)
        assert module.model.message_chunk == DEFAULT_MESSAGE_CHUNK
        torch.set_num_threads(2)
        module, _ = load_exported(path)
        assert module.model.message_chunk == module.model.edge_chunk
        runner = make_runner(path)
        torch.set_num_threads(1)
        batch, n = _batch(make_model(seed=3), [triclinic_cell()])
        runner(batch["pos"], batch["species"], batch["edge_index"], batch["shifts"], False)
        assert runner.module.model.message_chunk == DEFAULT_MESSAGE_CHUNK
    finally:
        torch.set_num_threads(before)


def test_message_pieces_only_on_one_thread():
    """Eager models split the message product into pieces of message_chunk edges on one
    thread only; with several threads they take whole chunks (forcefield.py,
    DEFAULT_MESSAGE_CHUNK)."""
    model = make_model(seed=1)
    model.message_chunk = 7
    assert model._message_piece(4096) == 7
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert model._message_piece(4096) == 4096
        torch.set_num_threads(1)
        assert model._message_piece(4096, on_cpu=False) == 4096  # a GPU takes whole chunks
    finally:
        torch.set_num_threads(before)
