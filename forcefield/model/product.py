"""Many-body node update: products of an atom's aggregated neighbour features with themselves.

A message-passing block sums two-body terms, A_i = sum_j R(r_ij) Y(r_ij) h_j. A single
layer of them can only describe what a pair potential of learned features can; angles
between two neighbours enter only through the next layer. The product basis adds, at
every atom and for each channel c separately,

    B_i,c = w1[Z_i, c] A_i,c  +  (A_i,c (x) A_i,c)_W2[Z_i]  +  ((A_i,c (x) A_i,c) (x) A_i,c)_W3[Z_i]  + ...

up to `correlation` factors, where (x) is the Clebsch-Gordan product ("uuu": channel c
with channel c) and each path of each product carries a learnable weight per species and
channel. A product of nu factors of A_i is a (nu+1)-body function of atom i's environment
(nu neighbours and the centre), which is the idea of ACE and of MACE's product basis.

Our construction is a chain of pairwise products, each contracted back to the hidden
irreps before the next factor: U_1 = A, U_k = CG(U_(k-1), A; W_k[Z]). With lmax >= 2 this
chain reaches every symmetric invariant of up to three vectors that a one-shot
generalised Clebsch-Gordan contraction (MACE) would, at a cost linear in the number of
atoms (no edge sees it), and it is built from e3nn's TensorProduct, so it is TorchScript
exportable through the same path as the rest of the model.

Paths whose two inputs are the same irrep and whose output is antisymmetric (1o x 1o -> 1e,
the cross product of a vector with itself) vanish identically and are never built: only
natural-parity irreps are kept, which excludes exactly those.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from e3nn import o3
from torch import nn


def _uuu_paths(irreps_a: o3.Irreps, irreps_b: o3.Irreps, irreps_out: o3.Irreps) -> List[tuple]:
    """Channel-wise ('uuu') instructions of irreps_a x irreps_b that land in irreps_out."""
    instructions = []
    for i_a, (_, ir_a) in enumerate(irreps_a):
        for i_b, (_, ir_b) in enumerate(irreps_b):
            for i_out, (_, ir_out) in enumerate(irreps_out):
                if ir_out in ir_a * ir_b:
                    instructions.append((i_a, i_b, i_out, "uuu", True))
    return instructions


class _Order(nn.Module):
    """One more factor: U_k = CG(U_(k-1), A) with a weight per species, path and channel."""

    def __init__(self, irreps_in: o3.Irreps, irreps_target: o3.Irreps, num_species: int):
        super().__init__()
        self.tp = o3.TensorProduct(
            irreps_in,
            irreps_in,
            irreps_target,
            _uuu_paths(irreps_in, irreps_in, irreps_target),
            shared_weights=False,
            internal_weights=False,
        )
        self.weight = nn.Parameter(torch.randn(num_species, self.tp.weight_numel))

    def forward(self, u: torch.Tensor, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return self.tp(u, a, self.weight[species])


class ProductBasis(nn.Module):
    """B = sum_(k=1..correlation) U_k restricted to `irreps_out`, species-dependent weights.

    `irreps_in`: the aggregated features A (channels x each irrep, one block per irrep, as
    `hidden_irreps` gives). `irreps_out` must be a subset of those irreps with the same
    multiplicity. correlation = 1 reduces to a species-dependent channel-wise scaling of A.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, correlation: int, num_species: int):
        super().__init__()
        irreps_in, irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        muls = {mul for mul, _ in irreps_in} | {mul for mul, _ in irreps_out}
        if len(muls) != 1:
            raise ValueError(f"ProductBasis needs one multiplicity for every irrep, got {irreps_in} -> {irreps_out}")
        in_irs = [ir for _, ir in irreps_in]
        if len(set(in_irs)) != len(in_irs) or any(ir not in in_irs for _, ir in irreps_out):
            raise ValueError(f"ProductBasis: {irreps_out} must be distinct irreps among {irreps_in}")
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.correlation = int(correlation)
        channels = irreps_in[0].mul

        # where each output irrep sits in the input layout (for the linear term and for
        # intermediate products, which use the full input irreps)
        slices: List[Tuple[int, int]] = []
        for _, ir in irreps_out:
            k = in_irs.index(ir)
            slices.append((irreps_in.slices()[k].start, irreps_in.slices()[k].stop))
        self._out_slices = slices
        self.irreps_out_l = [ir.l for _, ir in irreps_out]

        # linear term: one weight per species, output irrep and channel
        self.w1 = nn.Parameter(torch.randn(num_species, len(irreps_out), channels))
        orders = []
        for k in range(2, self.correlation + 1):
            target = irreps_out if k == self.correlation else irreps_in
            orders.append(_Order(irreps_in, target, num_species))
        self.orders = nn.ModuleList(orders)
        # products of more factors keep the sum's scale ~1 when A is ~1
        self.inv_sqrt_terms = float(self.correlation) ** -0.5

    def _linear_term(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        w = self.w1[species]  # (N, n_out_irreps, channels)
        parts: List[torch.Tensor] = []
        for i, (start, stop) in enumerate(self._out_slices):
            block = a[:, start:stop].reshape(a.shape[0], w.shape[2], -1)
            parts.append((block * w[:, i, :].unsqueeze(-1)).reshape(a.shape[0], -1))
        return torch.cat(parts, dim=1)

    def _restrict(self, u: torch.Tensor) -> torch.Tensor:
        return torch.cat([u[:, start:stop] for start, stop in self._out_slices], dim=1)

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        out = self._linear_term(a, species)
        u = a
        last = len(self.orders) - 1
        for k, order in enumerate(self.orders):
            u = order(u, a, species)
            if k == last:
                out = out + u
            else:
                out = out + self._restrict(u)
        return out * self.inv_sqrt_terms
