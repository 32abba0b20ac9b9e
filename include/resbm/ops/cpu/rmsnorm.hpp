#pragma once
// RMSNorm (Zhang & Sennrich, 2019): out = inp · rstd · weight, rstd = 1/sqrt(mean(inp²) + eps).
// rstd is saved per row so the backward pass does not recompute it.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::ops {

template <class T>
void rmsnorm_forward(const Context& ctx, Tensor<T> out, Tensor<T> rstd, Tensor<const T> inp,
                     Tensor<const T> weight, T eps) {
  const int64_t N = inp.size(0), C = inp.size(1);
  expect_shape(inp, {N, C}, "rmsnorm input");
  expect_shape(weight, {C}, "rmsnorm weight");
  expect_shape(out, {N, C}, "rmsnorm output");
  expect_shape(rstd, {N}, "rmsnorm rstd");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* x = inp.data + n * C;
    const T* w = weight.data;
    T* y = out.data + n * C;
    // The simd reduction lets g++ keep per-lane partial sums (a float sum does not vectorise
    // otherwise); its order is fixed at compile time, so it is the same on every thread.
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += x[c] * x[c];
    const T r = T(1) / std::sqrt(ss / T(C) + eps);
    rstd.data[n] = r;
    for (int64_t c = 0; c < C; ++c) y[c] = x[c] * r * w[c];
  });
}

// With g = dout·weight and r = rstd:
//   dinp = r · (g − inp · r² · mean(g · inp)),   dweight = Σ_n dout · inp · r.
template <class T>
void rmsnorm_backward(const Context& ctx, Tensor<T> dinp, Tensor<T> dweight, Tensor<const T> dout,
                      Tensor<const T> inp, Tensor<const T> weight, Tensor<const T> rstd) {
  const int64_t N = inp.size(0), C = inp.size(1);
  expect_shape(inp, {N, C}, "rmsnorm input");
  expect_shape(weight, {C}, "rmsnorm weight");
  expect_shape(rstd, {N}, "rmsnorm rstd");
  expect_shape(dout, {N, C}, "rmsnorm output gradient");
  expect_shape(dinp, {N, C}, "rmsnorm input gradient");
  expect_shape(dweight, {C}, "rmsnorm weight gradient");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* x = inp.data + n * C;
    const T* dy = dout.data + n * C;
    const T* w = weight.data;
    T* dx = dinp.data + n * C;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += dy[c] * w[c] * x[c];
    const T r = rstd.data[n];
    const T k = r * r * dot / T(C);
    for (int64_t c = 0; c < C; ++c) dx[c] += r * (dy[c] * w[c] - x[c] * k);
  });
  // A sum over rows into one weight: split over columns (fixed block width, see
  // embedding_backward) so each column is summed in row order by one thread.
  constexpr int64_t kCols = 64;
  parallel_for(ctx, (C + kCols - 1) / kCols, [&](int64_t b) {
    const int64_t c0 = b * kCols, c1 = std::min(C, c0 + kCols);
    T* dw = dweight.data;
    for (int64_t n = 0; n < N; ++n) {
      const T* x = inp.data + n * C;
      const T* dy = dout.data + n * C;
      const T r = rstd.data[n];
      for (int64_t c = c0; c < c1; ++c) dw[c] += dy[c] * x[c] * r;
    }
  });
}

}  // namespace resbm::ops
