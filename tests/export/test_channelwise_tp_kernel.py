"""The LAMMPS plugin's fused message-product kernel (export/pair_style/channelwise_tp.cpp),
built as a library of its own (operators forcefield_native::channelwise_tp, _sum, _vjp), against
the Python implementation (forcefield::channelwise_tp, forcefield/model/fast_tp.py) and
e3nn's TensorProduct: values, the explicit VJP and autograd through the operator to 1e-12 in
float64, float32, gradients by finite differences (gradcheck), equivariance, TorchScript, both
instruction sets (AVX2 and generic), several threads, non-contiguous inputs, bad shapes.
The whole model through the kernel is tested against Python by the LAMMPS tests
(test_lammps_model.py, test_lammps_folding.py: exports call the operators)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
from e3nn import o3
from model_utils import float64_default

from forcefield.model.fast_tp import ChannelwiseTP, channelwise_tp, channelwise_tp_sum, channelwise_tp_vjp
from forcefield.model.interaction import _tp_paths

F64 = torch.float64

# (input irreps, lmax of Y, output irreps): the model's blocks at 16 channels (the kernel's
# unrolled row loops), 5 channels (its generic loops), 32, and lmax 1 and 3
CASES = [
    ("16x0e", 2, "16x0e+16x1o+16x2e"),
    ("16x0e+16x1o+16x2e", 2, "16x0e+16x1o+16x2e"),
    ("5x0e+5x1o+5x2e", 2, "5x0e+5x1o+5x2e"),
    ("32x0e+32x1o+32x2e", 2, "32x0e"),
    ("8x0e+8x1o", 1, "8x0e+8x1o"),
    ("4x0e+4x1o+4x2e+4x3o", 3, "4x0e+4x1o+4x2e+4x3o"),
]
IDS = [f"{c[0].split('+')[0]}-l{c[1]}-{len(c[2].split('+'))}out" for c in CASES]


@pytest.fixture(scope="module")
def native():
    from forcefield.export.plugin import build_native_ops

    torch.ops.load_library(str(build_native_ops()))
    return torch.ops.forcefield_native


@contextmanager
def isa(name):
    before = os.environ.get("FORCEFIELD_KERNEL_ISA")
    os.environ["FORCEFIELD_KERNEL_ISA"] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ["FORCEFIELD_KERNEL_ISA"]
        else:
            os.environ["FORCEFIELD_KERNEL_ISA"] = before


def _pair(case, dtype=F64):
    irreps_in, lmax, target = case
    irreps_in, sh = o3.Irreps(irreps_in), o3.Irreps.spherical_harmonics(lmax)
    mid, ins = _tp_paths(irreps_in, sh, o3.Irreps(target))
    with float64_default():
        tp = o3.TensorProduct(irreps_in, sh, mid, ins, shared_weights=False, internal_weights=False).to(dtype)
    return tp, ChannelwiseTP(tp).to(dtype)


def _inputs(fast, tp, n=37, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tp.irreps_in1.dim, generator=g, dtype=F64).to(dtype)
    y = torch.randn(n, tp.irreps_in2.dim, generator=g, dtype=F64).to(dtype)
    w = torch.randn(n, tp.weight_numel, generator=g, dtype=F64).to(dtype)
    gout = torch.randn(n, fast.k * fast.mul, generator=g, dtype=F64).to(dtype)
    return fast.to_component_major(x), y, w, gout


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("kernel_isa", ["default", "generic"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kernel_matches_python_float64(native, case, kernel_isa):
    tp, fast = _pair(case)
    x, y, w, g = _inputs(fast, tp)
    with isa(kernel_isa):
        out = native.channelwise_tp(x, y, w, fast.cg, fast.path_of_column)
        got = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, True)
        got_no_x = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, False)
    ref = channelwise_tp(x, y, w, fast.cg, fast.path_of_column)
    assert out.shape == ref.shape and rel(out, ref) < 1e-12
    ref_vjp = channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, True)
    for a, b in zip(got, ref_vjp):
        assert a.shape == b.shape and rel(a, b) < 1e-12
    assert got_no_x[0].numel() == 0
    assert rel(got_no_x[1], ref_vjp[1]) < 1e-12 and rel(got_no_x[2], ref_vjp[2]) < 1e-12
    # summed per row (rows in any order, one row unused), and the VJP reading rows in place
    rows = torch.randint(0, 6, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    with isa(kernel_isa):
        summed = native.channelwise_tp_sum(x, y, w, fast.cg, fast.path_of_column, rows, 7)
        g_rows = torch.randn(7, g.shape[1], dtype=F64)
        got_rows = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g_rows, True, rows)
    assert rel(summed, channelwise_tp_sum(x, y, w, fast.cg, fast.path_of_column, rows, 7)) < 1e-12
    assert summed[6].abs().max() == 0
    ref_rows = channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g_rows.index_select(0, rows), True)
    for a, b in zip(got_rows, ref_rows):
        assert rel(a, b) < 1e-12
    # against e3nn itself (the reference of the whole chain)
    x_e3nn = torch.empty_like(x)
    x_e3nn[:, fast.in_perm] = x
    assert rel(fast.to_e3nn_layout(out), tp(x_e3nn, y, w)) < 1e-10


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_autograd_through_the_kernel(native, case):
    """The operator's registered backward (the fused VJP) gives autograd's gradients."""
    tp, fast = _pair(case)
    x, y, w, g = _inputs(fast, tp)
    grads = []
    for f in (native.channelwise_tp, channelwise_tp):
        xs, ys, ws = (t.clone().requires_grad_(True) for t in (x, y, w))
        out = f(xs, ys, ws, fast.cg, fast.path_of_column)
        grads.append(torch.autograd.grad(out, [xs, ys, ws], g))
    for a, b in zip(*grads):
        assert rel(a, b) < 1e-12
    # the sum per row, on one and on two threads (with more edges than one task of the
    # kernel's parallel loop there: messages first, then their sums)
    x, y, w, _ = _inputs(fast, tp, n=300)
    rows = torch.randint(0, 5, (x.shape[0],), generator=torch.Generator().manual_seed(2))
    g_rows = torch.randn(5, g.shape[1], dtype=F64)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            summed = []
            for f in (native.channelwise_tp_sum, channelwise_tp_sum):
                xs, ys, ws = (t.clone().requires_grad_(True) for t in (x, y, w))
                out = f(xs, ys, ws, fast.cg, fast.path_of_column, rows, 5)
                summed.append(torch.autograd.grad(out, [xs, ys, ws], g_rows))
            for a, b in zip(*summed):
                assert rel(a, b) < 1e-12
    finally:
        torch.set_num_threads(before)
    # only some inputs wanting gradients (x does not: no g_x computed, none returned)
    x, y, w, g = _inputs(fast, tp)
    ys, ws = y.clone().requires_grad_(True), w.clone().requires_grad_(True)
    gy, gw = torch.autograd.grad(native.channelwise_tp(x, ys, ws, fast.cg, fast.path_of_column), [ys, ws], g)
    assert rel(gy, grads[1][1]) < 1e-12 and rel(gw, grads[1][2]) < 1e-12


@pytest.mark.parametrize("case", [CASES[1], CASES[2]], ids=[IDS[1], IDS[2]])
def test_gradients_by_finite_differences(native, case):
    tp, fast = _pair(case)
    x, y, w, _ = _inputs(fast, tp, n=3)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, y, w))
    assert torch.autograd.gradcheck(
        lambda a, b, c: native.channelwise_tp(a, b, c, fast.cg, fast.path_of_column), inputs, eps=1e-6, atol=1e-8
    )


def test_equivariance(native):
    tp, fast = _pair(CASES[1])
    x, y, w, _ = _inputs(fast, tp)
    x_e3nn = torch.empty_like(x)
    x_e3nn[:, fast.in_perm] = x
    torch.manual_seed(5)  # a fixed rotation
    with float64_default():  # e3nn builds D in the default dtype
        rot = o3.rand_matrix(dtype=F64)
        d_in, d_sh, d_out = (ir.D_from_matrix(rot) for ir in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out))

    def messages(xe, ye):
        return fast.to_e3nn_layout(
            native.channelwise_tp(fast.to_component_major(xe), ye, w, fast.cg, fast.path_of_column)
        )

    # 1e-10: e3nn's D matrices (through Euler angles) carry ~1e-11 for some rotations
    assert rel(messages(x_e3nn @ d_in.T, y @ d_sh.T), messages(x_e3nn, y) @ d_out.T) < 1e-10


@pytest.mark.parametrize("case", CASES[:2], ids=IDS[:2])
def test_float32(native, case):
    tp, fast = _pair(case, torch.float32)
    x, y, w, g = _inputs(fast, tp, dtype=torch.float32)
    x64, y64, w64, g64 = (t.double() for t in (x, y, w, g))
    cg64 = fast.cg.double()
    out = native.channelwise_tp(x, y, w, fast.cg, fast.path_of_column)
    assert out.dtype == torch.float32
    assert rel(out.double(), channelwise_tp(x64, y64, w64, cg64, fast.path_of_column)) < 1e-5
    got = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, True)
    ref = channelwise_tp_vjp(x64, y64, w64, cg64, fast.path_of_column, g64, True)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and rel(a.double(), b) < 1e-5


def test_threads_and_layouts(native):
    """Several threads give bitwise the same (edges are independent); non-contiguous inputs
    are read right."""
    tp, fast = _pair(CASES[1])
    x, y, w, g = _inputs(fast, tp, n=1000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, True)
        torch.set_num_threads(2)
        two = native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g, True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    xt = x.t().contiguous().t()  # same values, column-major
    wide = torch.cat([w, w], dim=1)[:, : w.shape[1]]  # a strided view
    assert not xt.is_contiguous() and not wide.is_contiguous()
    ref = native.channelwise_tp(x, y, w, fast.cg, fast.path_of_column)
    assert torch.equal(native.channelwise_tp(xt, y, wide, fast.cg, fast.path_of_column), ref)


def test_torchscript_round_trip(native, tmp_path):
    tp, fast = _pair(CASES[0])
    x, y, w, _ = _inputs(fast, tp)

    class Calls(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cg", fast.cg)
            self.register_buffer("poc", fast.path_of_column)

        def forward(self, a, b, c):
            return torch.ops.forcefield_native.channelwise_tp(a, b, c, self.cg, self.poc)

    path = tmp_path / "calls.pt"
    torch.jit.save(torch.jit.script(Calls()), str(path))
    loaded = torch.jit.load(str(path))
    assert torch.equal(loaded(x, y, w), native.channelwise_tp(x, y, w, fast.cg, fast.path_of_column))


def test_bad_shapes_are_refused(native):
    tp, fast = _pair(CASES[1])
    x, y, w, g = _inputs(fast, tp)
    with pytest.raises(RuntimeError, match="channelwise_tp: x's columns"):
        native.channelwise_tp(x[:, :-1], y, w, fast.cg, fast.path_of_column)
    with pytest.raises(RuntimeError, match="one row per edge"):
        native.channelwise_tp(x, y[:-1], w, fast.cg, fast.path_of_column)
    with pytest.raises(RuntimeError, match="one dtype"):
        native.channelwise_tp(x.float(), y, w, fast.cg, fast.path_of_column)
    with pytest.raises(RuntimeError, match="g_out must be"):
        native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g[:, :-1], True)
    rows = torch.zeros(x.shape[0], dtype=torch.long)
    with pytest.raises(RuntimeError, match="row index out of range"):
        native.channelwise_tp_sum(x, y, w, fast.cg, fast.path_of_column, rows + 3, 3)
    with pytest.raises(RuntimeError, match="one row index per edge"):
        native.channelwise_tp_sum(x, y, w, fast.cg, fast.path_of_column, rows[:-1], 3)
    with pytest.raises(RuntimeError, match="row index out of range"):
        native.channelwise_tp_vjp(x, y, w, fast.cg, fast.path_of_column, g[:2], True, rows + 2)
    bad = fast.path_of_column.clone()
    bad[0] = fast.n_paths
    with pytest.raises(RuntimeError, match="path_of_column out of range"):
        native.channelwise_tp(x, y, w, fast.cg, bad)
