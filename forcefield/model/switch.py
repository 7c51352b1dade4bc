"""Smooth-min isolation switch (docs/design.md, section "Isolation switch").

For atom i with neighbours j (distances r_ij, cutoff envelope u):

    d_i = -tau * log( sum_j u(r_ij) exp(-r_ij / tau) )          (no neighbour: d_i = +inf)
    s_i = S((d_i - r_on) / (r_off - r_on)),  S = 1 - smootherstep, C2, 1 below 0, 0 above 1

Weighting the soft minimum by the envelope makes d_i -> +inf as the last neighbour
reaches r_max, so s_i reaches 0 *before* the neighbour leaves: nothing jumps when a
neighbour crosses the cutoff, and there is no cusp when the nearest neighbour changes.

Numerics: the log-sum-exp is shifted per atom by the hard minimum m_i of r_ij (detached:
d_i does not depend on the shift, so its gradient is exact without it); every term is then
at most u <= 1 and the nearest one is u(m_i), so nothing overflows for tau down to
0.05 Å. When the sum is below 1e-30 (then u of the nearest neighbour is tiny, so
d_i > r_max > r_off) the atom is isolated (s_i = 0) and the log is evaluated on a dummy 1,
keeping first and second derivatives finite.
"""

from __future__ import annotations

import torch
from torch import nn


def switch_polynomial(x: torch.Tensor) -> torch.Tensor:
    """1 for x <= 0, 0 for x >= 1, 1 - (10 x^3 - 15 x^4 + 6 x^5) between (C2 at both ends)."""
    x = torch.clamp(x, 0.0, 1.0)
    return 1.0 - x * x * x * (10.0 + x * (-15.0 + 6.0 * x))


class IsolationSwitch(nn.Module):
    def __init__(self, tau: float, r_on: float, r_off: float, enabled: bool = True):
        super().__init__()
        if not r_off > r_on:
            raise ValueError(f"model.switch: r_off ({r_off}) must be larger than r_on ({r_on})")
        if not tau > 0:
            raise ValueError(f"model.switch.tau must be positive, got {tau}")
        self.tau = float(tau)
        self.r_on = float(r_on)
        self.r_off = float(r_off)
        self.enabled = bool(enabled)

    def soft_min_distance(self, r: torch.Tensor, u: torch.Tensor, center: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """d_i; +inf for atoms whose envelope-weighted sum underflows (no neighbour)."""
        big = torch.full((num_nodes,), float("inf"), dtype=r.dtype, device=r.device)
        m = big.scatter_reduce(0, center, r.detach(), reduce="amin", include_self=True)
        m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        terms = u * torch.exp(-(r - m_safe.index_select(0, center)) / self.tau)
        total = torch.zeros(num_nodes, dtype=r.dtype, device=r.device).index_add(0, center, terms)
        ok = total > 1e-30  # far below any total whose atom still has s_i > 0
        d = m_safe - self.tau * torch.log(torch.where(ok, total, torch.ones_like(total)))
        return torch.where(ok, d, torch.full_like(d, float("inf")))

    def forward(self, r: torch.Tensor, u: torch.Tensor, center: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """s_i in [0, 1] per atom."""
        if not self.enabled:
            return torch.ones(num_nodes, dtype=r.dtype, device=r.device)
        d = self.soft_min_distance(r, u, center, num_nodes)
        finite = torch.isfinite(d)
        d_safe = torch.where(finite, d, torch.full_like(d, self.r_off))
        s = switch_polynomial((d_safe - self.r_on) / (self.r_off - self.r_on))
        return torch.where(finite, s, torch.zeros_like(s))
