#pragma once
// Causal multi-head self-attention on the CPU, q/k/v/out in the [B, T, H, hd] layout that a
// [B*T, C] linear produces (C = H*hd), scale 1/sqrt(hd).
//
// The cache is the softmax itself, P[B, H, T, T] (upper triangle stored as zeros): at the
// T = 128..256 we train on the CPU it is a few MiB per layer, and keeping it spares the
// backward a second QKᵀ and a second pass of exp, which together cost about as much as
// the products that remain.
//
// Work is split over (b, h) pairs, one pair per thread from start to end, so every output
// element is produced by the same code in the same order whatever ctx.threads is. Inside a
// pair the rows go in blocks of kBlock: block r only multiplies the columns [0, end of r),
// so about (n+1)/2n of the square is computed instead of all of it. Heads are read in
// place through the leading dimension C; the GEMM packs them into contiguous panels
// anyway, so a gather into scratch would only add a copy.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <cblas.h>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/fast_math.hpp"
#include "resbm/ops/cpu/gemm.hpp"

namespace resbm::ops {

inline int64_t attention_cache_size(int64_t B, int64_t T, int64_t H) { return B * H * T * T; }

namespace attention_detail {

// Rows per block. 32 keeps the wasted upper-triangle work near 1/16 of the square at T=256
// while each GEMM still has enough rows to run at the BLAS kernel's speed.
inline constexpr int64_t kBlock = 32;


// p[0..n) <- softmax(p[0..n)), in place. Double (the gradient checks) keeps libm's exp.
template <class T>
void softmax_row(T* p, int64_t n) {
  T m = p[0];
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < n; ++j) m = p[j] > m ? p[j] : m;
  T sum = 0;
  if constexpr (std::is_same_v<T, float>) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      p[j] = exp_nonpositive(p[j] - m);
      sum += p[j];
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      p[j] = std::exp(p[j] - m);
      sum += p[j];
    }
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] *= inv;
}

// Per-thread scratch that only grows: the backward's dS block, without a heap allocation
// per call once the first step has sized it.
template <class T>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class T>
void check_qkv(Tensor<const T> q, Tensor<const T> k, Tensor<const T> v, int64_t B, int64_t T_,
               int64_t H, int64_t hd) {
  expect_shape(q, {B, T_, H, hd}, "attention q");
  expect_shape(k, {B, T_, H, hd}, "attention k");
  expect_shape(v, {B, T_, H, hd}, "attention v");
  RESBM_CHECK(hd > 0 || B * T_ * H == 0, "attention head dimension is 0",
              "pass q, k, v as [B, T, H, head_dim] with head_dim >= 1");
}

}  // namespace attention_detail

// out[b,t,h,:] = Σ_{s<=t} softmax_s(q[b,t,h,:]·k[b,s,h,:] / sqrt(hd)) v[b,s,h,:]
// cache[attention_cache_size(B,T,H)] receives the softmax P[b,h,t,s] (0 for s > t).
template <class T>
void attention_forward(const Context& ctx, Tensor<T> out, Tensor<T> cache, Tensor<const T> q,
                       Tensor<const T> k, Tensor<const T> v) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "attention is float or double");
  using namespace attention_detail;
  const int64_t B = q.size(0), Tn = q.size(1), H = q.size(2), hd = q.size(3);
  check_qkv<T>(q, k, v, B, Tn, H, hd);
  expect_shape(out, {B, Tn, H, hd}, "attention output");
  expect_shape(cache, {attention_cache_size(B, Tn, H)}, "attention cache");
  if (B * Tn * H == 0) return;

  const int64_t C = H * hd;
  const T scale = T(1) / std::sqrt(T(hd));
  parallel_for(ctx, B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    const int64_t off = b * Tn * C + h * hd;
    const T *Q = q.data + off, *K = k.data + off, *V = v.data + off;
    T* O = out.data + off;
    T* P = cache.data + bh * Tn * Tn;
    for (int64_t r0 = 0; r0 < Tn; r0 += kBlock) {
      const int64_t end = std::min(r0 + kBlock, Tn), rows = end - r0;
      gemm<T>(ctx, false, true, rows, end, hd, scale, Q + r0 * C, C, K, C, T(0), P + r0 * Tn, Tn);
      for (int64_t t = r0; t < end; ++t) {
        T* row = P + t * Tn;
        softmax_row(row, t + 1);
        // Zeros above the diagonal make the block products below (and the backward's
        // column blocks) exact without masking inside them.
        std::fill(row + t + 1, row + Tn, T(0));
      }
      gemm<T>(ctx, false, false, rows, hd, end, T(1), P + r0 * Tn, Tn, V, C, T(0), O + r0 * C, C);
    }
  });
}

// dq, dk, dv += the gradients of Σ dout·out. With dP = dout·Vᵀ and D_t = dout_t·out_t:
// dS = P ⊙ (dP − D) / sqrt(hd), dq += dS·K, dk += dSᵀ·Q, dv += Pᵀ·dout.
template <class T>
void attention_backward(const Context& ctx, Tensor<T> dq, Tensor<T> dk, Tensor<T> dv,
                        Tensor<const T> dout, Tensor<const T> cache, Tensor<const T> q,
                        Tensor<const T> k, Tensor<const T> v, Tensor<const T> out) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "attention is float or double");
  using namespace attention_detail;
  const int64_t B = q.size(0), Tn = q.size(1), H = q.size(2), hd = q.size(3);
  check_qkv<T>(q, k, v, B, Tn, H, hd);
  expect_shape(out, {B, Tn, H, hd}, "attention output");
  expect_shape(dout, {B, Tn, H, hd}, "attention output gradient");
  expect_shape(dq, {B, Tn, H, hd}, "attention q gradient");
  expect_shape(dk, {B, Tn, H, hd}, "attention k gradient");
  expect_shape(dv, {B, Tn, H, hd}, "attention v gradient");
  expect_shape(cache, {attention_cache_size(B, Tn, H)}, "attention cache");
  if (B * Tn * H == 0) return;

  const int64_t C = H * hd;
  const T scale = T(1) / std::sqrt(T(hd));
  parallel_for(ctx, B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H;
    const int64_t off = b * Tn * C + h * hd;
    const T *Q = q.data + off, *K = k.data + off, *V = v.data + off;
    const T *O = out.data + off, *dO = dout.data + off;
    T *dQ = dq.data + off, *dK = dk.data + off, *dV = dv.data + off;
    const T* P = cache.data + bh * Tn * Tn;
    T* dS = scratch<T>(size_t(Tn * Tn));

    for (int64_t r0 = 0; r0 < Tn; r0 += kBlock) {
      const int64_t end = std::min(r0 + kBlock, Tn), rows = end - r0;
      gemm<T>(ctx, false, true, rows, end, hd, T(1), dO + r0 * C, C, V, C, T(0), dS + r0 * Tn, Tn);
      for (int64_t t = r0; t < end; ++t) {
        const T* o = O + t * C;
        const T* g = dO + t * C;
        T d = 0;
#pragma omp simd reduction(+ : d)
        for (int64_t i = 0; i < hd; ++i) d += g[i] * o[i];
        const T* p = P + t * Tn;
        T* s = dS + t * Tn;
#pragma omp simd
        for (int64_t j = 0; j <= t; ++j) s[j] = p[j] * (s[j] - d) * scale;
        // The block products read up to `end`; the masked part must be 0, not dP.
        std::fill(s + t + 1, s + end, T(0));
      }
      gemm<T>(ctx, false, false, rows, hd, end, T(1), dS + r0 * Tn, Tn, K, C, T(1), dQ + r0 * C, C);
    }
    // Key/value rows c0.. only receive from query rows t >= c0 (P, dS vanish above the
    // diagonal), so column block c reduces over T - c0 rows instead of T. Each block of
    // columns c0..c0+kBlock reads dS rows t >= c0, all of which were filled up to at least
    // c0 + kBlock by the row loop above.
    for (int64_t c0 = 0; c0 < Tn; c0 += kBlock) {
      const int64_t cols = std::min(kBlock, Tn - c0), n = Tn - c0;
      gemm<T>(ctx, true, false, cols, hd, n, T(1), dS + c0 * Tn + c0, Tn, Q + c0 * C, C, T(1),
              dK + c0 * C, C);
      gemm<T>(ctx, true, false, cols, hd, n, T(1), P + c0 * Tn + c0, Tn, dO + c0 * C, C, T(1),
              dV + c0 * C, C);
    }
  });
}

}  // namespace resbm::ops
