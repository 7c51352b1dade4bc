"""DeNS: denoising of non-equilibrium structures, for a conservative model (docs/design.md,
section "DeNS").

Training only, and all of it here. `DeNS` is what the trainer holds: the `dens` config, the
force encoder, the noise head, the coefficient schedule and the noise loss. `dens_sample`
turns one training graph into a DeNS sample (`make_batch` calls it), with the displacement
drawn by `corrupt`. `ForceEncoder` embeds the original forces of the displaced atoms as
|f| Y^l(f/|f|) and maps them linearly into node features, which enter the model through
ForceField's generic `node_features` hook; `NoiseHead` predicts noise / std per atom.
Neither module is part of `ForceField`, so the exported model carries none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from e3nn import o3
from torch import nn

from forcefield.data.graph import Graph, neighbour_list
from forcefield.model.interaction import Interaction
from forcefield.training.config import DensConfig
from forcefield.training.loss import masked_mse


@dataclass
class Corruption:
    """What `corrupt` did to one structure."""

    mask: np.ndarray  # (N,) bool: displaced atoms
    noise: np.ndarray  # (N,3) displacement (zero for undisplaced atoms), Å
    std: float  # noise std used, Å


def corrupt(
    n_atoms: int, rng: np.random.Generator, corrupt_ratio: float, std: float, std_range: Optional[tuple] = None
) -> Corruption:
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


def dens_sample(
    g: Graph, rng: Optional[np.random.Generator], config: Optional[DensConfig], r_max: float
) -> Tuple[Graph, np.ndarray, np.ndarray, np.ndarray]:
    """(graph, noise_mask (N,), noise_target (N,3), force_mask (N,)) of one structure of a
    training batch. With probability config.prob a DeNS sample: some atoms displaced
    (`corrupt`), the neighbour list rebuilt, the labels the original ones, noise_target the
    noise / std, and the force loss on the undisplaced atoms only if
    config.uncorrupted_force_loss. Otherwise (or without config or rng) the graph as it is."""
    n = g.num_atoms
    if config is not None and config.enabled and rng is not None and n > 0 and rng.random() < config.prob:
        c = corrupt(n, rng, config.corrupt_ratio, config.std, config.std_range)
        pos = g.positions + c.noise
        edge_index, shifts = neighbour_list(pos, g.cell, g.pbc, r_max)
        moved = Graph(g.species, pos, g.cell, g.pbc, edge_index, shifts, g.energy, g.forces, g.stress)
        force_mask = ~c.mask if config.uncorrupted_force_loss else np.zeros(n, bool)
        return moved, c.mask, c.noise / c.std, force_mask
    return g, np.zeros(n, bool), np.zeros((n, 3)), np.ones(n, bool)


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

    def encode(self, batch: Dict[str, torch.Tensor], scale: float) -> Optional[torch.Tensor]:
        """The encoding of the reference forces (in units of `scale`) of the displaced atoms
        of `batch`; None when the batch displaces no atom."""
        mask = batch.get("noise_mask")
        if mask is None or not bool(mask.any()):
            return None
        return self(batch["forces"] / scale, mask)


class NoiseHead(nn.Module):
    """An interaction block from the features entering the model's last block to vectors,
    then one 1o output per atom: the predicted noise / std. Only edges whose centre is a
    displaced atom are evaluated (the loss uses no other atom)."""

    def __init__(self, model: nn.Module, channels: int, num_basis: int, radial_hidden: int, avg_num_neighbors: float):
        super().__init__()
        irreps_vec = o3.Irreps(f"{channels}x1o")
        self.block = Interaction(
            model.irreps_penultimate, irreps_vec, model.irreps_sh, num_basis, radial_hidden, avg_num_neighbors
        )
        self.out = o3.Linear(irreps_vec, o3.Irreps("1x1o"))

    def forward(
        self,
        features: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        keep = mask[edge_index[0]]
        h = self.block(features, edge_sh[keep], edge_radial[keep], edge_index[:, keep])
        return self.out(h)

    def residual(self, out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Predicted minus true noise / std per atom (N,3), from the model outputs `out`
        (penultimate features, edge sh/radial); only rows of displaced atoms are meaningful."""
        mask = batch["noise_mask"]
        pred = self(out["penultimate"], out["edge_sh"], out["edge_radial"], batch["edge_index"], mask)
        return pred - batch["noise_target"]

    def loss(self, out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The noise loss: mean squared error of the predicted noise / std over the displaced
        atoms of `batch`."""
        return masked_mse(self.residual(out, batch), batch["noise_mask"])


class DeNS:
    """DeNS for one model: config, force encoder, noise head, coefficient schedule, noise loss.

    The trainer holds one (or None with dens.enabled false); the optimizer gets
    `parameters()` after the model's, checkpoints store `state_dict()` (keys encoder_state
    and head_state)."""

    def __init__(self, config: DensConfig, model: nn.Module, device=None):
        mc = model.model_config()
        self.config = config
        self.encoder = ForceEncoder(mc.lmax, model.irreps_dens).to(device, model.dtype)
        self.head = NoiseHead(model, mc.channels, mc.num_basis, mc.radial_hidden, model.avg_num_neighbors).to(
            device, model.dtype
        )

    def coefficient(self, progress: float) -> float:
        """Weight of the noise loss at `progress` (fraction of the budget): config.coefficient,
        decaying linearly to 0 at config.end with config.decay; 0 from config.end on."""
        d = self.config
        if progress >= d.end:
            return 0.0
        return d.coefficient * (max(0.0, 1.0 - progress / d.end) if d.decay else 1.0)

    def batch_config(self, coefficient: float) -> Optional[DensConfig]:
        """The config `make_batch` corrupts with at this coefficient: None (no DeNS sample) at 0."""
        return self.config if coefficient > 0.0 else None

    def parameters(self) -> List[nn.Parameter]:
        return list(self.encoder.parameters()) + list(self.head.parameters())

    def state_dict(self) -> Dict[str, dict]:
        return {"encoder_state": self.encoder.state_dict(), "head_state": self.head.state_dict()}

    def load_state_dict(self, state: Dict[str, dict]) -> None:
        self.encoder.load_state_dict(state["encoder_state"])
        self.head.load_state_dict(state["head_state"])

    def node_features(self, batch: Dict[str, torch.Tensor], scale: float) -> Optional[torch.Tensor]:
        """The force encoding of the displaced atoms of `batch` (forces in units of the model's
        scale), for ForceField's `node_features`; None when no atom is displaced."""
        return self.encoder.encode(batch, scale)

    def noise_loss(self, out: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss(out, batch)
