#pragma once
// The one CUDA GEMM: cuBLASLt, bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), bf16
// or fp32 output, row-major semantics matching ops::gemm / matmul_forward / matmul_backward
// of the CPU (resbm/ops/cpu/gemm.hpp):
//   matmul_forward:  out[N,OC] = inp[N,C] · weight[OC,C]ᵀ          (out bf16 or fp32)
//   matmul_backward: dinp[N,C] += dout · weight                    (bf16; `accumulate` =
//                    false writes instead, beta = 0)
//                    dweight[OC,C] += doutᵀ · inp                  (fp32, beta = 1, always)
// Descriptors, layouts and the heuristic's algorithm are cached in the context per (shape,
// transposes, leading dimensions, dtypes, pointer alignments); with ctx.autotune the
// fastest of the heuristic's first 8 on the first call's operands. The workspace is the
// context's. Epilogues (bias, GELU, dbias) are not used yet.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "resbm/ops/cuda/context.cuh"

namespace resbm::ops {

namespace cuda_detail_matmul {

template <class T>
constexpr cudaDataType_t lt_type() {
  if constexpr (std::is_same_v<std::remove_const_t<T>, bf16>) return CUDA_R_16BF;
  else {
    static_assert(std::is_same_v<std::remove_const_t<T>, float>, "matmul operands are bf16 or float");
    return CUDA_R_32F;
  }
}

inline int alignment_of(const void* p) {
  auto a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % uintptr_t(al)) != 0) al /= 2;
  return al;
}

// The index of the fastest of `found` candidate algorithms for plan p on these operands:
// each runs once to warm up, then three times between events, writing D into a scratch
// buffer of the output's extent (`c_elems` elements of `c_size` bytes) so that C, which
// beta may read, is left as it was. A candidate that fails to run is skipped.
inline int fastest(CudaContext& ctx, const LtPlan& p, const cublasLtMatmulHeuristicResult_t* res, int found,
                   const bf16* A, const bf16* B, const void* C, int64_t c_elems, size_t c_size, float alpha,
                   float beta) {
  DeviceBuffer<unsigned char> d(size_t(c_elems) * c_size);
  cudaEvent_t t0, t1;
  RESBM_CUDA_CHECK(cudaEventCreate(&t0));
  RESBM_CUDA_CHECK(cudaEventCreate(&t1));
  int best = -1;
  float best_ms = 0;
  for (int i = 0; i < found; ++i) {
    auto run = [&] {
      return cublasLtMatmul(ctx.lt, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, d.data(), p.c, &res[i].algo,
                            ctx.workspace.data(), ctx.workspace.size(), ctx.stream);
    };
    if (res[i].workspaceSize > ctx.workspace.size() || run() != CUBLAS_STATUS_SUCCESS) continue;
    RESBM_CUDA_CHECK(cudaEventRecord(t0, ctx.stream));
    for (int r = 0; r < 3; ++r) RESBM_CUBLAS_CHECK(run());
    RESBM_CUDA_CHECK(cudaEventRecord(t1, ctx.stream));
    RESBM_CUDA_CHECK(cudaEventSynchronize(t1));
    float ms = 0;
    RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
    if (best < 0 || ms < best_ms) {
      best = i;
      best_ms = ms;
    }
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return best < 0 ? 0 : best;
}

}  // namespace cuda_detail_matmul

namespace cuda_detail_matmul {
// D_i = alpha · op(A_i) · op(B_i) + beta · C_i; C and D share ldc and stride_c and are either
// the same array or do not overlap.
template <class TC>
void lt_gemm(CudaContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
             const bf16* A, int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b, float beta,
             const TC* C, TC* D, int64_t ldc, int64_t stride_c, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (batch == 1) stride_a = stride_b = stride_c = 0;
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands, keep
  // the transpose flags; a row-major [r, c] matrix with leading dim ld is a column-major
  // [c, r] one with the same ld.
  const cublasOperation_t opa = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // first operand: B
  const cublasOperation_t opb = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // second operand: A
  const int64_t m = N, n = M, k = K;
  const cudaDataType_t ct = lt_type<TC>();
  // Every batch's pointer must have the alignment the algorithm is picked for.
  auto align = [](const void* p, int64_t stride_bytes) {
    return std::min(alignment_of(p), stride_bytes ? alignment_of(reinterpret_cast<const void*>(stride_bytes)) : 256);
  };
  const int al_a = align(B, stride_b * 2), al_b = align(A, stride_a * 2),
            al_c = std::min(align(C, stride_c * int64_t(sizeof(TC))), align(D, stride_c * int64_t(sizeof(TC))));
  const LtKey key{int(opa), int(opb), m, n, k, ldb, lda, ldc, int(ct), al_a, al_b, al_c, 0, 0,
                  batch, stride_b, stride_a, stride_c};
  auto it = ctx.plans.find(key);
  if (it == ctx.plans.end()) {
    LtPlan p;
    RESBM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    RESBM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    RESBM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    // Column-major shapes as stored: first operand is m×k (or k×m transposed), etc.
    RESBM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, opa == CUBLAS_OP_N ? m : k,
                                                  opa == CUBLAS_OP_N ? k : m, ldb));
    RESBM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, opb == CUBLAS_OP_N ? k : n,
                                                  opb == CUBLAS_OP_N ? n : k, lda));
    RESBM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ct, m, n, ldc));
    if (batch > 1) {
      const int32_t count = int32_t(batch);
      const std::pair<cublasLtMatrixLayout_t, int64_t> layouts[] = {{p.a, stride_b}, {p.b, stride_a}, {p.c, stride_c}};
      for (const auto& [layout, stride] : layouts) {
        RESBM_CUBLAS_CHECK(
            cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
        RESBM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                            &stride, sizeof stride));
      }
    }
    cublasLtMatmulPreference_t pref;
    RESBM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ctx.workspace.size();
    uint32_t aa = uint32_t(al_a), ab = uint32_t(al_b), ac = uint32_t(al_c);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac);
    cublasLtMatmulHeuristicResult_t res[CudaContext::kAutotuneCandidates]{};
    int found = 0;
    const int wanted = ctx.autotune ? CudaContext::kAutotuneCandidates : 1;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx.lt, p.desc, p.a, p.b, p.c, p.c, pref, wanted, res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.desc);
      fail(cat("cuBLASLt found no algorithm for a ", M, "x", N, "x", K, " bf16 matmul (trans_a ", trans_a,
               ", trans_b ", trans_b, ", lda ", lda, ", ldb ", ldb, ", ldc ", ldc, ")"),
           "use leading dimensions that are multiples of 8 and 16-byte aligned pointers");
    }
    const int64_t c_elems = (batch > 1 ? stride_c * (batch - 1) : 0) + ldc * (n - 1) + m;  // column-major extent
    const int best = found > 1 ? fastest(ctx, p, res, found, A, B, C, c_elems, sizeof(TC), alpha, beta) : 0;
    p.algo = res[best].algo;
    p.workspace = res[best].workspaceSize;
    it = ctx.plans.emplace(key, p).first;
  }
  const LtPlan& p = it->second;
  RESBM_CUBLAS_CHECK(cublasLtMatmul(ctx.lt, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, D, p.c, &p.algo,
                                    ctx.workspace.data(), ctx.workspace.size(), ctx.stream));
}
}  // namespace cuda_detail_matmul

// `batch` GEMMs C_i = alpha · op(A_i) · op(B_i) + beta · C_i in one launch, X_i = X + i ·
// stride_X (elements; a stride of 0 shares the operand). The fused projections use it: the
// q, k, v (and gate, up) weights lie at equal distances in the arena, so one launch
// computes all three from the same input into adjacent outputs, with 3x the tiles to fill
// the SMs with, and the weight gradients likewise.
template <class TC>
void gemm_batched(CudaContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const bf16* A, int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b,
                  float beta, TC* C, int64_t ldc, int64_t stride_c, int64_t batch) {
  cuda_detail_matmul::lt_gemm<TC>(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                                  C, ldc, stride_c, batch);
}

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, all row-major (as the CPU gemm).
// A and B are bf16; C is bf16 or float. Accumulation in fp32.
template <class TC>
void gemm(CudaContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, TC* C, int64_t ldc) {
  gemm_batched<TC>(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// `batch` of out_i = alpha · op(A_i) · op(B_i) + beta · addend_i (strides as gemm_batched;
// addend_i and out_i share ldc and stride_c). Newton–Schulz's b·A + c·A·A and a·X + B·X
// over a batch of matrices, one call each.
template <class TC>
void gemm_add_batched(CudaContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const bf16* A, int64_t lda, int64_t stride_a, const bf16* B, int64_t ldb, int64_t stride_b,
                      float beta, const TC* addend, TC* out, int64_t ldc, int64_t stride_c, int64_t batch) {
  cuda_detail_matmul::lt_gemm<TC>(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta,
                                  addend, out, ldc, stride_c, batch);
}

// out[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + addend[M,N] (row-major, leading dimension
// ldc for both; addend and out are the same array or do not overlap). The residual adds
// ride on it: cuBLASLt reads the residual stream as C and writes D elsewhere, so the
// stream is not first copied into the output.
template <class TC>
void gemm_add(CudaContext& ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const bf16* A, int64_t lda, const bf16* B, int64_t ldb, const TC* addend, TC* out, int64_t ldc) {
  gemm_add_batched<TC>(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, 1.0f, addend, out, ldc, 0, 1);
}

// out[N,OC] = inp[N,C] · weight[OC,C]ᵀ; out is bf16 or float.
template <class TOut>
void matmul_forward(CudaContext& ctx, CudaTensor<TOut> out, CudaTensor<const bf16> inp,
                    CudaTensor<const bf16> weight) {
  const int64_t N = inp.size(0), C = inp.size(1), OC = weight.size(0);
  expect_shape(inp, {N, C}, "matmul input");
  expect_shape(weight, {OC, C}, "matmul weight");
  expect_shape(out, {N, OC}, "matmul output");
  gemm<TOut>(ctx, false, true, N, OC, C, 1.0f, inp.data, C, weight.data, C, 0.0f, out.data, OC);
}

// dinp[N,C] += dout · weight (bf16; written instead when accumulate is false; an empty dinp
// skips it); dweight[OC,C] += doutᵀ · inp (fp32, always accumulated).
inline void matmul_backward(CudaContext& ctx, CudaTensor<bf16> dinp, CudaTensor<float> dweight,
                            CudaTensor<const bf16> dout, CudaTensor<const bf16> inp,
                            CudaTensor<const bf16> weight, bool accumulate = true) {
  const int64_t N = inp.size(0), C = inp.size(1), OC = weight.size(0);
  expect_shape(dout, {N, OC}, "matmul output gradient");
  expect_shape(dweight, {OC, C}, "matmul weight gradient");
  expect_shape(weight, {OC, C}, "matmul weight");
  expect_shape(inp, {N, C}, "matmul input");
  if (dinp.data) {
    expect_shape(dinp, {N, C}, "matmul input gradient");
    gemm<bf16>(ctx, false, false, N, C, OC, 1.0f, dout.data, OC, weight.data, C, accumulate ? 1.0f : 0.0f,
               dinp.data, C);
  }
  gemm<float>(ctx, true, false, OC, C, N, 1.0f, dout.data, OC, inp.data, C, 1.0f, dweight.data, C);
}

}  // namespace resbm::ops
