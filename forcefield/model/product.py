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
atoms (no edge sees it). Its paths and constants come from e3nn's TensorProduct (kept in
each order as the tested reference, `forward_e3nn`); what runs is a few GEMMs per order on
component-major features (`_Order`), plain torch, so it scripts like the rest of the model.

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


class _FactorGroup(nn.Module):
    """The paths of an _Order whose second factor is one irrep of A (components
    [start, start + dim) of each channel)."""

    def __init__(self, start: int, dim: int, cg: torch.Tensor, gather: torch.Tensor, paths: List[int]):
        super().__init__()
        self.start, self.dim = start, dim
        self.register_buffer("cg_t", cg.t().contiguous(), persistent=False)  # (columns, D * dim)
        self.register_buffer("gather_t", gather.t().contiguous(), persistent=False)  # (D_target, columns)
        self.register_buffer("path_of_column", torch.tensor(paths, dtype=torch.long), persistent=False)

    def forward(self, u: torch.Tensor, a: torch.Tensor, w: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """u, a (D, M) component-major (M = atoms x channels); w (paths, species, mul)."""
        d, m = u.shape
        outer = (u.unsqueeze(1) * a[self.start : self.start + self.dim].unsqueeze(0)).view(d * self.dim, m)
        y = self.cg_t @ outer  # (columns, M)
        y = y * w.index_select(0, self.path_of_column).index_select(1, species).view(-1, m)
        return self.gather_t @ y


class _Order(nn.Module):
    """One more factor: U_k = CG(U_(k-1), A) with a weight per species, path and channel.

    e3nn's TensorProduct (`self.tp`, kept as the reference: tests/model/test_model_product.py)
    would do it path by path, a dozen small operations per path on (atoms, channels, d)
    pieces. Here the features are component-major, (D, M) with D the components of all
    irreps and M = atoms x channels (column n * mul + u), and the paths go in one group per
    irrep of the second factor A (3 for lmax 2):

        outer[(i, j), m] = U[i, m] A[j, m]                       j in the group's irrep
        Y[c, m]          = sum_ij C[c, (i, j)] outer[(i, j), m]   one GEMM; c runs over the
                                                                 group's paths' components
        out[o, m]       += sum_c S[o, c] Y[c, m] w[p(c), Z_n, u]  S adds the paths that land
                                                                 in the same irrep

    Grouping by A's irrep skips the zero blocks of C that one GEMM over all (i, j) would
    multiply (2.7x fewer flops for lmax 2), and with the long M axis last every GEMM has a
    shape BLAS does well (1.3-5x faster than the same products with M first, measured).
    """

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
        rows = _component_offsets(irreps_in)
        outs = _component_offsets(irreps_target)
        self.mul = irreps_in[0].mul
        dim = irreps_in.dim // self.mul
        self.d_out = irreps_target.dim // irreps_target[0].mul
        ins = self.tp.instructions
        self.n_paths = len(ins)
        groups = []
        for slot, (_, ir_b) in enumerate(irreps_in):
            paths = [p for p, i in enumerate(ins) if i.i_in2 == slot]
            if not paths:
                continue
            n_cols = sum(irreps_target[ins[p].i_out].ir.dim for p in paths)
            cg = torch.zeros(dim * ir_b.dim, n_cols, dtype=torch.float64)  # float64; .to(dtype) casts
            gather = torch.zeros(n_cols, self.d_out, dtype=torch.float64)
            path_of_column: List[int] = []
            for p in paths:
                i = ins[p]
                ir_a, ir_o = irreps_in[i.i_in1].ir, irreps_target[i.i_out].ir
                w3j = o3.wigner_3j(ir_a.l, ir_b.l, ir_o.l, dtype=torch.float64) * i.path_weight
                c0 = len(path_of_column)
                for a in range(ir_a.dim):
                    cg[(rows[i.i_in1] + a) * ir_b.dim : (rows[i.i_in1] + a + 1) * ir_b.dim, c0 : c0 + ir_o.dim] = w3j[a]
                for k in range(ir_o.dim):
                    gather[c0 + k, outs[i.i_out] + k] = 1.0
                path_of_column += [p] * ir_o.dim
            groups.append(_FactorGroup(rows[slot], ir_b.dim, cg, gather, path_of_column))
        self.groups = nn.ModuleList(groups)

    def forward(self, u: torch.Tensor, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """u, a (D, M) component-major -> (D_target, M)."""
        w = self.weight.view(-1, self.n_paths, self.mul).transpose(0, 1)  # (paths, species, mul)
        out = torch.zeros((self.d_out, u.shape[1]), dtype=u.dtype, device=u.device)
        for group in self.groups:
            out = out + group(u, a, w, species)
        return out

    @torch.jit.unused
    def forward_e3nn(self, u: torch.Tensor, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """The same with e3nn's TensorProduct, e3nn layout (the reference)."""
        return self.tp(u, a, self.weight[species])


def _component_offsets(irreps: o3.Irreps) -> List[int]:
    """Where each irrep's components start within one channel's D components."""
    offsets, d = [], 0
    for _, ir in irreps:
        offsets.append(d)
        d += ir.dim
    return offsets


def channel_major_permutation(irreps: o3.Irreps) -> List[int]:
    """e3nn column of each channel-major column u * D + (component): for index_select."""
    mul = irreps[0].mul
    dim = irreps.dim // mul
    offsets = _component_offsets(irreps)
    perm = [0] * irreps.dim
    for slot, ((m, ir), sl) in enumerate(zip(irreps, irreps.slices())):
        for u in range(m):
            for k in range(ir.dim):
                perm[u * dim + offsets[slot] + k] = sl.start + u * ir.dim + k
    return perm


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

        # the fast path works component-major, (D, N * mul) (_Order's docstring)
        self.mul, self.d_in = channels, irreps_in.dim // channels
        offsets = _component_offsets(irreps_in)
        out_components: List[int] = []
        irrep_of_component: List[int] = []
        for i, (_, ir) in enumerate(irreps_out):
            k = in_irs.index(ir)
            out_components += list(range(offsets[k], offsets[k] + ir.dim))
            irrep_of_component += [i] * ir.dim
        self.register_buffer("out_components", torch.tensor(out_components, dtype=torch.long), persistent=False)
        self.register_buffer("irrep_of_component", torch.tensor(irrep_of_component, dtype=torch.long), persistent=False)
        self.register_buffer(
            "to_channel_major", torch.tensor(channel_major_permutation(irreps_in), dtype=torch.long), persistent=False
        )
        cm_out = channel_major_permutation(irreps_out)
        to_e3nn = [0] * len(cm_out)
        for cm, e3 in enumerate(cm_out):
            to_e3nn[e3] = cm
        self.register_buffer("to_e3nn", torch.tensor(to_e3nn, dtype=torch.long), persistent=False)

    def forward(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """a (N, irreps_in.dim), e3nn layout -> (N, irreps_out.dim), e3nn layout."""
        n = a.shape[0]
        # component-major (D, N * mul): _Order's docstring
        a_t = a.index_select(1, self.to_channel_major).view(n * self.mul, self.d_in).t().contiguous()
        # the linear term: one weight per species, output irrep and channel
        w1 = self.w1.permute(1, 0, 2).index_select(0, self.irrep_of_component)  # (D_out, species, mul)
        out = a_t.index_select(0, self.out_components) * w1.index_select(1, species).view(-1, n * self.mul)
        u = a_t
        last = len(self.orders) - 1
        for k, order in enumerate(self.orders):
            u = order(u, a_t, species)
            if k == last:
                out = out + u
            else:
                out = out + u.index_select(0, self.out_components)
        out = (out * self.inv_sqrt_terms).t().reshape(n, -1)
        return out.index_select(1, self.to_e3nn)

    @torch.jit.unused
    def forward_e3nn(self, a: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """The same product with e3nn's TensorProducts in e3nn's layout (the reference for
        tests/model/test_model_product.py)."""
        w = self.w1[species]  # (N, n_out_irreps, channels)
        parts: List[torch.Tensor] = []
        for i, (start, stop) in enumerate(self._out_slices):
            block = a[:, start:stop].reshape(a.shape[0], w.shape[2], -1)
            parts.append((block * w[:, i, :].unsqueeze(-1)).reshape(a.shape[0], -1))
        out = torch.cat(parts, dim=1)
        u = a
        last = len(self.orders) - 1
        for k, order in enumerate(self.orders):
            u = order.forward_e3nn(u, a, species)
            if k == last:
                out = out + u
            else:
                out = out + torch.cat([u[:, start:stop] for start, stop in self._out_slices], dim=1)
        return out * self.inv_sqrt_terms
