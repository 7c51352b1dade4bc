"""The model on the GPU against the CPU: eager (plain autograd and the chunked inference
path), exports loaded for the device (GPU-sized chunks), float64 to 1e-10 and float32 to
its round-off; the fused CPU kernel is never called on device tensors (the exports take the
torch path there, the native kernel refuses them with a clear error).

All marked `gpu`: skipped only when no CUDA device is present; FORCEFIELD_TEST_DEVICE=cpu
runs them on CPU (tests/gpu/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_utils import make_model, molecule, triclinic_cell

from forcefield.data.graph import atoms_to_graph, collate

pytestmark = pytest.mark.gpu

KEYS = ("energy", "forces", "node_energy", "virial")


def run_eager(model, atoms_list, device: str, chunk=None):
    """energy, forces, node_energy, virial (numpy float64) of the eager model on `device`;
    chunk: the inference path's edge / node chunk and message pieces (None: the model's)."""
    model = model.to(device)
    if chunk is not None:
        model.edge_chunk, model.node_chunk, model.message_chunk = chunk
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in atoms_list]
    b = collate(graphs, dtype=model.dtype, device=device)
    out = model(
        b["pos"],
        b["species"],
        b["edge_index"],
        b["shifts"],
        b["batch"],
        len(graphs),
        compute_forces=True,
        compute_virial=True,
    )
    assert out["forces"].device.type == torch.device(device).type
    return {k: out[k].detach().to("cpu", torch.float64).numpy() for k in KEYS}


def structures():
    from ase.build import bulk

    alloy = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((3, 3, 2))
    alloy.numbers[::3] = 79
    alloy.rattle(0.1, seed=4)
    return [triclinic_cell(), molecule(), alloy]


@pytest.mark.parametrize("chunk", [None, (64, 16, 8)], ids=["plain-autograd", "inference-chunks"])
def test_eager_model_on_device_matches_cpu_float64(device, chunk):
    """Energy, per-atom energies, forces, virial to 1e-10 (float64), on plain autograd and on
    the inference path in small chunks (more edges than one chunk, so it really runs)."""
    model = make_model("float64", seed=7)
    atoms = structures()
    ref = run_eager(make_model("float64", seed=7), atoms, "cpu", chunk)
    got = run_eager(model, atoms, device, chunk)
    for k in KEYS:
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-10, err_msg=k)
    assert np.abs(ref["forces"]).max() > 0.1 and np.ptp(ref["node_energy"]) > 0.1  # not vacuous


def test_eager_model_on_device_matches_cpu_float32(device):
    """float32: the same to float32 round-off (the device sums in another order)."""
    atoms = structures()
    ref = run_eager(make_model("float32", seed=7), atoms, "cpu")
    got = run_eager(make_model("float32", seed=7), atoms, device)
    ref64 = run_eager(make_model("float64", seed=7), atoms, "cpu")
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(got["energy"], ref["energy"], rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=2e-5 * max(1.0, scale))
    np.testing.assert_allclose(got["forces"], ref64["forces"], rtol=0, atol=2e-4 * max(1.0, scale))


def test_export_loaded_for_device_takes_device_chunks(device, gpu_models, alloy_cell, monkeypatch):
    """load_exported(path, device): GPU-sized chunks on a GPU (the export's own on CPU), the
    same numbers as on CPU to 1e-10 (float64), also with chunks small enough to run the
    inference path over many chunks (FORCEFIELD_EDGE_CHUNK / FORCEFIELD_NODE_CHUNK)."""
    from forcefield.model.deployed import GPU_EDGE_CHUNK, GPU_NODE_CHUNK, load_exported
    from forcefield.model.forcefield import DEFAULT_EDGE_CHUNK, DEFAULT_NODE_CHUNK

    _, atoms = alloy_cell
    module_cpu, meta = load_exported(gpu_models["f64"], "cpu")
    g = atoms_to_graph(atoms, meta["species"], meta["r_max"])
    b = collate([g], dtype=torch.float64)
    args = (b["pos"], b["species"], b["edge_index"], b["shifts"], len(atoms))
    with torch.jit.optimized_execution(False):  # as the pair style and the calculator run exports
        ref = [t.detach().numpy() for t in module_cpu(*args)]
    assert (module_cpu.model.edge_chunk, module_cpu.model.node_chunk) == (DEFAULT_EDGE_CHUNK, DEFAULT_NODE_CHUNK)

    def on_device():
        module, _ = load_exported(gpu_models["f64"], device)
        with torch.jit.optimized_execution(False):
            out = module(*[a.to(device) if torch.is_tensor(a) else a for a in args])
        assert out[2].device.type == torch.device(device).type
        return module, [t.detach().cpu().numpy() for t in out]

    module, got = on_device()
    if device.startswith("cuda"):
        assert (module.model.edge_chunk, module.model.node_chunk) == (GPU_EDGE_CHUNK, GPU_NODE_CHUNK)
        assert module.model.message_chunk == module.model.edge_chunk
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-10)

    monkeypatch.setenv("FORCEFIELD_EDGE_CHUNK", "300")
    monkeypatch.setenv("FORCEFIELD_NODE_CHUNK", "40")
    module, got = on_device()
    assert (module.model.edge_chunk, module.model.node_chunk) == (300, 40)
    assert b["edge_index"].shape[1] > 4 * 300
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-10)


def _fused_op_calls(module, args) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.jit.optimized_execution(False):
        module(*args)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("forcefield::channelwise_tp"))


def test_fused_kernel_is_not_called_on_device_tensors(device, gpu_models, alloy_cell):
    """An export with the fused operators calls them on CPU only: on a GPU its message
    products take the plain torch path (no forcefield::channelwise_tp call at all) and give
    the portable export's numbers; the plugin's native kernel itself refuses device tensors
    with a clear error ("this kernel is for CPU tensors")."""
    from forcefield.export.plugin import build_native_ops
    from forcefield.model.deployed import load_exported

    _, atoms = alloy_cell
    fused, meta = load_exported(gpu_models["f64"], device)
    portable, _ = load_exported(gpu_models["portable"], device)
    g = atoms_to_graph(atoms, meta["species"], meta["r_max"])
    b = collate([g], dtype=torch.float64, device=device)
    args = (b["pos"], b["species"], b["edge_index"], b["shifts"], len(atoms))
    calls = _fused_op_calls(fused, args)
    if device.startswith("cuda"):
        assert calls == 0
    else:
        assert calls > 0  # the check itself is not vacuous: on CPU the operators are called
    assert _fused_op_calls(portable, args) == 0
    with torch.jit.optimized_execution(False):  # as the pair style and the calculator run exports
        for a, r in zip(fused(*args), portable(*args)):
            torch.testing.assert_close(a, r, rtol=0, atol=1e-10)

    # the native kernel (what the plugin runs) on device tensors: refused. (On CPU it is
    # tested against Python by tests/export/test_channelwise_tp_kernel.py.)
    if device.startswith("cuda"):
        torch.ops.load_library(str(build_native_ops()))
        tp = make_model("float64", seed=7).layers[0].tp_fast
        gen = torch.Generator().manual_seed(0)
        x, y, w = (
            torch.randn(5, cols, generator=gen, dtype=torch.float64).to(device)
            for cols in (tp.d1 * tp.mul, tp.cg.shape[0], tp.n_paths * tp.mul)
        )
        cg, poc = tp.cg.to(device), tp.path_of_column.to(device)
        torch.ops.forcefield.channelwise_tp(x, y, w, cg, poc)  # Python's runs on any device
        with pytest.raises(RuntimeError, match="this kernel is for CPU tensors"):
            torch.ops.forcefield_native.channelwise_tp(x, y, w, cg, poc)
