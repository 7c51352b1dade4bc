/* ----------------------------------------------------------------------
   forcefield::channelwise_tp, forcefield::channelwise_tp_sum and
   forcefield::channelwise_tp_vjp: the message tensor product of
   forcefield/model/fast_tp.py (ChannelwiseTP: the messages, their sum per
   centre atom, the explicit VJP) as one fused pass per edge, for CPU tensors.

   The Python package registers the same operators with the pure-torch
   code of fast_tp.py as their implementation (the reference); an exported
   model calls them only in its first-order inference paths, so a model runs
   the same numbers in Python and in LAMMPS. Here, in the pair-style plugin,
   they get this kernel instead:

     out[e, c, u] = w[e, p(c), u] * sum_i z[e, c, i] x[e, i, u],
     z[e, c, i]   = sum_j cg[j, c, i] y[e, j]

   The 3j matrix cg is mostly zeros (83 non-zeros of 2835 for lmax 2): the
   kernel walks only its non-zero (c, i) pairs, one edge at a time, with every
   row of `mul` channels in cache, and its backward recomputes the forward
   values instead of reading them from memory. The torch version instead does
   three batched matrix products over all (c, i) plus a handful of full passes
   over (edges x K x mul) tensors; the two agree to rounding
   (tests/export/test_channelwise_tp_kernel.py: 1e-12 in float64).

   Only first derivatives: the backward registered for autograd is computed
   without a graph, so no create_graph (training) through this operator; the
   model never calls it there.
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#ifndef FORCEFIELD_OPS_NAMESPACE
#define FORCEFIELD_OPS_NAMESPACE forcefield
#endif

namespace {

using at::Tensor;

// the non-zero (c, i) pairs of cg, each with its (j, value) terms
template <typename scalar_t> struct Pairs {
  std::vector<int64_t> c, i, first;    // pair p: terms first[p] .. first[p+1]-1
  std::vector<int64_t> j;
  std::vector<scalar_t> v;
  std::vector<int64_t> pair_of_c;    // pairs of column c: pair_of_c[c] .. pair_of_c[c+1]-1
};

template <typename scalar_t> Pairs<scalar_t> pairs_of(const Tensor &cg, int64_t k, int64_t d1)
{
  Pairs<scalar_t> s;
  const Tensor cgc = cg.contiguous();
  const scalar_t *a = cgc.data_ptr<scalar_t>();
  const int64_t dim_y = cgc.size(0);
  s.pair_of_c.push_back(0);
  for (int64_t c = 0; c < k; ++c) {
    for (int64_t i = 0; i < d1; ++i) {
      bool any = false;
      for (int64_t j = 0; j < dim_y; ++j) {
        const scalar_t v = a[j * k * d1 + c * d1 + i];
        if (v == scalar_t(0)) continue;
        if (!any) {
          s.c.push_back(c);
          s.i.push_back(i);
          s.first.push_back((int64_t) s.j.size());
          any = true;
        }
        s.j.push_back(j);
        s.v.push_back(v);
      }
    }
    s.pair_of_c.push_back((int64_t) s.c.size());
  }
  s.first.push_back((int64_t) s.j.size());
  return s;
}

struct Shapes {
  int64_t e, k, d1, mul, n_paths, dim_y;
  Tensor poc;    // path_of_column as contiguous int64, checked
};

Shapes check(const Tensor &x, const Tensor &y, const Tensor &w, const Tensor &cg, const Tensor &path_of_column)
{
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu() && w.device().is_cpu() && cg.device().is_cpu(),
              "channelwise_tp: this kernel is for CPU tensors");
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && w.dim() == 2 && cg.dim() == 2 && path_of_column.dim() == 1,
              "channelwise_tp: expected x (E, D1*mul), y (E, dim_y), w (E, paths*mul), cg (dim_y, K*D1), "
              "path_of_column (K)");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.scalar_type() == w.scalar_type() &&
                  x.scalar_type() == cg.scalar_type(),
              "channelwise_tp: x, y, w and cg must have one dtype");
  Shapes s;
  s.e = x.size(0);
  s.k = path_of_column.size(0);
  s.dim_y = cg.size(0);
  TORCH_CHECK(s.k > 0 && cg.size(1) % s.k == 0, "channelwise_tp: cg's columns are not K * D1");
  s.d1 = cg.size(1) / s.k;
  TORCH_CHECK(s.d1 > 0 && x.size(1) % s.d1 == 0, "channelwise_tp: x's columns are not D1 * mul");
  s.mul = x.size(1) / s.d1;
  TORCH_CHECK(s.mul > 0 && w.size(1) % s.mul == 0, "channelwise_tp: w's columns are not paths * mul");
  s.n_paths = w.size(1) / s.mul;
  TORCH_CHECK(y.size(0) == s.e && w.size(0) == s.e && y.size(1) == s.dim_y,
              "channelwise_tp: x, y and w must have one row per edge, y dim_y columns");
  s.poc = path_of_column.to(at::kLong).contiguous();
  const int64_t *p = s.poc.data_ptr<int64_t>();
  for (int64_t c = 0; c < s.k; ++c)
    TORCH_CHECK(p[c] >= 0 && p[c] < s.n_paths, "channelwise_tp: path_of_column out of range");
  return s;
}

// grain: edges per task of at::parallel_for
constexpr int64_t GRAIN = 64;

#define FF_ROWS_NS rows_any
#define FF_ROWS_TARGET
#include "channelwise_tp_rows.h"
#undef FF_ROWS_NS
#undef FF_ROWS_TARGET

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FF_ROWS_NS rows_avx2
#define FF_ROWS_TARGET __attribute__((target("avx2,fma")))
#include "channelwise_tp_rows.h"
#undef FF_ROWS_NS
#undef FF_ROWS_TARGET

// the AVX2 + FMA loops when the CPU has them (2-3x faster than SSE2's at 16 channels);
// FORCEFIELD_KERNEL_ISA=generic forces the generic ones (tests compare the two)
bool use_avx2()
{
  static const bool cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char *isa = std::getenv("FORCEFIELD_KERNEL_ISA");
  return cpu_has && !(isa && std::string(isa) == "generic");
}
#else
bool use_avx2()
{
  return false;
}
#endif

template <typename scalar_t, int64_t MUL>
void forward_kernel(const Shapes &s, const Pairs<scalar_t> &pr, const int64_t *poc, const scalar_t *x,
                    const scalar_t *y, const scalar_t *w, scalar_t *out, const int64_t *out_rows)
{
  const bool avx2 = use_avx2();
  auto rows = [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (avx2) return rows_avx2::forward_rows<scalar_t, MUL>(s, pr, poc, x, y, w, out, out_rows, begin, end);
#endif
    (void) avx2;
    rows_any::forward_rows<scalar_t, MUL>(s, pr, poc, x, y, w, out, out_rows, begin, end);
  };
  if (out_rows)
    rows(0, s.e);    // sums into shared rows: one thread
  else
    at::parallel_for(0, s.e, GRAIN, rows);
}

template <typename scalar_t, int64_t MUL>
void vjp_kernel(const Shapes &s, const Pairs<scalar_t> &pr, const int64_t *poc, const scalar_t *x,
                const scalar_t *y, const scalar_t *w, const scalar_t *g, const int64_t *g_rows, scalar_t *gx,
                scalar_t *gy, scalar_t *gw)
{
  const bool avx2 = use_avx2();
  at::parallel_for(0, s.e, GRAIN, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (avx2) return rows_avx2::vjp_rows<scalar_t, MUL>(s, pr, poc, x, y, w, g, g_rows, gx, gy, gw, begin, end);
#endif
    (void) avx2;
    rows_any::vjp_rows<scalar_t, MUL>(s, pr, poc, x, y, w, g, g_rows, gx, gy, gw, begin, end);
  });
}

// f(std::integral_constant<int64_t, MUL>) with MUL = mul for the usual channel counts, else 0
template <typename F> void with_mul(int64_t mul, F &&f)
{
  switch (mul) {
    case 8: f(std::integral_constant<int64_t, 8>()); break;
    case 16: f(std::integral_constant<int64_t, 16>()); break;
    case 32: f(std::integral_constant<int64_t, 32>()); break;
    case 64: f(std::integral_constant<int64_t, 64>()); break;
    case 128: f(std::integral_constant<int64_t, 128>()); break;
    default: f(std::integral_constant<int64_t, 0>());
  }
}

// rows of centre atoms: int64, one per edge, each in [0, num_rows)
Tensor checked_rows(const Tensor &rows, int64_t e, int64_t num_rows, const char *what)
{
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == e && rows.device().is_cpu(), what, ": expected one row index per edge");
  const Tensor r = rows.to(at::kLong).contiguous();
  if (e > 0) {
    const auto [lo, hi] = at::aminmax(r);
    TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < num_rows, what, ": row index out of range");
  }
  return r;
}

// the messages (E, K*mul), or with `rows` their sums per row: (num_rows, K*mul)
Tensor forward_cpu(const Tensor &x_, const Tensor &y_, const Tensor &w_, const Tensor &cg, const Tensor &path_of_column,
                   const c10::optional<Tensor> &rows, int64_t num_rows)
{
  const Shapes s = check(x_, y_, w_, cg, path_of_column);
  const Tensor x = x_.contiguous(), y = y_.contiguous(), w = w_.contiguous();
  Tensor r;
  if (rows) {
    TORCH_CHECK(num_rows >= 0, "channelwise_tp_sum: num_rows must be >= 0");
    r = checked_rows(*rows, s.e, num_rows, "channelwise_tp_sum");
    // several threads: the messages in parallel, then their sums (rows would race)
    if (at::get_num_threads() > 1 && s.e > GRAIN)
      return at::zeros({num_rows, s.k * s.mul}, x.options())
          .index_add_(0, r, forward_cpu(x, y, w, cg, path_of_column, c10::nullopt, 0));
  }
  Tensor out = rows ? at::zeros({num_rows, s.k * s.mul}, x.options()) : at::empty({s.e, s.k * s.mul}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp", [&] {
    const Pairs<scalar_t> pr = pairs_of<scalar_t>(cg, s.k, s.d1);
    with_mul(s.mul, [&](auto m) {
      forward_kernel<scalar_t, decltype(m)::value>(s, pr, s.poc.data_ptr<int64_t>(), x.data_ptr<scalar_t>(),
                                                   y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                   out.data_ptr<scalar_t>(), rows ? r.data_ptr<int64_t>() : nullptr);
    });
  });
  return out;
}

Tensor channelwise_tp_cpu(const Tensor &x, const Tensor &y, const Tensor &w, const Tensor &cg,
                          const Tensor &path_of_column)
{
  return forward_cpu(x, y, w, cg, path_of_column, c10::nullopt, 0);
}

Tensor channelwise_tp_sum_cpu(const Tensor &x, const Tensor &y, const Tensor &w, const Tensor &cg,
                              const Tensor &path_of_column, const Tensor &rows, int64_t num_rows)
{
  return forward_cpu(x, y, w, cg, path_of_column, rows, num_rows);
}

std::tuple<Tensor, Tensor, Tensor> channelwise_tp_vjp_cpu(const Tensor &x_, const Tensor &y_, const Tensor &w_,
                                                          const Tensor &cg, const Tensor &path_of_column,
                                                          const Tensor &g_out, bool need_x,
                                                          const c10::optional<Tensor> &g_rows)
{
  const Shapes s = check(x_, y_, w_, cg, path_of_column);
  TORCH_CHECK(g_out.dim() == 2 && (g_rows || g_out.size(0) == s.e) && g_out.size(1) == s.k * s.mul &&
                  g_out.scalar_type() == x_.scalar_type() && g_out.device().is_cpu(),
              "channelwise_tp_vjp: g_out must be (E, K*mul) like the product's output (or (rows, K*mul) with g_rows)");
  const Tensor x = x_.contiguous(), y = y_.contiguous(), w = w_.contiguous(), g = g_out.contiguous();
  Tensor r;
  if (g_rows) r = checked_rows(*g_rows, s.e, g_out.size(0), "channelwise_tp_vjp");
  Tensor gx = need_x ? at::empty_like(x) : at::empty({0}, x.options());
  Tensor gy = at::empty_like(y), gw = at::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp_vjp", [&] {
    const Pairs<scalar_t> pr = pairs_of<scalar_t>(cg, s.k, s.d1);
    with_mul(s.mul, [&](auto m) {
      vjp_kernel<scalar_t, decltype(m)::value>(s, pr, s.poc.data_ptr<int64_t>(), x.data_ptr<scalar_t>(),
                                               y.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                               g_rows ? r.data_ptr<int64_t>() : nullptr,
                                               need_x ? gx.data_ptr<scalar_t>() : nullptr, gy.data_ptr<scalar_t>(),
                                               gw.data_ptr<scalar_t>());
    });
  });
  return {gx, gy, gw};
}

// autograd for channelwise_tp and channelwise_tp_sum: first derivatives by the fused
// backward (no graph); for the sum, the backward reads each edge's gradient from its row
class ChannelwiseTPFunction : public torch::autograd::Function<ChannelwiseTPFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext *ctx, const Tensor &x, const Tensor &y, const Tensor &w,
                        const Tensor &cg, const Tensor &path_of_column, const c10::optional<Tensor> &rows,
                        int64_t num_rows)
  {
    ctx->save_for_backward({x, y, w, cg, path_of_column, rows ? *rows : Tensor()});
    return forward_cpu(x, y, w, cg, path_of_column, rows, num_rows);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads)
  {
    const auto saved = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0);    // false where only the edge vectors are wanted
    const c10::optional<Tensor> rows = saved[5].defined() ? c10::optional<Tensor>(saved[5]) : c10::nullopt;
    auto [gx, gy, gw] =
        channelwise_tp_vjp_cpu(saved[0], saved[1], saved[2], saved[3], saved[4], grads[0], need_x, rows);
    return {need_x ? gx : Tensor(), gy, gw, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor channelwise_tp_autograd(const Tensor &x, const Tensor &y, const Tensor &w, const Tensor &cg,
                               const Tensor &path_of_column)
{
  return ChannelwiseTPFunction::apply(x, y, w, cg, path_of_column, c10::nullopt, 0);
}

Tensor channelwise_tp_sum_autograd(const Tensor &x, const Tensor &y, const Tensor &w, const Tensor &cg,
                                   const Tensor &path_of_column, const Tensor &rows, int64_t num_rows)
{
  return ChannelwiseTPFunction::apply(x, y, w, cg, path_of_column, c10::optional<Tensor>(rows), num_rows);
}

}    // namespace

// Called by the pair style: links this file (and so the registrations below) into static
// LAMMPS builds, whose linker drops object files that nothing refers to.
bool forcefield_channelwise_tp_linked()
{
  return true;
}

TORCH_LIBRARY(FORCEFIELD_OPS_NAMESPACE, m)
{
  m.def("channelwise_tp(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column) -> Tensor");
  m.def("channelwise_tp_sum(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column, Tensor rows, "
        "int num_rows) -> Tensor");
  m.def("channelwise_tp_vjp(Tensor x, Tensor y, Tensor w, Tensor cg, Tensor path_of_column, Tensor g_out, "
        "bool need_x, Tensor? g_rows=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(FORCEFIELD_OPS_NAMESPACE, CPU, m)
{
  m.impl("channelwise_tp", &channelwise_tp_cpu);
  m.impl("channelwise_tp_sum", &channelwise_tp_sum_cpu);
  m.impl("channelwise_tp_vjp", &channelwise_tp_vjp_cpu);
}

TORCH_LIBRARY_IMPL(FORCEFIELD_OPS_NAMESPACE, Autograd, m)
{
  m.impl("channelwise_tp", &channelwise_tp_autograd);
  m.impl("channelwise_tp_sum", &channelwise_tp_sum_autograd);
}
