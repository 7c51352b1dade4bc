/* The per-edge loops of channelwise_tp.cpp, for edges [begin, end). Included twice
   by channelwise_tp.cpp: once for any CPU (FF_ROWS_TARGET empty) and, on x86-64,
   once compiled for AVX2 + FMA (chosen at run time when the CPU has them), so the
   plugin needs no -march flag and runs on any node of a cluster. No include guard,
   on purpose. Expects Shapes and Pairs<scalar_t> declared, FF_ROWS_NS and
   FF_ROWS_TARGET defined. */

namespace FF_ROWS_NS {

// MUL > 0: the channel count as a compile-time constant (the row loops unrolled, the
// accumulators in registers); MUL == 0: any channel count, read from s.mul
// out_rows: nullptr writes edge e's messages to row e of out; else adds them to row
// out_rows[e] (the sum per centre atom; the caller runs such a call on one thread only)
template <typename scalar_t, int64_t MUL>
FF_ROWS_TARGET void forward_rows(const Shapes &s, const Pairs<scalar_t> &pr, const int64_t *poc, const scalar_t *x,
                                 const scalar_t *y, const scalar_t *w, scalar_t *out, const int64_t *out_rows,
                                 int64_t begin, int64_t end)
{
  const int64_t mul = MUL > 0 ? MUL : s.mul, npair = (int64_t) pr.c.size();
  {
    std::vector<scalar_t> z(npair);
    scalar_t acc_fixed[MUL > 0 ? MUL : 1];
    std::vector<scalar_t> acc_any(MUL > 0 ? 0 : mul);
    scalar_t *acc = MUL > 0 ? acc_fixed : acc_any.data();
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t *xe = x + e * s.d1 * mul, *ye = y + e * s.dim_y, *we = w + e * s.n_paths * mul;
      scalar_t *oe = out + (out_rows ? out_rows[e] : e) * s.k * mul;
      for (int64_t q = 0; q < npair; ++q) {
        scalar_t t = 0;
        for (int64_t m = pr.first[q]; m < pr.first[q + 1]; ++m) t += pr.v[m] * ye[pr.j[m]];
        z[q] = t;
      }
      for (int64_t c = 0; c < s.k; ++c) {
        for (int64_t u = 0; u < mul; ++u) acc[u] = 0;
        for (int64_t q = pr.pair_of_c[c]; q < pr.pair_of_c[c + 1]; ++q) {
          const scalar_t zq = z[q];
          const scalar_t *xi = xe + pr.i[q] * mul;
#pragma omp simd
          for (int64_t u = 0; u < mul; ++u) acc[u] += zq * xi[u];
        }
        const scalar_t *wp = we + poc[c] * mul;
        scalar_t *oc = oe + c * mul;
        if (out_rows) {
#pragma omp simd
          for (int64_t u = 0; u < mul; ++u) oc[u] += acc[u] * wp[u];
        } else {
#pragma omp simd
          for (int64_t u = 0; u < mul; ++u) oc[u] = acc[u] * wp[u];
        }
      }
    }
  }
}

// g_rows: nullptr reads edge e's output gradient from row e of g; else from row g_rows[e]
// (the gradient of a sum per centre atom, read where it lies)
template <typename scalar_t, int64_t MUL>
FF_ROWS_TARGET void vjp_rows(const Shapes &s, const Pairs<scalar_t> &pr, const int64_t *poc, const scalar_t *x,
                             const scalar_t *y, const scalar_t *w, const scalar_t *g, const int64_t *g_rows,
                             scalar_t *gx, scalar_t *gy, scalar_t *gw, int64_t begin, int64_t end)
{
  const int64_t mul = MUL > 0 ? MUL : s.mul, npair = (int64_t) pr.c.size();
  {
    std::vector<scalar_t> z(npair);
    // ty[j * mul + u]: g_y[j]'s terms per channel, summed over channels once per edge (one
    // horizontal sum per component of Y instead of one per (c, i) pair)
    std::vector<scalar_t> ty(s.dim_y * mul);
    scalar_t acc_fixed[MUL > 0 ? MUL : 1], gp_fixed[MUL > 0 ? MUL : 1], xg_fixed[MUL > 0 ? MUL : 1];
    std::vector<scalar_t> acc_any(MUL > 0 ? 0 : mul), gp_any(MUL > 0 ? 0 : mul), xg_any(MUL > 0 ? 0 : mul);
    scalar_t *acc = MUL > 0 ? acc_fixed : acc_any.data(), *gp = MUL > 0 ? gp_fixed : gp_any.data();
    scalar_t *xg = MUL > 0 ? xg_fixed : xg_any.data();
    for (int64_t e = begin; e < end; ++e) {
      const scalar_t *xe = x + e * s.d1 * mul, *ye = y + e * s.dim_y, *we = w + e * s.n_paths * mul;
      const scalar_t *ge = g + (g_rows ? g_rows[e] : e) * s.k * mul;
      scalar_t *gxe = gx ? gx + e * s.d1 * mul : nullptr, *gye = gy + e * s.dim_y, *gwe = gw + e * s.n_paths * mul;
      for (int64_t q = 0; q < npair; ++q) {
        scalar_t t = 0;
        for (int64_t m = pr.first[q]; m < pr.first[q + 1]; ++m) t += pr.v[m] * ye[pr.j[m]];
        z[q] = t;
      }
      for (int64_t a = 0; a < s.dim_y * mul; ++a) ty[a] = 0;
      for (int64_t a = 0; a < s.n_paths * mul; ++a) gwe[a] = 0;
      if (gxe)
        for (int64_t a = 0; a < s.d1 * mul; ++a) gxe[a] = 0;
      for (int64_t c = 0; c < s.k; ++c) {
        const int64_t q0 = pr.pair_of_c[c], q1 = pr.pair_of_c[c + 1];
        if (q0 == q1) continue;
        // the forward value of column c (before its weights), recomputed
        for (int64_t u = 0; u < mul; ++u) acc[u] = 0;
        for (int64_t q = q0; q < q1; ++q) {
          const scalar_t zq = z[q];
          const scalar_t *xi = xe + pr.i[q] * mul;
#pragma omp simd
          for (int64_t u = 0; u < mul; ++u) acc[u] += zq * xi[u];
        }
        const scalar_t *gc = ge + c * mul, *wp = we + poc[c] * mul;
        scalar_t *gwp = gwe + poc[c] * mul;
#pragma omp simd
        for (int64_t u = 0; u < mul; ++u) {
          gwp[u] += gc[u] * acc[u];
          gp[u] = gc[u] * wp[u];
        }
        for (int64_t q = q0; q < q1; ++q) {
          const scalar_t *xi = xe + pr.i[q] * mul;
#pragma omp simd
          for (int64_t u = 0; u < mul; ++u) xg[u] = xi[u] * gp[u];
          for (int64_t m = pr.first[q]; m < pr.first[q + 1]; ++m) {
            const scalar_t v = pr.v[m];
            scalar_t *t = ty.data() + pr.j[m] * mul;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) t[u] += v * xg[u];
          }
          if (gxe) {
            const scalar_t zq = z[q];
            scalar_t *gxi = gxe + pr.i[q] * mul;
#pragma omp simd
            for (int64_t u = 0; u < mul; ++u) gxi[u] += zq * gp[u];
          }
        }
      }
      for (int64_t a = 0; a < s.dim_y; ++a) {
        const scalar_t *t = ty.data() + a * mul;
        scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t u = 0; u < mul; ++u) sum += t[u];
        gye[a] = sum;
      }
    }
  }
}

}    // namespace FF_ROWS_NS
