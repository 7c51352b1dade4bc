"""The message tensor product of a block, contracted in a cheaper order.

e3nn's `TensorProduct` in "uvu" mode with per-edge weights (the messages of
forcefield/model/interaction.py) computes, for every path p = (l1, l2 -> l3) and channel u,

    out_p[e, k, u] = a_p w[e, p, u] sum_ij C_p[i, j, k] x[e, i, u] Y[e, j]

path by path: it slices x, Y and w per path, forms the outer products x (x) Y per channel
and contracts each with the Wigner 3j symbol C_p. On CPU that is memory-bound (a few
flops per number moved), and its backward pays a zero-filled full-size gradient for every
slice. Here all paths go at once, in three dense operations per edge:

    Z[e, c, i]   = sum_j Y[e, j] C[j, c, i]      (E x 9) @ (9 x K*D1): the 3j symbols of all
                                               paths, zero where row i is not path c's input
    P[e, c, u]   = sum_i Z[e, c, i] x[e, i, u]    one bmm, (K x D1) @ (D1 x mul) per edge
    out[e, c, u] = P[e, c, u] w[e, p(c), u]     the weights' rows repeated per component
                                               (one index_select of contiguous rows)

with c = (p, k) running over all paths' output components (K of them; 35 for lmax 2 with
every hidden irrep as output) and i over the components of all input irreps (D1; 9 for
lmax 2). Inputs and outputs are component-major: x is (E, D1, mul) (`to_component_major`,
applied to node features before they are gathered onto edges) and the output (E, K, mul);
`to_e3nn_layout` maps a sum of outputs to e3nn's layout after aggregation, on nodes rather
than edges. Every operation then reads and writes contiguous rows of `mul` numbers. The
zero blocks of C cost flops (D1 instead of d1 per path) but no extra passes over memory,
which is what a CPU pays for here.

`vjp` is the product's backward written out (the inference path of
forcefield/model/forcefield.py uses it instead of autograd): it never forms `out`, and
its weight gradient comes out in e3nn's weight order without a transpose.

Same numbers as e3nn up to rounding: tests/model/test_model_fast_tp.py (values and
gradients to 1e-12 in float64, second derivatives, the explicit VJP, equivariance,
TorchScript). No parameters; the constants are non-persistent buffers, so state dicts are
unchanged.
"""

from typing import Final, List, Optional, Tuple

import torch
from e3nn import o3
from torch import nn


class ChannelwiseTP(nn.Module):
    """The messages of an e3nn uvu `TensorProduct` `tp` (per-sample weights, second input of
    multiplicity 1, one multiplicity throughout, one path per output irrep), component-major:
    to_e3nn_layout(forward(to_component_major(x1), x2, weights)) == tp(x1, x2, weights).

    fused_ops (a TorchScript constant, False unless export_model sets it): the calls with
    fused=True go through the operators forcefield::channelwise_tp(_sum, _vjp). False leaves them
    out of the scripted code, so the module scripts and loads with torch alone."""

    fused_ops: Final[bool]

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        self.fused_ops = False
        ins = tp.instructions
        muls = {mul for mul, _ in tp.irreps_in1} | {mul for mul, _ in tp.irreps_out}
        one_path_per_output = all(sum(i.i_out == s for i in ins) == 1 for s in range(len(tp.irreps_out)))
        if (
            not ins
            or any(i.connection_mode != "uvu" or not i.has_weight for i in ins)
            or tp.shared_weights
            or any(mul != 1 for mul, _ in tp.irreps_in2)
            or len(muls) != 1
            or not one_path_per_output
        ):
            raise ValueError(f"ChannelwiseTP: unsupported tensor product {tp}")
        mul = muls.pop()
        self.mul = mul
        self.n_paths = len(ins)
        # input components: the input irreps one after the other (D1 of them)
        row0: List[int] = []
        d1_total = 0
        for _, ir in tp.irreps_in1:
            row0.append(d1_total)
            d1_total += ir.dim
        self.d1 = d1_total
        # output components: the paths in instruction order (K of them)
        col0: List[int] = []
        path_of_column: List[int] = []
        for p, i in enumerate(ins):
            col0.append(len(path_of_column))
            path_of_column += [p] * tp.irreps_out[i.i_out].ir.dim
        self.k = len(path_of_column)
        slices_2 = tp.irreps_in2.slices()
        cg = torch.zeros(tp.irreps_in2.dim, self.k, d1_total, dtype=torch.float64)
        for p, i in enumerate(ins):
            ir1, ir2, ir3 = tp.irreps_in1[i.i_in1].ir, tp.irreps_in2[i.i_in2].ir, tp.irreps_out[i.i_out].ir
            w3j = o3.wigner_3j(ir1.l, ir2.l, ir3.l, dtype=torch.float64)  # (d1, d2, d3)
            s2, r, c = slices_2[i.i_in2], row0[i.i_in1], col0[p]
            cg[s2.start : s2.stop, c : c + ir3.dim, r : r + ir1.dim] = i.path_weight * w3j.permute(1, 2, 0)
        # float64 here; the model's .to(dtype) casts them (computing them in float32 and casting
        # up would cost a float64 model its last 8 digits)
        self.register_buffer("cg", cg.reshape(cg.shape[0], -1), persistent=False)  # (j, (c, i))
        # the same constants with (c, i) swapped, for the backward's g_y (see _vjp)
        self.register_buffer("cg_ic", cg.transpose(1, 2).reshape(cg.shape[0], -1).contiguous(), persistent=False)
        self.register_buffer("path_of_column", torch.tensor(path_of_column, dtype=torch.long), persistent=False)
        # component-major column i * mul + u <- e3nn column (slot start + u * d1 + a)
        in_perm = [0] * tp.irreps_in1.dim
        for slot, ((m, ir), sl) in enumerate(zip(tp.irreps_in1, tp.irreps_in1.slices())):
            for u in range(m):
                for a in range(ir.dim):
                    in_perm[(row0[slot] + a) * mul + u] = sl.start + u * ir.dim + a
        self.register_buffer("in_perm", torch.tensor(in_perm, dtype=torch.long), persistent=False)
        # e3nn output column -> component-major column c * mul + u
        perm: List[int] = []
        for slot, (m, ir) in enumerate(tp.irreps_out):
            (p,) = [p for p, i in enumerate(ins) if i.i_out == slot]
            perm += [(col0[p] + a) * mul + u for u in range(m) for a in range(ir.dim)]
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)
        self.dim_out = tp.irreps_out.dim

    def to_component_major(self, x1: torch.Tensor) -> torch.Tensor:
        """First-input features (e3nn layout) in the component-major layout forward() takes."""
        return x1.index_select(1, self.in_perm)

    def to_e3nn_layout(self, out: torch.Tensor) -> torch.Tensor:
        """Columns of a forward() output (or of a sum of them) in e3nn's order."""
        return out.index_select(1, self.perm)

    def forward(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """x (E, D1 * mul) component-major, y (E, dim_y), w (E, paths * mul) in e3nn's weight
        order -> (E, K * mul) component-major. fused (with fused_ops): through the operator
        forcefield::channelwise_tp (CPU tensors; first derivatives only, see the module doc)."""
        if self.fused_ops and fused and x.device.type == "cpu":
            return torch.ops.forcefield.channelwise_tp(x, y, w, self.cg, self.path_of_column)
        return channelwise_tp(x, y, w, self.cg, self.path_of_column)

    def summed(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rows: torch.Tensor, num_rows: int, fused: bool = False
    ) -> torch.Tensor:
        """The messages forward(x, y, w) summed per row: (num_rows, K * mul), edge e's into row
        rows[e] (its centre atom). fused (with fused_ops): through the operator
        forcefield::channelwise_tp_sum, which never writes the per-edge messages (CPU tensors;
        first derivatives only)."""
        if self.fused_ops and fused and x.device.type == "cpu":
            return torch.ops.forcefield.channelwise_tp_sum(x, y, w, self.cg, self.path_of_column, rows, num_rows)
        return channelwise_tp_sum(x, y, w, self.cg, self.path_of_column, rows, num_rows)

    @torch.jit.export
    def vjp(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        g_out: torch.Tensor,
        need_x: bool = True,
        fused: bool = False,
        g_rows: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(g_x, g_y, g_w): the gradients of sum(g_out * forward(x, y, w)), computed without a
        graph (the inputs are taken as values). g_x is an empty tensor unless need_x. g_rows:
        g_out holds rows, edge e's gradient is row g_rows[e] (that of a sum per centre atom).
        fused (with fused_ops): through the operator forcefield::channelwise_tp_vjp (CPU
        tensors), which reads those rows in place."""
        if self.fused_ops and fused and x.device.type == "cpu":
            return torch.ops.forcefield.channelwise_tp_vjp(x, y, w, self.cg, self.path_of_column, g_out, need_x, g_rows)
        return _vjp(x, y, w, self.cg, self.cg_ic, self.path_of_column, g_out, need_x, g_rows)


def _parts(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cg: torch.Tensor, path_of_column: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z (E, K, D1), P (E, K, mul), the weights per component (E, K, mul))."""
    e, k = x.shape[0], path_of_column.shape[0]
    d1 = cg.shape[1] // k
    mul = x.shape[1] // d1
    z = (y @ cg).view(e, k, d1)
    x3 = x.view(e, d1, mul)
    if d1 == 1:  # an outer product: bmm with an inner dimension of 1 is ~7x slower
        prod = z * x3
    else:
        prod = torch.bmm(z, x3)
    wide = w.view(e, w.shape[1] // mul, mul).index_select(1, path_of_column)
    return z, prod, wide


def channelwise_tp(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cg: torch.Tensor, path_of_column: torch.Tensor
) -> torch.Tensor:
    """ChannelwiseTP.forward in plain torch (cg, path_of_column: its buffers); also the Python
    implementation of the operator forcefield::channelwise_tp."""
    _, prod, wide = _parts(x, y, w, cg, path_of_column)
    if torch.is_grad_enabled():
        out = prod * wide
    else:  # nothing keeps prod
        out = prod.mul_(wide)
    return out.view(x.shape[0], prod.shape[1] * prod.shape[2])


def channelwise_tp_sum(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    cg: torch.Tensor,
    path_of_column: torch.Tensor,
    rows: torch.Tensor,
    num_rows: int,
) -> torch.Tensor:
    """ChannelwiseTP.summed in plain torch; also the Python implementation of the operator
    forcefield::channelwise_tp_sum."""
    messages = channelwise_tp(x, y, w, cg, path_of_column)
    out = torch.zeros((num_rows, messages.shape[1]), dtype=messages.dtype, device=messages.device)
    return out.index_add(0, rows, messages)


def channelwise_tp_vjp(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    cg: torch.Tensor,
    path_of_column: torch.Tensor,
    g_out: torch.Tensor,
    need_x: bool,
    g_rows: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ChannelwiseTP.vjp in plain torch; also the Python implementation of the operator
    forcefield::channelwise_tp_vjp (which gets no cg_ic buffer: it is derived here)."""
    k = path_of_column.shape[0]
    d1 = cg.shape[1] // k
    cg_ic = cg.view(cg.shape[0], k, d1).transpose(1, 2).reshape(cg.shape[0], d1 * k)
    return _vjp(x, y, w, cg, cg_ic, path_of_column, g_out, need_x, g_rows)


def _vjp(
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    cg: torch.Tensor,
    cg_ic: torch.Tensor,
    path_of_column: torch.Tensor,
    g_out: torch.Tensor,
    need_x: bool,
    g_rows: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """channelwise_tp_vjp with cg_ic (cg with its (c, i) columns swapped to (i, c)) given."""
    if g_rows is not None:
        g_out = g_out.index_select(0, g_rows)
    e = x.shape[0]
    z, prod, wide = _parts(x, y, w, cg, path_of_column)
    k, d1, mul = z.shape[1], z.shape[2], prod.shape[2]
    n_paths = w.shape[1] // mul
    g3 = g_out.view(e, k, mul)
    g_w = torch.zeros((e, n_paths, mul), dtype=x.dtype, device=x.device)
    g_w = g_w.index_add_(1, path_of_column, g3 * prod).view(e, n_paths * mul)
    g_prod = g3.mul(wide)
    x3 = x.view(e, d1, mul)
    if d1 == 1:
        g_zt = (x3 * g_prod).sum(dim=2).view(e, 1, k)
    else:
        g_zt = torch.bmm(x3, g_prod.transpose(1, 2))  # (E, D1, K)
    # (dim_y, D1*K) @ (D1*K, E), transposed: BLAS does this ~4x faster than the same
    # product as (E, D1*K) @ (D1*K, dim_y), whose output has only 9 columns
    g_y = (cg_ic @ g_zt.reshape(e, d1 * k).t()).t()
    if not need_x:
        return torch.empty(0, dtype=x.dtype, device=x.device), g_y, g_w
    if d1 == 1:
        g_x = (z * g_prod).sum(dim=1)
    else:
        g_x = torch.bmm(z.transpose(1, 2), g_prod).view(e, d1 * mul)
    return g_x, g_y, g_w


# The operators an exported model calls where it runs on CPU without create_graph
# (ForceField's first-order and inference paths). Here their implementation is the plain
# torch code above, composite (autograd goes through its operations), so a model gives the
# same numbers eagerly, scripted and exported; the LAMMPS plugin registers the same schemas
# with a fused C++ kernel (export/pair_style/channelwise_tp.cpp). Defined once per process.
FUSED_OPERATORS = ("forcefield::channelwise_tp", "forcefield::channelwise_tp_sum", "forcefield::channelwise_tp_vjp")
_OPERATORS = torch.library.Library("forcefield", "DEF")
_OPERATORS.define("channelwise_tp(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column) -> Tensor")
_OPERATORS.define(
    "channelwise_tp_sum(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column, Tensor rows, "
    "int num_rows) -> Tensor"
)
_OPERATORS.define(
    "channelwise_tp_vjp(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column, Tensor g_out, "
    "bool need_x, Tensor? g_rows=None) -> (Tensor, Tensor, Tensor)"
)
_OPERATORS.impl("channelwise_tp", channelwise_tp, "CompositeImplicitAutograd")
_OPERATORS.impl("channelwise_tp_sum", channelwise_tp_sum, "CompositeImplicitAutograd")
_OPERATORS.impl("channelwise_tp_vjp", channelwise_tp_vjp, "CompositeImplicitAutograd")
