"""The message tensor product of a block, contracted in a cheaper order.

e3nn's `TensorProduct` in "uvu" mode with per-edge weights (the messages of
forcefield/model/interaction.py) computes, for every path p = (l1, l2 -> l3) and channel u,

    out_p[e, u, k] = a_p w[e, u, p] sum_ij C_p[i, j, k] x[e, u, i] Y[e, j]

path by path: it slices x, Y and w per path, forms the outer products x (x) Y per channel
and contracts each with the Wigner 3j symbol C_p. On CPU that is memory-bound, and its
backward pays a zero-filled full-size gradient for every slice. Here the sum over j, which
does not involve the channel, goes first, once per edge and for all paths of an input
irrep l1 together:

    Z[e, i, (p, k)] = sum_j Y[e, j] (a_p C_p[i, j, k])          (one (E x 9) matmul)
    out[e, u, (p, k)] = w[e, u, p] sum_i x[e, u, i] Z[e, i, (p, k)]   (one bmm)

with x, w split once (`torch.split`, whose backward is one concatenation). The output is
laid out channel-major, (E, mul, sum of the paths' d3), which is cheaper to produce;
`perm` maps it to e3nn's layout and is applied after aggregation, on nodes rather than
edges. Same numbers as e3nn up to rounding: tests/model/test_model_fast_tp.py (values and
gradients to 1e-12 in float64, equivariance, TorchScript). No parameters; the constants
are non-persistent buffers, so state dicts are unchanged.
"""

from typing import List

import torch
from e3nn import o3
from torch import nn


class _InputIrrep(nn.Module):
    """All paths that start from input irrep `slot` (multiplicity mul, dimension d1)."""

    def __init__(self, slot: int, mul: int, d1: int, cg: torch.Tensor, repeats: List[int]):
        super().__init__()
        self.slot, self.mul, self.d1 = slot, mul, d1
        self.k = int(cg.shape[2])
        self.n_paths = len(repeats)
        # float64 here; the model's .to(dtype) casts it (computing it in float32 and casting up
        # would cost a float64 model its last 8 digits)
        self.register_buffer("cg", cg.reshape(cg.shape[0], -1), persistent=False)
        self.register_buffer("repeats", torch.tensor(repeats, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (E, mul * d1), y (E, dim_y), w (E, paths * mul) -> (E, mul, k)."""
        e = x.shape[0]
        z = (y @ self.cg).reshape(e, self.d1, self.k)
        w_cols = w.reshape(e, self.n_paths, self.mul).repeat_interleave(self.repeats, dim=1, output_size=self.k)
        x = x.reshape(e, self.mul, self.d1)
        if self.d1 == 1:  # an outer product: bmm with an inner dimension of 1 is ~7x slower
            xz = x * z
        else:
            xz = torch.bmm(x, z)
        return xz * w_cols.transpose(1, 2)


class ChannelwiseTP(nn.Module):
    """The messages of an e3nn uvu `TensorProduct` `tp` (per-sample weights, second input of
    multiplicity 1, one multiplicity throughout, one path per output irrep), channel-major:
    forward(x1, x2, weights)[:, perm] == tp(x1, x2, weights)."""

    in_sizes: List[int]
    w_sizes: List[int]

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        ins = tp.instructions
        muls = {mul for mul, _ in tp.irreps_in1} | {mul for mul, _ in tp.irreps_out}
        one_path_per_output = all(sum(i.i_out == s for i in ins) == 1 for s in range(len(tp.irreps_out)))
        in_order = [i.i_in1 for i in ins] == sorted(i.i_in1 for i in ins)
        if (
            any(i.connection_mode != "uvu" or not i.has_weight for i in ins)
            or tp.shared_weights
            or any(mul != 1 for mul, _ in tp.irreps_in2)
            or len(muls) != 1
            or not one_path_per_output
            or not in_order
        ):
            raise ValueError(f"ChannelwiseTP: unsupported tensor product {tp}")
        mul = muls.pop()
        self.mul = mul
        self.in_sizes = [m * ir.dim for m, ir in tp.irreps_in1]
        slices_2 = tp.irreps_in2.slices()
        dim_y = tp.irreps_in2.dim
        self.w_sizes = []
        groups = []
        first_column = {}  # path -> its first column within the channel-major output
        k_total = 0
        for slot, (_, ir1) in enumerate(tp.irreps_in1):
            paths = [p for p, i in enumerate(ins) if i.i_in1 == slot]
            self.w_sizes.append(len(paths) * mul)
            if not paths:
                continue
            d3s = [tp.irreps_out[ins[p].i_out].ir.dim for p in paths]
            cg = torch.zeros(dim_y, ir1.dim, sum(d3s), dtype=torch.float64)
            col = 0
            for p, d3 in zip(paths, d3s):
                i = ins[p]
                l2, l3 = tp.irreps_in2[i.i_in2].ir.l, tp.irreps_out[i.i_out].ir.l
                w3j = o3.wigner_3j(ir1.l, l2, l3, dtype=torch.float64)  # (d1, d2, d3)
                s2 = slices_2[i.i_in2]
                cg[s2.start : s2.stop, :, col : col + d3] = i.path_weight * w3j.permute(1, 0, 2)
                first_column[p] = k_total + col
                col += d3
            groups.append(_InputIrrep(slot, mul, ir1.dim, cg, d3s))
            k_total += col
        self.groups = nn.ModuleList(groups)
        perm = []  # e3nn column -> channel-major column u * k_total + k
        for slot, (m, ir) in enumerate(tp.irreps_out):
            (p,) = [p for p, i in enumerate(ins) if i.i_out == slot]
            perm += [u * k_total + first_column[p] + k for u in range(m) for k in range(ir.dim)]
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.dim_out = tp.irreps_out.dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        xs = torch.split(x1, self.in_sizes, dim=1)
        ws = torch.split(weights, self.w_sizes, dim=1)
        parts: List[torch.Tensor] = []
        for group in self.groups:
            parts.append(group(xs[group.slot], x2, ws[group.slot]))
        return torch.cat(parts, dim=2).reshape(x1.shape[0], self.dim_out)

    def to_e3nn_layout(self, out: torch.Tensor) -> torch.Tensor:
        """Columns of a forward() output (or of a sum of them) in e3nn's order."""
        return out.index_select(1, self.perm)
