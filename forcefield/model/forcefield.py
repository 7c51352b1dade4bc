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

from typing import Dict, List, Optional, Tuple

import torch
from e3nn import o3
from pydantic import ValidationError
from torch import nn

from forcefield.errors import InputError
from forcefield.model.config import ModelConfig, format_validation_error, parse_model_config
from forcefield.model.interaction import Interaction
from forcefield.model.normalization import Normalization, default_normalization, move_legacy_model_keys
from forcefield.model.radial import BesselBasis, PolynomialEnvelope, edge_lengths
from forcefield.model.switch import IsolationSwitch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Edges per chunk of the inference path (`_inference`). Its per-edge intermediates live for
# one chunk only; a chunk's largest tensor (edges x message width, float32) stays below the
# 32 MB up to which glibc reuses freed heap memory instead of mapping fresh pages each step.
DEFAULT_EDGE_CHUNK = 4096
# Atoms per chunk of the node updates in the inference path (same reason, per atom).
DEFAULT_NODE_CHUNK = 2048
# Edges per piece of the message product within an edge chunk of the inference path. Its
# (edges x message width) temporaries then stay in cache (256 x 1120 float32 = 1.1 MB):
# the product's backward takes 3.2 instead of 5.5 us per edge at 4096 (lmax 2, correlation
# 3, one core), while the radial MLP and the autograd around it keep whole chunks, where
# their fixed costs per call are spread thin (chunks of 512 edges throughout were no faster).
# This is for one CPU thread (LAMMPS' usual one thread per MPI rank). With several threads
# each small operation pays for waking the others (1024 FCC atoms, 2 threads: 1.3x slower in
# pieces of 256), and on a GPU for a kernel launch, so there whole chunks go at once
# (`message_pieces_pay`): eager models decide per call; TorchScript cannot ask for the thread
# count, so whoever loads an export sets its `message_chunk` (forcefield.model.deployed.
# match_threads for Python, the pair style for LAMMPS).
DEFAULT_MESSAGE_CHUNK = 256


def message_pieces_pay(num_threads: int, on_cpu: bool) -> bool:
    """Whether the inference path should split the message product into pieces of
    `message_chunk` edges: on one CPU thread only (DEFAULT_MESSAGE_CHUNK)."""
    return on_cpu and num_threads == 1


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
        # inference path (eval mode, create_graph False): edges per chunk; 0 = plain autograd
        self.edge_chunk: int = DEFAULT_EDGE_CHUNK
        self.node_chunk: int = DEFAULT_NODE_CHUNK
        self.message_chunk: int = DEFAULT_MESSAGE_CHUNK
        # plain autograd in use (create_graph False): radial MLPs once per distinct edge
        # length, in forward mode (node_energies, first_order); False: as in training
        self.shared_radial: bool = True
        sw = cfg.switch
        self.switch = IsolationSwitch(sw.tau, sw.r_on, sw.r_off, sw.enabled)
        self.to(_DTYPES[cfg.dtype])
        self._config = cfg

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict | ModelConfig, normalization: dict | Normalization | None = None) -> "ForceField":
        """Build a model from the `model` config section (missing keys: defaults) and a
        normalisation: a Normalization, or a dict of given values (NormalizationConfig keys
        e0, shift, scale, avg_num_neighbors; the rest default), or None (all defaults: an
        untrained model). Isolated-atom energies go there, as in a config file:

            ForceField.from_config({"species": ["Cu", "Au"]}, normalization={"e0": {"Cu": -1.2, "Au": -2.3}})

        `model` keys of the old layout (e0, shift, scale, avg_num_neighbors) are moved into
        the normalisation with a FutureWarning, as a config file's are (move_legacy_model_keys).
        Invalid keys or values are an InputError naming them."""
        if isinstance(config, dict):
            config, normalization = move_legacy_model_keys(
                config, normalization, "ForceField.from_config", stacklevel=3
            )
        cfg = parse_model_config(config)
        if not isinstance(normalization, Normalization):
            try:
                normalization = default_normalization(cfg.species, normalization)
            except ValidationError as exc:
                raise InputError(format_validation_error(exc, prefix="normalization")) from None
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
        first_order: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Per-atom energies E_i (eV) and the intermediate features (for the DeNS head);
        `node_features` (irreps `irreps_dens`) are added to the features entering block `dens_layer`.

        first_order: the result is only differentiated once, not through create_graph (forces
        and virial of a model in use). The radial MLPs then run once per distinct edge length
        (an edge and its reverse have bitwise the same r), in forward mode, and enter as
        w(r) = w(r0) + w'(r0) (r - r0) at r0 = r's value: the same values and first
        derivatives, without a reverse pass through the MLPs. Edges that share a length keep
        their own r - r0, so each one's gradient still reaches its own edge vector (a perfect
        lattice has many unrelated edges of equal length). Second derivatives in r lack
        w''(r), hence never with create_graph (training)."""
        num_nodes = species.shape[0]
        r, u, edge_sh, edge_radial = self._edge_features(edge_vec)
        prune = 0 <= n_local < num_nodes
        layer_edges: List[torch.Tensor] = []
        if prune:
            layer_edges = self._layer_edges(edge_index, num_nodes, n_local)
        inverse = torch.zeros(0, dtype=torch.long, device=r.device)
        dr = r
        radial_in = (r, r)
        if first_order:
            r_distinct, inverse = self._distinct_radial(r)
            radial_in = self._radial_input(r_distinct)
            dr = (r - r.detach()).unsqueeze(-1)  # zero, with dr/dr = 1

        h = self.embedding(species)
        penultimate = h
        n_layers = len(self.layers)
        for k, layer in enumerate(self.layers):
            if k == self.dens_layer and node_features is not None:
                h = h + node_features
            if k == n_layers - 1:
                penultimate = h
            # this block's edges: all, or the hop-pruned set (LAMMPS ghosts)
            sh_k, index_k, radial_k, inverse_k, dr_k = edge_sh, edge_index, edge_radial, inverse, dr
            if prune:
                sel = layer_edges[k]
                sh_k, index_k = edge_sh.index_select(0, sel), edge_index.index_select(1, sel)
                if first_order:
                    inverse_k, dr_k = inverse.index_select(0, sel), dr.index_select(0, sel)
                else:
                    radial_k = edge_radial.index_select(0, sel)
            if first_order:
                # with a graph for the MLP's parameters: gradients of the energy with respect
                # to them stay right (w' enters multiplied by r - r0 = 0)
                w_distinct, dw_distinct = layer.radial_jvp(radial_in[0], radial_in[1])
                w = w_distinct.index_select(0, inverse_k) + dw_distinct.index_select(0, inverse_k) * dr_k
            else:
                w = layer.radial(radial_k)
            h = layer.propagate(h, sh_k, w, index_k, species, first_order)
        s = self.switch(r, u, edge_index[0], num_nodes)
        node_energy = self._energy_of_features(h, s, species)
        return {
            "node_energy": node_energy,
            "switch": s,
            "penultimate": penultimate,
            "edge_sh": edge_sh,
            "edge_radial": edge_radial,
        }

    def _edge_features(self, edge_vec: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, envelope u(r), spherical harmonics, radial basis * u) of edge vectors."""
        r = edge_lengths(edge_vec)
        u = self.envelope(r)
        edge_sh = self.spherical_harmonics(edge_vec / r.unsqueeze(-1))
        edge_radial = self.radial_basis(r) * u.unsqueeze(-1)
        return r, u, edge_sh, edge_radial

    def _distinct_radial(self, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the distinct values of the edge lengths r, for each edge the index of its value).

        The radial MLP depends on r alone, and an edge and its reverse (j -> i with the
        opposite shift) have bitwise the same r (IEEE negation and subtraction are exact), so
        the inference path evaluates the MLP once per distinct r of a chunk."""
        r_distinct, inverse = torch.unique(r.detach(), sorted=True, return_inverse=True)
        return r_distinct, inverse

    def _radial_input(self, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The radial MLP's input (Bessel basis x envelope) and its derivative d/dr."""
        basis, u = self.radial_basis(r), self.envelope(r).unsqueeze(-1)
        d_input = self.radial_basis.derivative(r) * u + basis * self.envelope.derivative(r).unsqueeze(-1)
        return basis * u, d_input

    @torch.jit.unused
    def _message_piece(self, chunk: int, on_cpu: bool = True) -> int:
        """Edges per message-product piece in eager mode: `message_chunk` on one CPU thread,
        whole chunks on several or on a GPU (DEFAULT_MESSAGE_CHUNK)."""
        return max(1, self.message_chunk) if message_pieces_pay(torch.get_num_threads(), on_cpu) else chunk

    def _energy_of_features(self, h: torch.Tensor, s: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Per-atom energies from the last block's features and the switch."""
        e = self.readout(h).squeeze(-1)
        return s * (self.scale * e + self.shift.index_select(0, species)) + (1.0 - s) * self.e0.index_select(0, species)

    def _inference(
        self,
        edge_vec: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        n_local: int,
        need_grad: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(node_energy, switch, dE/d edge_vec) without a graph over all edges: the inference path.

        Plain autograd keeps every block's per-edge intermediates (messages, radial weights,
        tensor-product pieces: kilobytes per edge) until the backward pass. Here the forward
        pass runs without a graph, keeping only node features, and the backward pass goes
        block by block, from the last to the first, recomputing each chunk of `edge_chunk`
        edges, taking its vector-Jacobian product and dropping it: the message product's
        by ChannelwiseTP.vjp (in cache-sized pieces of `message_chunk` edges), the radial
        MLP's in forward mode (radial_jvp, once per distinct distance: an edge and its
        reverse share it), the spherical harmonics' by autograd. Peak memory is then the
        node features plus a few numbers per edge plus one chunk; the price is one more
        evaluation of the messages. The result is the same gradient (the sums are only
        ordered differently): tests/model/test_model_inference.py; docs/design.md,
        "Inference path".
        """
        num_nodes = species.shape[0]
        chunk = max(1, self.edge_chunk)
        node_chunk = max(1, self.node_chunk)
        if torch.jit.is_scripting():
            piece = max(1, self.message_chunk)
        else:
            piece = self._message_piece(chunk, edge_vec.device.type == "cpu")
        # the edges each block evaluates: all of them, or the hop-pruned sets (LAMMPS ghosts),
        # each edge next to its reverse (same unordered pair of atoms), so that the two share
        # one evaluation of the radial MLP within a chunk (_distinct_radial)
        pair_key = torch.minimum(edge_index[0], edge_index[1]) * num_nodes + torch.maximum(edge_index[0], edge_index[1])
        if 0 <= n_local < num_nodes:
            layer_edges = self._layer_edges(edge_index, num_nodes, n_local)
            layer_edges = [sel.index_select(0, torch.argsort(pair_key.index_select(0, sel))) for sel in layer_edges]
        else:
            layer_edges = [torch.argsort(pair_key)] * len(self.layers)
        edge_vec = edge_vec.detach()
        hs: List[torch.Tensor] = []
        aggs: List[torch.Tensor] = []
        with torch.no_grad():
            h = self.embedding(species)
            for k, layer in enumerate(self.layers):
                sel = layer_edges[k]
                x = layer.node_inputs(h)
                agg = torch.zeros((num_nodes, layer.tp_fast.dim_out), device=h.device, dtype=h.dtype)
                for start in range(0, sel.shape[0], chunk):
                    ids = sel[start : start + chunk]
                    ev = edge_vec.index_select(0, ids)
                    r = edge_lengths(ev)
                    r_distinct, inverse = self._distinct_radial(r)
                    basis, u = self.radial_basis(r_distinct), self.envelope(r_distinct).unsqueeze(-1)
                    w_distinct = layer.radial(basis * u)
                    sh = self.spherical_harmonics(ev / r.unsqueeze(-1))
                    centre, nbr = edge_index[0].index_select(0, ids), edge_index[1].index_select(0, ids)
                    for a in range(0, ids.shape[0], piece):
                        b = a + piece
                        w = w_distinct.index_select(0, inverse[a:b])
                        agg.index_add_(0, centre[a:b], layer.tp_fast(x.index_select(0, nbr[a:b]), sh[a:b], w, True))
                agg = agg * layer.inv_avg_num_neighbors
                hs.append(h)
                aggs.append(agg)
                # the node update in chunks of atoms too: its temporaries (product basis) are
                # several times the aggregate, and fresh ones for every atom would be mmaps
                parts: List[torch.Tensor] = []
                for start in range(0, num_nodes, node_chunk):
                    stop = min(start + node_chunk, num_nodes)
                    parts.append(layer.update(agg[start:stop], h[start:stop], species[start:stop]))
                h = torch.cat(parts) if len(parts) != 1 else parts[0]

        # the switch and the readout, with a graph (a few numbers per edge and per atom)
        n_energy = num_nodes if n_local < 0 else n_local
        ev = edge_vec.clone().requires_grad_(need_grad)
        r = edge_lengths(ev)
        s = self.switch(r, self.envelope(r), edge_index[0], num_nodes)
        h_last = h.detach().requires_grad_(need_grad)
        node_energy = self._energy_of_features(h_last, s, species)
        g_edge = torch.zeros_like(edge_vec)
        if not need_grad:
            return node_energy.detach(), s.detach(), g_edge
        grads = torch.autograd.grad([node_energy[:n_energy].sum()], [h_last, ev], allow_unused=True)
        g_h = grads[0]
        g_switch = grads[1]
        if g_switch is not None:
            g_edge = g_switch
        if g_h is None:
            g_h = torch.zeros_like(h)

        # last block first (TorchScript indexes a ModuleList only by a literal, hence the
        # inner loop that picks block j)
        for j in range(len(self.layers) - 1, -1, -1):
            for k, block in enumerate(self.layers):
                if k == j:
                    sel = layer_edges[k]
                    h_in = hs[k].requires_grad_(k > 0)
                    # node part of the block, in chunks of atoms: the gradient reaching its
                    # aggregated messages (g_agg) and, through the self-connection, its input
                    g_aggs: List[torch.Tensor] = []
                    g_selfs: List[torch.Tensor] = []
                    for start in range(0, num_nodes, node_chunk):
                        stop = min(start + node_chunk, num_nodes)
                        agg_c = aggs[k][start:stop].requires_grad_(True)
                        h_c = hs[k][start:stop].detach().requires_grad_(k > 0)
                        out = block.update(agg_c, h_c, species[start:stop])
                        g_out: List[Optional[torch.Tensor]] = [g_h[start:stop]]
                        if k > 0:
                            gs = torch.autograd.grad([out], [agg_c, h_c], g_out)
                            g_s = gs[1]
                            assert g_s is not None
                            g_selfs.append(g_s)
                        else:
                            gs = torch.autograd.grad([out], [agg_c], g_out)
                        g_a = gs[0]
                        assert g_a is not None
                        g_aggs.append(g_a)
                    g_agg = torch.cat(g_aggs) * block.inv_avg_num_neighbors
                    g_self: Optional[torch.Tensor] = None
                    if k > 0:
                        g_self = torch.cat(g_selfs)
                    x = block.node_inputs(h_in)
                    xd = x.detach()
                    g_x = torch.zeros_like(xd)
                    # edge part, one chunk at a time: recompute, take the product with g_agg, drop.
                    # The message product's backward is written out (ChannelwiseTP.vjp); autograd
                    # takes it on to the edge vectors through the spherical harmonics and the
                    # radial MLP.
                    for start in range(0, sel.shape[0], chunk):
                        ids = sel[start : start + chunk]
                        centre, nbr = edge_index[0].index_select(0, ids), edge_index[1].index_select(0, ids)
                        # only the spherical harmonics keep an autograd graph; the radial weights
                        # and dw/dr come once per distinct r (forward mode through the MLP)
                        ev = edge_vec.index_select(0, ids).requires_grad_(True)
                        r_g = edge_lengths(ev)
                        sh = self.spherical_harmonics(ev / r_g.unsqueeze(-1))
                        r, sh_d = r_g.detach(), sh.detach()
                        r_distinct, inverse = self._distinct_radial(r)
                        w_distinct, dw_distinct = block.radial_jvp(*self._radial_input(r_distinct))
                        # values only: the weights' gradients are not wanted here
                        w_distinct, dw_distinct = w_distinct.detach(), dw_distinct.detach()
                        g_sh = torch.empty_like(sh_d)
                        g_r = torch.empty_like(r)
                        for a in range(0, ids.shape[0], piece):
                            b = a + piece
                            w = w_distinct.index_select(0, inverse[a:b])
                            g_xj, g_sh[a:b], g_w = block.tp_fast.vjp(
                                xd.index_select(0, nbr[a:b]), sh_d[a:b], w, g_agg, k > 0, True, centre[a:b]
                            )
                            if k > 0:
                                g_x.index_add_(0, nbr[a:b], g_xj)
                            # the radial part: dE/dr_e = g_w[e] . dw/dr(r_e)
                            g_r[a:b] = (g_w * dw_distinct.index_select(0, inverse[a:b])).sum(dim=1)
                        g_in: List[Optional[torch.Tensor]] = [g_sh]
                        g_ev = torch.autograd.grad([sh], [ev], g_in)[0]
                        assert g_ev is not None
                        g_edge.index_add_(0, ids, g_ev + (g_r / r).unsqueeze(-1) * ev.detach())  # dr/dv = v / r
                    if g_self is not None:
                        g_xs: List[Optional[torch.Tensor]] = [g_x]
                        g_up = torch.autograd.grad([x], [h_in], g_xs)[0]
                        assert g_up is not None
                        g_h = g_self + g_up
        return node_energy.detach(), s.detach(), g_edge

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
        edge_vec = pos.index_select(0, edge_index[1]) - pos.index_select(0, edge_index[0]) + shifts
        need_grad = compute_forces or compute_virial
        g: Optional[torch.Tensor] = None
        # the inference path (docs/design.md, "Inference path") when it can pay: with a single
        # chunk of edges it would only add a second forward pass (1.5x slower at 32 atoms)
        inference = self.edge_chunk > 0 and edge_index.shape[1] > self.edge_chunk
        if inference and not self.training and not create_graph and node_features is None:
            node_energy, s, g = self._inference(edge_vec, species, edge_index, n_local, need_grad)
            out: Dict[str, torch.Tensor] = {"node_energy": node_energy, "switch": s}
        else:
            if need_grad and not edge_vec.requires_grad:
                edge_vec.requires_grad_(True)
            first_order = self.shared_radial and not create_graph and not self.training
            out = self.node_energies(edge_vec, species, edge_index, node_features, n_local, first_order)
        node_energy = out["node_energy"]
        n_energy = node_energy.shape[0] if n_local < 0 else n_local
        counted = node_energy[:n_energy]
        energy = torch.zeros(num_graphs, dtype=node_energy.dtype, device=node_energy.device)
        energy = energy.index_add(0, batch[:n_energy], counted)
        out["energy"] = energy

        if need_grad:
            if g is None:
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
                virial = virial.index_add(0, batch.index_select(0, edge_index[0]), w)
                out["virial"] = 0.5 * (virial + virial.transpose(1, 2))
        return out
