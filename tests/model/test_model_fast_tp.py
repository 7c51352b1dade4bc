"""ChannelwiseTP (forcefield/model/fast_tp.py) against e3nn's TensorProduct it replaces:
values and gradients to 1e-12 in float64, float32, equivariance, TorchScript, and every
block of the model built with it."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from model_utils import float64_default, make_model, one_thread  # noqa: F401

from forcefield.model.fast_tp import ChannelwiseTP
from forcefield.model.interaction import _tp_paths

F64 = torch.float64

CASES = [
    ("8x0e", 2, "8x0e+8x1o+8x2e"),  # first block: scalars in
    ("8x0e+8x1o+8x2e", 2, "8x0e+8x1o+8x2e"),  # hidden -> hidden (product basis input)
    ("8x0e+8x1o+8x2e", 2, "8x0e"),  # last block of the two-body model
    ("4x0e+4x1o", 1, "4x0e+4x1o"),  # lmax 1
    ("4x0e+4x1o+4x2e+4x3o", 3, "4x0e+4x1o+4x2e+4x3o"),  # lmax 3
    ("8x0e+8x1o+8x2e", 2, "1x1o"),  # the DeNS noise head's output
]


def _pair(irreps_in: str, lmax: int, target: str, dtype=F64):
    """(e3nn product, ChannelwiseTP). e3nn's Wigner 3j constants are made in torch's default
    dtype, so the reference is built under a float64 default (under float32 they would be
    float32-rounded: 1e-8 relative)."""
    irreps_in, sh = o3.Irreps(irreps_in), o3.Irreps.spherical_harmonics(lmax)
    mid, ins = _tp_paths(irreps_in, sh, o3.Irreps(target))
    with float64_default():
        tp = o3.TensorProduct(irreps_in, sh, mid, ins, shared_weights=False, internal_weights=False).to(dtype)
    return tp, ChannelwiseTP(tp).to(dtype)


def _messages(fast, x, y, w):
    """ChannelwiseTP's messages from e3nn-layout inputs, in e3nn's layout."""
    return fast.to_e3nn_layout(fast(fast.to_component_major(x), y, w))


def _inputs(tp, n=23, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, tp.irreps_in1.dim, generator=g, dtype=F64).to(dtype)
    y = torch.randn(n, tp.irreps_in2.dim, generator=g, dtype=F64).to(dtype)
    w = torch.randn(n, tp.weight_numel, generator=g, dtype=F64).to(dtype)
    return x, y, w


@pytest.mark.parametrize("case", CASES, ids=[f"{a}x{b}->{c}" for a, b, c in CASES])
def test_matches_e3nn_values_and_gradients(case):
    tp, fast = _pair(*case)
    x, y, w = (t.requires_grad_() for t in _inputs(tp))
    ref, out = tp(x, y, w), _messages(fast, x, y, w)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max() < 1e-12 * ref.abs().max()
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, y, w], g, create_graph=True)
    grads = torch.autograd.grad(out, [x, y, w], g, create_graph=True)
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max() < 1e-12 * b.abs().max()
    # second derivatives (training differentiates forces)
    h_ref = torch.autograd.grad(sum((t * t).sum() for t in ref_grads), [x, y, w])
    h = torch.autograd.grad(sum((t * t).sum() for t in grads), [x, y, w])
    for a, b in zip(h, h_ref):
        assert (a - b).abs().max() < 1e-11 * b.abs().max()


@pytest.mark.parametrize("case", CASES, ids=[f"{a}x{b}->{c}" for a, b, c in CASES])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_explicit_vjp_matches_autograd_of_e3nn(case, dtype):
    """vjp() (the inference path's backward) against autograd through e3nn's product, with
    the layouts mapped back (gradients of component-major inputs are permuted columns)."""
    tp, fast = _pair(*case, dtype=dtype)
    x, y, w = (t.requires_grad_() for t in _inputs(tp, dtype=dtype))
    ref = tp(x, y, w)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, y, w], g)
    g_cm = torch.zeros(x.shape[0], fast.k * fast.mul, dtype=dtype)
    g_cm[:, fast.perm] = g
    xc = fast.to_component_major(x.detach())
    g_xc, g_y, g_w = fast.vjp(xc, y.detach(), w.detach(), g_cm)
    g_x = torch.zeros_like(x)
    g_x[:, fast.in_perm] = g_xc
    tol = 1e-12 if dtype == F64 else 2e-6
    for a, b in zip((g_x, g_y, g_w), ref_grads):
        assert b.abs().max() > 0.1
        assert (a - b).abs().max() < tol * b.abs().max()
    assert fast.vjp(xc, y.detach(), w.detach(), g_cm, need_x=False)[0].numel() == 0


def test_float32():
    tp, fast = _pair("8x0e+8x1o+8x2e", 2, "8x0e+8x1o+8x2e", dtype=torch.float32)
    x, y, w = _inputs(tp, dtype=torch.float32)
    ref = tp(x, y, w)
    assert (_messages(fast, x, y, w) - ref).abs().max() < 2e-6 * ref.abs().max()


def test_equivariant():
    tp, fast = _pair("8x0e+8x1o+8x2e", 2, "8x0e+8x1o+8x2e")
    x, y, w = _inputs(tp)
    torch.manual_seed(3)
    with float64_default():  # Wigner D matrices in float64
        rot = o3.rand_matrix()
        d_in, d_sh, d_out = (irreps.D_from_matrix(rot) for irreps in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out))
    out = _messages(fast, x @ d_in.T, y @ d_sh.T, w)
    expected = _messages(fast, x, y, w) @ d_out.T
    assert (out - expected).abs().max() < 1e-12 * expected.abs().max()


def test_torchscript():
    tp, fast = _pair("8x0e+8x1o+8x2e", 2, "8x0e")
    x, y, w = _inputs(tp)
    scripted = torch.jit.script(fast)
    xc = fast.to_component_major(x)
    assert torch.equal(scripted(xc, y, w), fast(xc, y, w))
    g = torch.randn(x.shape[0], fast.k * fast.mul, dtype=F64)
    for a, b in zip(scripted.vjp(xc, y, w, g), fast.vjp(xc, y, w, g)):
        assert torch.equal(a, b)


def test_unsupported_product_is_refused():
    irreps = o3.Irreps("4x0e+4x1o")
    tp = o3.TensorProduct(
        irreps, irreps, "4x0e", [(0, 0, 0, "uvu", True)], shared_weights=False, internal_weights=False
    )
    with pytest.raises(ValueError, match="ChannelwiseTP"):
        ChannelwiseTP(tp)


@pytest.mark.parametrize("correlation", [1, 3])
def test_every_block_of_the_model_matches_e3nn(correlation):
    """Each block's messages through the model's own ChannelwiseTP equal its e3nn product
    (built under torch's float32 default like the model, so its constants are float32-
    rounded: agreement to 1e-7 here; the exact comparison is the test above)."""
    model = make_model(correlation=correlation, seed=7)
    for layer in model.layers:
        x, y, w = _inputs(layer.tp, seed=correlation)
        ref = layer.tp(x, y, w)
        out = _messages(layer.tp_fast, x, y, w)
        assert (out - ref).abs().max() < 1e-7 * ref.abs().max()
