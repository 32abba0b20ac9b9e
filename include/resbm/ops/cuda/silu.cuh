#pragma once
// SiLU on the GPU (the boundary codec's MLP nonlinearity), fp32 arithmetic on bf16 or fp32
// tensors: out = inp · sigmoid(inp).
// Backward WRITES (=) dinp, unlike the CPU op's +=: as for swiglu, it is scratch that only
// the next matmul_backward reads, and a bf16 read-add-write would cost a pass and a rounding.
// The CPU op (ops/cpu/silu.hpp) is the reference; sigmoid here is 1/(1 + expf(-x)) (IEEE
// division, CUDA's expf within 2 ulp), which differs from the CPU's by a few fp32 ulp.
#include <initializer_list>
#include <type_traits>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_silu {
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <class T>
__global__ void fwd(T* __restrict__ out, const T* __restrict__ inp, int64_t n) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = ldf(inp + i);
    stf(out + i, x * sigmoid(x));
  }
}
template <class T>
__global__ void bwd(T* __restrict__ dinp, const T* __restrict__ dout, const T* __restrict__ inp, int64_t n) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = ldf(inp + i), s = sigmoid(x);
    stf(dinp + i, ldf(dout + i) * s * (1.0f + x * (1.0f - s)));
  }
}
// bf16, 8 values (16 bytes) per thread and iteration.
__global__ void fwd8(bf16* __restrict__ out, const bf16* __restrict__ inp, int64_t n8) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float x[8];
    unpack8(reinterpret_cast<const Pack8*>(inp)[i], x);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] *= sigmoid(x[e]);
    reinterpret_cast<Pack8*>(out)[i] = pack8(x);
  }
}
__global__ void bwd8(bf16* __restrict__ dinp, const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                     int64_t n8) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float x[8], dy[8];
    unpack8(reinterpret_cast<const Pack8*>(inp)[i], x);
    unpack8(reinterpret_cast<const Pack8*>(dout)[i], dy);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float s = sigmoid(x[e]);
      dy[e] *= s * (1.0f + x[e] * (1.0f - s));
    }
    reinterpret_cast<Pack8*>(dinp)[i] = pack8(dy);
  }
}
template <class T>
bool vec8(int64_t n, std::initializer_list<const void*> ptrs) {
  if (!std::is_same_v<T, bf16> || n % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!resbm::cuda_detail::aligned16(p)) return false;
  return true;
}
}  // namespace cuda_detail_silu

// out[N,F] = silu(inp[N,F]) (written)
template <class T>
  requires(std::is_same_v<T, bf16> || std::is_same_v<T, float>)
void silu_forward(CudaContext& ctx, CudaTensor<T> out, CudaTensor<const T> inp) {
  using namespace cuda_detail_silu;
  const int64_t N = inp.size(0), F = inp.size(1), n = N * F;
  expect_shape(inp, {N, F}, "silu input");
  expect_shape(out, {N, F}, "silu output");
  if (n == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (vec8<T>(n, {out.data, inp.data})) {
      fwd8<<<cuda_detail::grid_for(n / 8, 256), 256, 0, ctx.stream>>>(out.data, inp.data, n / 8);
      RESBM_CUDA_LAUNCH_CHECK();
      return;
    }
  }
  fwd<T><<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(out.data, inp.data, n);
  RESBM_CUDA_LAUNCH_CHECK();
}

// dinp = dout · s · (1 + x · (1 − s)), s = sigmoid(x)   (written, not added)
template <class T>
  requires(std::is_same_v<T, bf16> || std::is_same_v<T, float>)
void silu_backward(CudaContext& ctx, CudaTensor<T> dinp, CudaTensor<const T> dout, CudaTensor<const T> inp) {
  using namespace cuda_detail_silu;
  const int64_t N = inp.size(0), F = inp.size(1), n = N * F;
  expect_shape(inp, {N, F}, "silu input");
  expect_shape(dout, {N, F}, "silu output gradient");
  expect_shape(dinp, {N, F}, "silu input gradient");
  if (n == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (vec8<T>(n, {dinp.data, dout.data, inp.data})) {
      bwd8<<<cuda_detail::grid_for(n / 8, 256), 256, 0, ctx.stream>>>(dinp.data, dout.data, inp.data, n / 8);
      RESBM_CUDA_LAUNCH_CHECK();
      return;
    }
  }
  bwd<T><<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(dinp.data, dout.data, inp.data, n);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
