"""The pieces the inference path uses to differentiate the radial MLP in forward mode
(forcefield/model/forcefield.py, `_inference`): d/dr of the Bessel basis and of the
envelope, and Interaction.radial_jvp, each against autograd in float64."""

from __future__ import annotations

import pytest
import torch
from model_utils import make_model

from forcefield.model.radial import BesselBasis, PolynomialEnvelope

F64 = torch.float64


def _r(r_max: float) -> torch.Tensor:
    # across the cutoff too: beyond it the envelope and its derivative are exactly 0
    return torch.linspace(0.05, 1.2 * r_max, 301, dtype=F64).requires_grad_()


@pytest.mark.parametrize("p", [5, 6])
def test_envelope_derivative(p):
    env = PolynomialEnvelope(4.0, p=p)
    r = _r(4.0)
    (ref,) = torch.autograd.grad(env(r).sum(), r)
    got = env.derivative(r.detach())
    assert ref.abs().max() > 0.1
    assert (got - ref).abs().max() < 1e-12
    assert torch.all(got[r.detach() >= 4.0] == 0)


def test_bessel_derivative():
    basis = BesselBasis(5.0, num_basis=8).double()
    r = _r(5.0)
    out = basis(r)
    ref = torch.stack([torch.autograd.grad(out[:, k].sum(), r, retain_graph=True)[0] for k in range(8)], dim=1)
    got = basis.derivative(r.detach())
    assert (got - ref).abs().max() < 1e-12 * ref.abs().max()


@pytest.mark.parametrize("correlation", [1, 3])
def test_radial_jvp_matches_the_mlp_and_autograd(correlation):
    model = make_model(correlation=correlation, seed=11)
    assert model.dtype == F64
    r = torch.linspace(0.5, model.r_max * 1.1, 97, dtype=F64)
    x, dx = model._radial_input(r)
    for block in model.layers:
        w, dw = block.radial_jvp(x, dx)
        assert (w - block.radial(x)).abs().max() < 1e-12 * w.abs().max()
        # d/dr of the whole radial chain (basis x envelope -> MLP) by autograd, per output
        rr = r.clone().requires_grad_()
        w_r = block.radial(model.radial_basis(rr) * model.envelope(rr).unsqueeze(-1))
        g = torch.randn_like(w_r)
        (ref,) = torch.autograd.grad(w_r, rr, g)
        assert ref.abs().max() > 1e-3
        assert ((dw * g).sum(dim=1) - ref).abs().max() < 1e-11 * ref.abs().max()
