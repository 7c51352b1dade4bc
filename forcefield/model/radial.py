"""Radial features of an edge: a Bessel basis times a smooth polynomial envelope."""

from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    """u(r) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max.

    u(0) = 1 and u, u', u'' all vanish at r_max, so energies built from it are
    C2 across the cutoff. u = 0 for r >= r_max.
    """

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        xp = torch.pow(x, p)
        u = 1.0 - 0.5 * (p + 1.0) * (p + 2.0) * xp + p * (p + 2.0) * xp * x - 0.5 * p * (p + 1.0) * xp * x * x
        return torch.where(x < 1.0, u, torch.zeros_like(u))

    def derivative(self, r: torch.Tensor) -> torch.Tensor:
        """du/dr (0 for r >= r_max)."""
        p = self.p
        x = r / self.r_max
        xp1 = torch.pow(x, p - 1.0)
        du = -0.5 * p * (p + 1.0) * (p + 2.0) * xp1 * (1.0 - 2.0 * x + x * x) / self.r_max
        return torch.where(x < 1.0, du, torch.zeros_like(du))


class BesselBasis(nn.Module):
    """sqrt(2/r_max) sin(n pi r / r_max) / r, n = 1..num_basis, with trainable frequencies.

    `r` must be strictly positive; callers regularise r (see `edge_lengths`), so two
    atoms at the same position give the finite limit n pi / r_max * sqrt(2/r_max).
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / r_max)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / r_max
        if trainable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * r) / r

    def derivative(self, r: torch.Tensor) -> torch.Tensor:
        """d/dr of forward(r), (N, num_basis)."""
        r = r.unsqueeze(-1)
        arg = self.freqs * r
        return self.prefactor * (self.freqs * torch.cos(arg) - torch.sin(arg) / r) / r


def edge_lengths(edge_vec: torch.Tensor) -> torch.Tensor:
    """|r| regularised as sqrt(|r|^2 + eps^2), eps = 1e-9 Å.

    Keeps values, first and second derivatives finite when two atoms coincide;
    the shift of a real bond length is below 1e-18 Å.
    """
    return torch.sqrt(torch.sum(edge_vec * edge_vec, dim=-1) + 1e-18)
