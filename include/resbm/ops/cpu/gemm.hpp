#pragma once
// The one CPU GEMM: OpenBLAS, row-major. float -> sgemm, double -> dgemm (the gradient
// checks run the whole model in double). Linear layers store weight[out, in], as PyTorch.
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::ops {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major.
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, all row-major.
// The work is cut into pieces whose sizes depend on the shape alone, each one
// single-threaded BLAS call: OpenBLAS's own threading changes the last bits of results with
// the thread count, this split does not.
//   - Weight-gradient shapes (small C, long K = tokens): K is cut into fixed chunks whose
//     partial products are summed in chunk order. Cutting rows instead would make every
//     block repack the whole [K, N] operand.
//   - Otherwise the rows of C are cut into blocks.
template <class T>
void gemm(const Context& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "gemm is float or double");
  if (M == 0 || N == 0) return;
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  auto call = [&](int64_t m, int64_t n, int64_t k, T al, const T* a, const T* b, T be, T* c, int64_t ld) {
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), al, a, blasint(lda), b, blasint(ldb),
                  be, c, blasint(ld));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), al, a, blasint(lda), b, blasint(ldb),
                  be, c, blasint(ld));
  };
  constexpr int64_t kChunk = 512;
  if (M * N <= (int64_t(1) << 18) && K >= 2 * kChunk && K >= 4 * std::max(M, N)) {
    const int64_t chunks = (K + kChunk - 1) / kChunk;
    thread_local std::vector<T> partial;
    if (partial.size() < size_t(chunks * M * N)) partial.resize(size_t(chunks * M * N));
    T* P = partial.data();
    parallel_for(ctx, chunks, [&](int64_t c) {
      const int64_t k0 = c * kChunk, k = std::min(kChunk, K - k0);
      const T* a = trans_a ? A + k0 * lda : A + k0;  // columns k0.. of op(A)
      const T* b = trans_b ? B + k0 : B + k0 * ldb;  // rows k0.. of op(B)
      call(M, N, k, alpha, a, b, T(0), P + c * M * N, N);
    });
    parallel_for(ctx, M, [&](int64_t i) {
      T* row = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) {
        T sum = P[i * N + j];
        for (int64_t c = 1; c < chunks; ++c) sum += P[(c * M + i) * N + j];
        row[j] = beta == T(0) ? sum : beta * row[j] + sum;
      }
    });
    return;
  }
  const int64_t rows = std::max<int64_t>(32, (M / 8 + 15) / 16 * 16);
  const int64_t blocks = (M + rows - 1) / rows;
  parallel_for(ctx, blocks, [&](int64_t blk) {
    const int64_t m0 = blk * rows, m = std::min(rows, M - m0);
    const T* a = trans_a ? A + m0 : A + m0 * lda;  // op(A) rows m0.. are columns of A when transposed
    call(m, N, K, alpha, a, B, beta, C + m0 * ldc, ldc);
  });
}

// out[N,OC] = inp[N,C] · weight[OC,C]ᵀ
template <class T>
void matmul_forward(const Context& ctx, Tensor<T> out, Tensor<const T> inp, Tensor<const T> weight) {
  const int64_t N = inp.size(0), C = inp.size(1), OC = weight.size(0);
  expect_shape(inp, {N, C}, "matmul input");
  expect_shape(weight, {OC, C}, "matmul weight");
  expect_shape(out, {N, OC}, "matmul output");
  gemm<T>(ctx, false, true, N, OC, C, T(1), inp.data, C, weight.data, C, T(0), out.data, OC);
}

// dinp[N,C] += dout · weight ; dweight[OC,C] += doutᵀ · inp. An empty dinp (no data) skips it.
template <class T>
void matmul_backward(const Context& ctx, Tensor<T> dinp, Tensor<T> dweight, Tensor<const T> dout,
                     Tensor<const T> inp, Tensor<const T> weight) {
  const int64_t N = inp.size(0), C = inp.size(1), OC = weight.size(0);
  expect_shape(dout, {N, OC}, "matmul output gradient");
  expect_shape(dweight, {OC, C}, "matmul weight gradient");
  expect_shape(weight, {OC, C}, "matmul weight");
  if (dinp.data) {
    expect_shape(dinp, {N, C}, "matmul input gradient");
    gemm<T>(ctx, false, false, N, C, OC, T(1), dout.data, OC, weight.data, C, T(1), dinp.data, C);
  }
  gemm<T>(ctx, true, false, OC, C, N, T(1), dout.data, OC, inp.data, C, T(1), dweight.data, C);
}

}  // namespace resbm::ops
