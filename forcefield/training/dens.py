"""DeNS: denoising of non-equilibrium structures, for a conservative model (DESIGN.md §4).

Training only. `corrupt` picks DeNS samples and displaces part of their atoms;
`ForceEncoder` embeds the original forces of the displaced atoms as |f| Y^l(f/|f|) and maps
them linearly into node features; `NoiseHead` predicts noise / std per atom. Neither module
is part of `ForceField`, so the exported model carries none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from e3nn import o3
from torch import nn

from forcefield.model.interaction import Interaction


@dataclass
class Corruption:
    """What `corrupt` did to one structure."""
    mask: np.ndarray    # (N,) bool: displaced atoms
    noise: np.ndarray   # (N,3) displacement (zero for undisplaced atoms), Å
    std: float          # noise std used, Å


def corrupt(n_atoms: int, rng: np.random.Generator, corrupt_ratio: float, std: float,
            std_range: Optional[tuple] = None) -> Corruption:
    """Displace each atom with probability `corrupt_ratio`: at least one, and not all
    unless the ratio is 1 (or there is one atom). Noise is N(0, std^2) per component;
    with `std_range` the std is drawn log-uniformly per structure."""
    if std_range is not None:
        lo, hi = std_range
        std = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    mask = rng.random(n_atoms) < corrupt_ratio
    if not mask.any():
        mask[rng.integers(n_atoms)] = True
    if mask.all() and corrupt_ratio < 1.0 and n_atoms > 1:
        mask[rng.integers(n_atoms)] = False
    noise = rng.normal(0.0, std, size=(n_atoms, 3)) * mask[:, None]
    return Corruption(mask, noise, std)


class ForceEncoder(nn.Module):
    """f (normalised by the force scale) -> o3.Linear(|f| Y^l(f/|f|), l = 0..lmax) -> node irreps."""

    def __init__(self, lmax: int, irreps_out: o3.Irreps):
        super().__init__()
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=False, normalization="component")
        self.linear = o3.Linear(self.irreps_sh, irreps_out)

    def forward(self, forces: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt(torch.sum(forces * forces, dim=-1, keepdim=True) + 1e-24)
        enc = norm * self.sh(forces / norm)
        return self.linear(enc) * mask.unsqueeze(-1).to(forces.dtype)


class NoiseHead(nn.Module):
    """An interaction block from the features entering the model's last block to vectors,
    then one 1o output per atom: the predicted noise / std. Only edges whose centre is a
    displaced atom are evaluated (the loss uses no other atom)."""

    def __init__(self, model: nn.Module, channels: int, num_basis: int, radial_hidden: int,
                 avg_num_neighbors: float):
        super().__init__()
        irreps_vec = o3.Irreps(f"{channels}x1o")
        self.block = Interaction(model.irreps_penultimate, irreps_vec, model.irreps_sh,
                                 num_basis, radial_hidden, avg_num_neighbors)
        self.out = o3.Linear(irreps_vec, o3.Irreps("1x1o"))

    def forward(self, features: torch.Tensor, edge_sh: torch.Tensor, edge_radial: torch.Tensor,
                edge_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[edge_index[0]]
        h = self.block(features, edge_sh[keep], edge_radial[keep], edge_index[:, keep])
        return self.out(h)
