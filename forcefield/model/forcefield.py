"""The energy model: species embedding -> interactions -> e_i -> switch -> E_i; F = -dE/dr.

Per-atom energy (docs/design.md, section "Isolation switch"):  E_i = s_i (sigma e_i + mu_Z) + (1 - s_i) E0_Z.

All geometry enters through edge vectors r_ij = pos[j] - pos[i] + shift_ij, so forces
and the virial come from one gradient dE/dr_ij:
    F_i = sum_(i->j) g_ij - sum_(j->i) g_ji,   W = -sum_ij r_ij (x) g_ij,   stress = -W / V.
The same `forward` serves training (create_graph=True), the ASE calculator, the
TorchScript export and LAMMPS (n_local: only the first n_local atoms carry energy, the
others are ghost atoms whose forces LAMMPS folds back).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from e3nn import o3
from pydantic import ValidationError
from torch import nn

from forcefield.model.config import ModelConfig, format_validation_error, parse_model_config
from forcefield.model.interaction import Interaction
from forcefield.model.normalization import Normalization, default_normalization
from forcefield.model.radial import BesselBasis, PolynomialEnvelope, edge_lengths
from forcefield.model.switch import IsolationSwitch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def hidden_irreps(channels: int, lmax: int) -> o3.Irreps:
    """channels x (0e + 1o + 2e + ...): the 'natural parity' irreps up to lmax."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


class ForceField(nn.Module):
    __jit_unused_properties__ = ["dtype"]
    __jit_ignored_attributes__ = ["_normalization_source", "_config"]

    def __init__(self, config: ModelConfig, normalization: Optional[Normalization] = None):
        super().__init__()
        cfg = config
        norm = normalization if normalization is not None else default_normalization(cfg.species)
        norm.check_species(cfg.species)
        self.avg_num_neighbors = float(norm.avg_num_neighbors)
        self.species: List[str] = list(cfg.species)
        self.r_max = float(cfg.r_max)
        self.num_layers = int(cfg.num_layers)
        n_species = len(cfg.species)

        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.lmax)
        self.irreps_hidden = hidden_irreps(cfg.channels, cfg.lmax)
        irreps_scalar = o3.Irreps(f"{cfg.channels}x0e")

        self.embedding = nn.Embedding(n_species, cfg.channels)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=False, normalization="component")
        self.radial_basis = BesselBasis(cfg.r_max, cfg.num_basis)
        self.envelope = PolynomialEnvelope(cfg.r_max)
        layers = []
        irreps = irreps_scalar
        for k in range(cfg.num_layers):
            out = irreps_scalar if k == cfg.num_layers - 1 else self.irreps_hidden
            layers.append(
                Interaction(
                    irreps,
                    out,
                    self.irreps_sh,
                    cfg.num_basis,
                    cfg.radial_hidden,
                    self.avg_num_neighbors,
                    correlation=cfg.correlation,
                    irreps_hidden=self.irreps_hidden,
                    num_species=n_species,
                )
            )
            irreps = out
        self.layers = nn.ModuleList(layers)
        # The `node_features` hook of `forward` (DeNS's force encoding in training; modules
        # outside this class) is added to the first node features that carry l > 0 (entering
        # block `dens_layer`, the second; block 1 reads scalars only, so the deployed model has
        # no unused inputs), and the noise head reads the features entering the last block,
        # as the energy's last block does.
        self.dens_layer = min(1, cfg.num_layers - 1)
        self.irreps_dens = layers[self.dens_layer].irreps_in
        self.irreps_penultimate = layers[-1].irreps_in
        self.readout = nn.Sequential(nn.Linear(cfg.channels, 16), nn.SiLU(), nn.Linear(16, 1))

        # the fitted normalisation (forcefield.model.normalization) lives in buffers, so the
        # state dict carries it; avg_num_neighbors is a constant of the interaction blocks
        self.register_buffer("shift", torch.tensor([norm.shift[s] for s in cfg.species], dtype=torch.float64))
        self.register_buffer("e0", torch.tensor([norm.e0[s] for s in cfg.species], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(float(norm.scale), dtype=torch.float64))
        self._normalization_source = dict(norm.source)
        sw = cfg.switch
        self.switch = IsolationSwitch(sw.tau, sw.r_on, sw.r_off, sw.enabled)
        self.to(_DTYPES[cfg.dtype])
        self._config = cfg

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict | ModelConfig, normalization: dict | Normalization | None = None) -> "ForceField":
        """Build a model from the `model` config section (missing keys: defaults) and a
        normalisation: a Normalization, or a dict of given values (NormalizationConfig keys;
        the rest default), or None (all defaults: an untrained model)."""
        cfg = parse_model_config(config)
        if not isinstance(normalization, Normalization):
            try:
                normalization = default_normalization(cfg.species, normalization)
            except ValidationError as exc:
                raise ValueError(format_validation_error(exc, prefix="normalization")) from None
        return cls(cfg, normalization)

    @torch.jit.unused
    def model_config(self) -> ModelConfig:
        """The architecture (checkpoints store it with the weights and the normalisation)."""
        return self._config.model_copy(deep=True)

    @torch.jit.unused
    def normalization(self) -> Normalization:
        """The normalisation this model carries now (its buffers), with its sources."""
        return Normalization(
            shift={s: float(v) for s, v in zip(self.species, self.shift.tolist())},
            e0={s: float(v) for s, v in zip(self.species, self.e0.tolist())},
            scale=float(self.scale),
            avg_num_neighbors=self.avg_num_neighbors,
            source=dict(self._normalization_source),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.shift.dtype

    # ------------------------------------------------------------------ physics
    def _layer_edges(self, edge_index: torch.Tensor, num_nodes: int, n_local: int) -> List[torch.Tensor]:
        """For LAMMPS (0 <= n_local < N): the edges each block needs, as index tensors.

        Only atoms [0, n_local) carry energy, so block k (0-based, of L) needs messages only
        into atoms within L-1-k hops of them: the last block only into local atoms. The
        result is identical to using every edge; ghost atoms far out cost nothing.
        """
        centre, neighbour = edge_index[0], edge_index[1]
        reach = torch.zeros(num_nodes, dtype=torch.bool, device=edge_index.device)
        reach[:n_local] = True
        masks: List[torch.Tensor] = []
        for _ in range(len(self.layers)):
            masks.append(reach[centre])
            grown = reach.clone()
            grown[neighbour[masks[-1]]] = True
            reach = grown
        masks.reverse()
        return [torch.nonzero(m).squeeze(-1) for m in masks]

    def node_energies(
        self,
        edge_vec: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        node_features: Optional[torch.Tensor] = None,
        n_local: int = -1,
    ) -> Dict[str, torch.Tensor]:
        """Per-atom energies E_i (eV) and the intermediate features (for the DeNS head);
        `node_features` (irreps `irreps_dens`) are added to the features entering block `dens_layer`."""
        num_nodes = species.shape[0]
        r = edge_lengths(edge_vec)
        u = self.envelope(r)
        edge_sh = self.spherical_harmonics(edge_vec / r.unsqueeze(-1))
        edge_radial = self.radial_basis(r) * u.unsqueeze(-1)
        prune = 0 <= n_local < num_nodes
        layer_edges: List[torch.Tensor] = []
        if prune:
            layer_edges = self._layer_edges(edge_index, num_nodes, n_local)

        h = self.embedding(species)
        penultimate = h
        n_layers = len(self.layers)
        for k, layer in enumerate(self.layers):
            if k == self.dens_layer and node_features is not None:
                h = h + node_features
            if k == n_layers - 1:
                penultimate = h
            if prune:
                sel = layer_edges[k]
                h = layer(h, edge_sh[sel], edge_radial[sel], edge_index[:, sel], species)
            else:
                h = layer(h, edge_sh, edge_radial, edge_index, species)
        e = self.readout(h).squeeze(-1)

        s = self.switch(r, u, edge_index[0], num_nodes)
        mu = self.shift[species]
        node_energy = s * (self.scale * e + mu) + (1.0 - s) * self.e0[species]
        return {
            "node_energy": node_energy,
            "switch": s,
            "penultimate": penultimate,
            "edge_sh": edge_sh,
            "edge_radial": edge_radial,
        }

    def forward(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        n_local: int = -1,
        compute_forces: bool = True,
        compute_virial: bool = False,
        create_graph: bool = False,
        node_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Energies per graph, per-atom energies, forces (N,3) and virial (num_graphs,3,3).

        pos (N,3); species (N,) index into self.species; edge_index (2,E) full list,
        row 0 the centre atom; shifts (E,3) Cartesian periodic shifts; batch (N,) graph index.
        n_local >= 0: only atoms [0, n_local) contribute energy (LAMMPS ghosts follow them).
        Pass everything after num_graphs by keyword. node_features (N, irreps_dens.dim),
        optional: added to the node features entering block `dens_layer` (DeNS's force
        encoding in training). It is not keyword-only (`*`) because TorchScript refuses
        keyword-only parameters with defaults.
        """
        edge_vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts
        need_grad = compute_forces or compute_virial
        if need_grad and not edge_vec.requires_grad:
            edge_vec.requires_grad_(True)
        out = self.node_energies(edge_vec, species, edge_index, node_features, n_local)
        node_energy = out["node_energy"]
        n_energy = node_energy.shape[0] if n_local < 0 else n_local
        counted = node_energy[:n_energy]
        energy = torch.zeros(num_graphs, dtype=node_energy.dtype, device=node_energy.device)
        energy = energy.index_add(0, batch[:n_energy], counted)
        out["energy"] = energy

        if need_grad:
            grads = torch.autograd.grad([counted.sum()], [edge_vec], create_graph=create_graph, allow_unused=True)
            g = grads[0]
            if g is None:
                g = torch.zeros_like(edge_vec)
            if compute_forces:
                forces = torch.zeros_like(pos)
                forces = forces.index_add(0, edge_index[0], g).index_add(0, edge_index[1], -g)
                out["forces"] = forces
            if compute_virial:
                w = -(edge_vec.unsqueeze(-1) * g.unsqueeze(-2))
                virial = torch.zeros((num_graphs, 3, 3), dtype=pos.dtype, device=pos.device)
                virial = virial.index_add(0, batch[edge_index[0]], w)
                out["virial"] = 0.5 * (virial + virial.transpose(1, 2))
        return out
