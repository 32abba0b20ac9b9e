#pragma once
// SwiGLU on bf16 activations, fp32 arithmetic: out = silu(gate) · up.
// Backward WRITES (=) dgate and dup (bf16), unlike the CPU op's +=: they are scratch
// gradients that only the up-projection's matmul_backward reads, so nothing needs to add
// into them, and a bf16 read-add-write would cost a pass and a rounding.
#include <initializer_list>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_swiglu {
__global__ void fwd(bf16* __restrict__ out, const bf16* __restrict__ gate, const bf16* __restrict__ up,
                    int64_t n) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = ldf(gate + i), u = ldf(up + i);
    stf(out + i, g / (1.0f + expf(-g)) * u);
  }
}
// dgate and dup rows (F elements each) are ld apart.
__global__ void bwd(bf16* __restrict__ dgate, bf16* __restrict__ dup, const bf16* __restrict__ dout,
                    const bf16* __restrict__ gate, const bf16* __restrict__ up, int64_t n, int64_t F, int64_t ld) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = ldf(gate + i), u = ldf(up + i), dy = ldf(dout + i);
    const float s = 1.0f / (1.0f + expf(-g));
    const int64_t o = i / F * ld + i % F;
    stf(dgate + o, dy * u * s * (1.0f + g * (1.0f - s)));
    stf(dup + o, dy * g * s);
  }
}
// 8 elements (16 bytes) per thread and iteration: the scalar kernels above move 2 bytes per
// access and reach well under the memory bandwidth on these purely streaming passes.
__global__ void fwd8(bf16* __restrict__ out, const bf16* __restrict__ gate, const bf16* __restrict__ up,
                     int64_t n8) {
  using namespace resbm::cuda_detail;
  const auto* G = reinterpret_cast<const Pack8*>(gate);
  const auto* U = reinterpret_cast<const Pack8*>(up);
  auto* O = reinterpret_cast<Pack8*>(out);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float g[8], u[8], o[8];
    unpack8(G[i], g);
    unpack8(U[i], u);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    O[i] = pack8(o);
  }
}
// F8 = F / 8 steps a row; ld a multiple of 8 (32-bit indices: n8 · 8 and the rows' extent
// below 2^32, checked by the caller).
__global__ void bwd8(bf16* __restrict__ dgate, bf16* __restrict__ dup, const bf16* __restrict__ dout,
                     const bf16* __restrict__ gate, const bf16* __restrict__ up, unsigned n8, unsigned F8,
                     unsigned ld) {
  using namespace resbm::cuda_detail;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
    float g[8], u[8], dy[8], dg[8], du[8];
    unpack8(reinterpret_cast<const Pack8*>(gate)[i], g);
    unpack8(reinterpret_cast<const Pack8*>(up)[i], u);
    unpack8(reinterpret_cast<const Pack8*>(dout)[i], dy);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float s = 1.0f / (1.0f + expf(-g[e]));
      dg[e] = dy[e] * u[e] * s * (1.0f + g[e] * (1.0f - s));
      du[e] = dy[e] * g[e] * s;
    }
    const unsigned row = i / F8;
    const size_t o = size_t(row) * ld + size_t(i - row * F8) * 8;
    st8(dgate + o, pack8(dg));
    st8(dup + o, pack8(du));
  }
}
inline bool vec8(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!resbm::cuda_detail::aligned16(p)) return false;
  return true;
}
}  // namespace cuda_detail_swiglu

inline void swiglu_forward(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<const bf16> gate,
                           CudaTensor<const bf16> up) {
  const int64_t N = gate.size(0), F = gate.size(1);
  expect_shape(gate, {N, F}, "swiglu gate");
  expect_shape(up, {N, F}, "swiglu up");
  expect_shape(out, {N, F}, "swiglu output");
  if (N * F == 0) return;
  if (cuda_detail_swiglu::vec8(N * F, {out.data, gate.data, up.data})) {
    cuda_detail_swiglu::fwd8<<<cuda_detail::grid_for(N * F / 8, 256), 256, 0, ctx.stream>>>(out.data, gate.data,
                                                                                          up.data, N * F / 8);
    RESBM_CUDA_LAUNCH_CHECK();
    return;
  }
  cuda_detail_swiglu::fwd<<<cuda_detail::grid_for(N * F, 256), 256, 0, ctx.stream>>>(out.data, gate.data,
                                                                                     up.data, N * F);
  RESBM_CUDA_LAUNCH_CHECK();
}

// dgate = dout · up · s · (1 + g · (1 − s)),  dup = dout · g · s   (written, not added).
// grad_ld: elements from one row of dgate (and of dup) to the next, 0 = F (contiguous). The
// model passes 2·F: dgate and dup are the two column blocks of one [N, 2F] matrix, so that
// the projections' input gradient is one GEMM with K = 2F.
inline void swiglu_backward(CudaContext& ctx, CudaTensor<bf16> dgate, CudaTensor<bf16> dup,
                            CudaTensor<const bf16> dout, CudaTensor<const bf16> gate, CudaTensor<const bf16> up,
                            int64_t grad_ld = 0) {
  const int64_t N = gate.size(0), F = gate.size(1);
  expect_shape(gate, {N, F}, "swiglu gate");
  expect_shape(up, {N, F}, "swiglu up");
  expect_shape(dout, {N, F}, "swiglu output gradient");
  expect_shape(dgate, {N, F}, "swiglu gate gradient");
  expect_shape(dup, {N, F}, "swiglu up gradient");
  const int64_t ld = grad_ld ? grad_ld : F;
  RESBM_CHECK(ld >= F, cat("swiglu_backward: gradient row stride ", ld, " is shorter than a row of ", F),
              "pass 0 (contiguous) or the distance between rows of dgate");
  if (N * F == 0) return;
  if (F % 8 == 0 && ld % 8 == 0 && N * ld < (int64_t(1) << 32) &&
      cuda_detail_swiglu::vec8(N * F, {dgate.data, dup.data, dout.data, gate.data, up.data})) {
    cuda_detail_swiglu::bwd8<<<cuda_detail::grid_for(N * F / 8, 256), 256, 0, ctx.stream>>>(
        dgate.data, dup.data, dout.data, gate.data, up.data, unsigned(N * F / 8), unsigned(F / 8), unsigned(ld));
    RESBM_CUDA_LAUNCH_CHECK();
    return;
  }
  cuda_detail_swiglu::bwd<<<cuda_detail::grid_for(N * F, 256), 256, 0, ctx.stream>>>(
      dgate.data, dup.data, dout.data, gate.data, up.data, N * F, F, ld);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
