"""The many-body product basis (forcefield/model/product.py) and models that use it.

The default model config already has correlation 3, so the symmetry, derivative,
TorchScript and isolation suites run through it; this file checks the block itself against
an independent dense reference, and the whole model at every correlation order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from model_utils import (  # noqa: F401  (one_thread: autouse fixture)
    evaluate,
    float64_default,
    make_model,
    molecule,
    one_thread,
    random_rotation,
    rel_err,
    triclinic_cell,
)

from forcefield.model.forcefield import hidden_irreps
from forcefield.model.product import ProductBasis


@pytest.fixture(autouse=True)
def float64_by_default():
    """The blocks' e3nn constants and the tests' random tensors in float64; torch's default
    dtype is given back after each test (never changed at import time)."""
    with float64_default():
        yield


def _random_block(correlation: int, out_lmax: int, channels: int = 3, seed: int = 0) -> ProductBasis:
    torch.manual_seed(seed)
    irreps_in = hidden_irreps(channels, 2)
    irreps_out = hidden_irreps(channels, out_lmax)
    return ProductBasis(irreps_in, irreps_out, correlation, num_species=2).double()


@pytest.mark.parametrize("correlation", [1, 2, 3, 4])
@pytest.mark.parametrize("out_lmax", [0, 2])
def test_equivariant_under_rotation_and_inversion(correlation, out_lmax):
    block = _random_block(correlation, out_lmax)
    n = 7
    a = block.irreps_in.randn(n, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    rot = torch.tensor(random_rotation(np.random.default_rng(correlation)), dtype=torch.float64)
    for q in (rot, -rot):  # a proper rotation, and the same with an inversion
        d_in = block.irreps_in.D_from_matrix(q)
        d_out = block.irreps_out.D_from_matrix(q)
        lhs = block(a @ d_in.T, species)
        rhs = block(a, species) @ d_out.T
        assert rel_err(lhs.detach(), rhs.detach()) < 1e-12
    assert block(a, species).abs().max() > 1e-3  # not vacuous


def test_matches_dense_clebsch_gordan_reference():
    """Correlation 2, scalar output: B_c = w1 A_c^(0) + sum_l w_l <A_c^(l), A_c^(l)> with the
    weights and normalisation e3nn's TensorProduct uses; checked against a plain einsum."""
    block = _random_block(2, 0, channels=2, seed=3)
    a = block.irreps_in.randn(5, -1, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1, 1])
    got = block(a, species)
    tp = block.orders[0].tp
    w = block.orders[0].weight[species]  # (N, paths * channels)
    ref = block.w1[species][:, 0, :] * a[:, :2]  # linear term on the 0e block
    c = 2
    for k, ins in enumerate(tp.instructions):
        s1 = block.irreps_in.slices()[ins.i_in1]
        s2 = block.irreps_in.slices()[ins.i_in2]
        l1, l2 = block.irreps_in[ins.i_in1].ir.l, block.irreps_in[ins.i_in2].ir.l
        x1 = a[:, s1].reshape(-1, c, 2 * l1 + 1)
        x2 = a[:, s2].reshape(-1, c, 2 * l2 + 1)
        cg = o3.wigner_3j(l1, l2, 0, dtype=torch.float64)[:, :, 0]
        val = torch.einsum("nci,ncj,ij->nc", x1, x2, cg) * ins.path_weight
        ref = ref + w[:, k * c : (k + 1) * c] * val
    ref = ref / np.sqrt(2.0)
    assert rel_err(got.detach(), ref.detach()) < 1e-12


@pytest.mark.parametrize("correlation", [1, 2, 4])
def test_model_at_other_orders_is_invariant_and_conservative(correlation):
    model = make_model(correlation=correlation)
    atoms = triclinic_cell()
    ref = evaluate(model, atoms, virial=True)
    rot = random_rotation(np.random.default_rng(7))
    turned = atoms.copy()
    turned.set_positions(atoms.get_positions() @ rot.T)
    turned.set_cell(atoms.get_cell() @ rot.T)
    out = evaluate(model, turned)
    assert abs(out["energy"][0] - ref["energy"][0]) < 1e-10 * max(1.0, abs(ref["energy"][0]))
    assert rel_err(out["forces"], ref["forces"] @ rot.T) < 1e-10
    # forces = -dE/dx by central differences on one atom
    h = 1e-5
    for axis in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[2, axis] += h
        minus.positions[2, axis] -= h
        fd = -(evaluate(model, plus)["energy"][0] - evaluate(model, minus)["energy"][0]) / (2 * h)
        assert abs(fd - ref["forces"][2, axis]) < 1e-6 * max(1.0, np.abs(ref["forces"]).max())


def test_product_changes_the_model():
    """Correlation 3 is not correlation 1 in disguise: on the same weights of the shared parts
    the energies differ (the product terms carry many-body information)."""
    atoms = molecule()
    e1 = evaluate(make_model(correlation=1), atoms)["energy"][0]
    e3 = evaluate(make_model(correlation=3), atoms)["energy"][0]
    assert abs(e1 - e3) > 1e-3


@pytest.mark.parametrize("correlation", [1, 2, 3, 4])
@pytest.mark.parametrize("out_lmax", [0, 1, 2])
def test_fast_product_matches_e3nn_tensor_products(correlation, out_lmax):
    """forward (grouped GEMMs, component-major) against forward_e3nn (e3nn's TensorProducts
    path by path): values, gradients and second derivatives (training differentiates forces)
    to 1e-12 in float64."""
    block = _random_block(correlation, out_lmax, channels=4, seed=correlation)
    n = 9
    a = block.irreps_in.randn(n, -1, dtype=torch.float64).requires_grad_()
    species = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    ref, got = block.forward_e3nn(a, species), block(a, species)
    assert ref.abs().max() > 0.1
    assert rel_err(got.detach(), ref.detach()) < 1e-12
    g = torch.randn_like(ref)
    params = [a] + list(block.parameters())
    ref_grads = torch.autograd.grad(ref, params, g, create_graph=True)
    grads = torch.autograd.grad(got, params, g, create_graph=True)
    for x, y in zip(grads, ref_grads):
        assert rel_err(x.detach(), y.detach()) < 1e-12
    h_ref = torch.autograd.grad(ref_grads[0].square().sum(), params, allow_unused=True)
    h = torch.autograd.grad(grads[0].square().sum(), params, allow_unused=True)
    for x, y in zip(h, h_ref):
        if y is None:
            assert x is None or x.abs().max() == 0
        else:
            assert rel_err(x, y) < 1e-11


def test_fast_product_float32_and_torchscript():
    block = _random_block(3, 2, channels=4, seed=5).float()
    a = block.irreps_in.randn(6, -1, dtype=torch.float32)
    species = torch.tensor([0, 1, 1, 0, 1, 0])
    ref = block.forward_e3nn(a, species)
    got = block(a, species)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() < 2e-6 * ref.abs().max()
    scripted = torch.jit.script(block)
    assert torch.equal(scripted(a, species), got)
