"""One equivariant message-passing block.

    m_i  = 1/avg_nn * sum_j TP_uvu( W_up h_j , Y(r_ij) ; R(|r_ij|) )        (e3nn tensor product,
                                                                          weights from a radial MLP)
    h_i' = act( W_down m_i + W_self h_i )                                   (residual self-interaction)

With `correlation` >= 2 (forcefield/model/product.py) the aggregated message is first mapped
to the full hidden irreps A_i and replaced by the many-body product basis B_i(A_i, Z_i)
before W_down; the messages then carry every hidden irrep, also into the last block.

Without it (correlation 1), only tensor-product paths that land in the requested output irreps are built, so the last
block of the energy model (scalar output) costs one contraction per `l`, and a block fed
with scalars only is a plain outer product. `act` is a gate for mixed outputs, SiLU for
scalar-only outputs and the identity for outputs without scalars (the DeNS noise head).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn

from forcefield.model.fast_tp import ChannelwiseTP
from forcefield.model.product import ProductBasis


def _tp_paths(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps) -> Tuple[o3.Irreps, List[tuple]]:
    wanted = {ir for _, ir in irreps_target}
    mid: List[Tuple[int, o3.Irrep]] = []
    instructions = []
    for i_in, (mul, ir_in) in enumerate(irreps_in):
        for i_sh, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in wanted:
                    instructions.append((i_in, i_sh, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    irreps_mid = o3.Irreps(mid)
    irreps_sorted, perm, _ = irreps_mid.sort()
    instructions = [(a, b, perm[k], mode, train) for a, b, k, mode, train in instructions]
    return irreps_sorted, instructions


def _radial_factors(mlp: e3nn_nn.FullyConnectedNet) -> List[float]:
    """e3nn's FullyConnectedNet as plain matmuls and SiLUs: factors f_k such that
    mlp(x) = silu(silu(x @ (W0 f0)) @ (W1 f1)) @ (W2 f2) (its 1/sqrt(fan-in) and the SiLU's
    second-moment normalisation folded into the next weight). Interaction.radial_jvp uses them."""
    layers = [mlp.layer0, mlp.layer1, mlp.layer2] if len(mlp.hs) == 4 else []
    if not layers or any(layer.act is None for layer in layers[:2]) or layers[2].act is not None:
        raise ValueError(f"radial MLP: expected two SiLU hidden layers and a linear output, got {mlp}")
    factors: List[float] = []
    carry = 1.0  # the scale of the previous layer's output activation
    for layer in layers[:2]:
        factors.append(carry / (layer.h_in * layer.var_in) ** 0.5)
        cst = 1.0 if layer.act._is_id else layer.act.cst
        carry = cst * layer.var_out**0.5
    last = layers[2]
    factors.append(carry / (last.h_in * last.var_in / last.var_out) ** 0.5)
    return factors


class Interaction(nn.Module):
    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_basis: int,
        radial_hidden: int,
        avg_num_neighbors: float,
        correlation: int = 1,
        irreps_hidden: Optional[o3.Irreps] = None,
        num_species: int = 1,
    ):
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)

        self.linear_up = o3.Linear(irreps_in, irreps_in)
        self.product: Optional[ProductBasis] = None
        self.linear_agg: Optional[o3.Linear] = None
        if correlation >= 2:
            if irreps_hidden is None:
                raise ValueError("Interaction: correlation >= 2 needs irreps_hidden")
            irreps_hidden = o3.Irreps(irreps_hidden)
            irreps_mid, instructions = _tp_paths(irreps_in, o3.Irreps(irreps_sh), irreps_hidden)
        else:
            irreps_mid, instructions = _tp_paths(irreps_in, o3.Irreps(irreps_sh), irreps_out)
        self.tp = o3.TensorProduct(
            irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False, internal_weights=False
        )
        # what runs: the same product contracted in a cheaper order, channel-major messages
        # (forcefield/model/fast_tp.py); self.tp stays as its reference and in the state dict
        self.tp_fast = ChannelwiseTP(self.tp)
        self.radial = e3nn_nn.FullyConnectedNet(
            [num_basis, radial_hidden, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu
        )
        self.radial_factors = _radial_factors(self.radial)

        scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
        if len(scalars) > 0 and len(gated) > 0:
            gates = o3.Irreps(f"{gated.num_irreps}x0e")
            self.act = e3nn_nn.Gate(scalars, [torch.nn.functional.silu], gates, [torch.sigmoid], gated)
            irreps_pre = self.act.irreps_in
        elif len(gated) == 0:
            self.act = e3nn_nn.Activation(scalars, [torch.nn.functional.silu])
            irreps_pre = scalars
        else:
            self.act = nn.Identity()
            irreps_pre = gated
        if correlation >= 2:
            kept = {ir for _, ir in irreps_out}
            irreps_b = o3.Irreps([(m, ir) for m, ir in irreps_hidden if ir in kept])
            self.linear_agg = o3.Linear(irreps_mid.simplify(), irreps_hidden)
            self.product = ProductBasis(irreps_hidden, irreps_b, correlation, num_species)
            self.linear_down = o3.Linear(irreps_b, irreps_pre)
        else:
            self.linear_down = o3.Linear(irreps_mid.simplify(), irreps_pre)
        self.self_connection = o3.Linear(irreps_in, irreps_pre)

    def radial_jvp(self, x: torch.Tensor, dx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The radial MLP's output and its derivative along dx (forward mode): (radial(x),
        d radial(x + t dx)/dt at t = 0). The inference path takes dx = d features / dr and
        so gets dw/dr. Same numbers as self.radial (its constants folded into the weights)."""
        f = self.radial_factors
        n = x.shape[0]
        w0 = self.radial.layer0.weight * f[0]
        w1 = self.radial.layer1.weight * f[1]
        w2 = self.radial.layer2.weight * f[2]
        a = torch.cat([x, dx]) @ w0  # value and tangent rows through each matmul together
        for k in range(2):
            pre, tangent = a[:n], a[n:]
            s = torch.sigmoid(pre)
            h = torch.cat([pre * s, tangent * (s * (1.0 + pre * (1.0 - s)))])
            a = h @ (w1 if k == 0 else w2)
        return a[:n], a[n:]

    def node_inputs(self, h: torch.Tensor) -> torch.Tensor:
        """The features each atom sends: linear_up(h), component-major (ChannelwiseTP's layout)."""
        return self.tp_fast.to_component_major(self.linear_up(h))

    def update(self, agg: torch.Tensor, h: torch.Tensor, species: Optional[torch.Tensor] = None) -> torch.Tensor:
        """New node features from the aggregated (already normalised) messages and the old ones."""
        agg = self.tp_fast.to_e3nn_layout(agg)
        product = self.product
        linear_agg = self.linear_agg
        if product is not None and linear_agg is not None:
            if species is None:
                raise RuntimeError("Interaction with a product basis needs the species")
            agg = product(linear_agg(agg), species)
        return self.act(self.linear_down(agg) + self.self_connection(h))

    def forward(
        self,
        h: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
        species: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.propagate(h, edge_sh, self.radial(edge_radial), edge_index, species)

    def propagate(
        self,
        h: torch.Tensor,
        edge_sh: torch.Tensor,
        weights: torch.Tensor,
        edge_index: torch.Tensor,
        species: Optional[torch.Tensor] = None,
        fused: bool = False,
    ) -> torch.Tensor:
        """forward() with the radial MLP's output `weights` (E, paths * mul) given. The
        messages are component-major (ChannelwiseTP's layout; `update` takes their sum to
        e3nn's). fused: the messages and their sum by an operator (ChannelwiseTP.summed; first
        derivatives only)."""
        x = self.node_inputs(h).index_select(0, edge_index[1])
        agg = self.tp_fast.summed(x, edge_sh, weights, edge_index[0], h.shape[0], fused) * self.inv_avg_num_neighbors
        return self.update(agg, h, species)
