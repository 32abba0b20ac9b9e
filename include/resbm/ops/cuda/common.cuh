#pragma once
// Small device helpers shared by the CUDA ops: bf16 <-> fp32 through CUDA's intrinsics
// (round to nearest even, as resbm::bf16), warp reductions, and the launch helpers.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "resbm/core/dtype.hpp"
#include "resbm/ops/cuda/context.cuh"

namespace resbm::cuda_detail {

__device__ __forceinline__ float ldf(const bf16* p) {
  return __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(p));
}
__device__ __forceinline__ float ldf(const float* p) { return *p; }
__device__ __forceinline__ void stf(bf16* p, float v) {
  *reinterpret_cast<__nv_bfloat16*>(p) = __float2bfloat16_rn(v);
}
__device__ __forceinline__ void stf(float* p, float v) { *p = v; }

// 8 bf16 = 16 bytes: one vector load or store.
struct alignas(16) Pack8 {
  __nv_bfloat162 h[4];
};
__device__ __forceinline__ void unpack8(const Pack8& p, float* f) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = __bfloat1622float2(p.h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ Pack8 pack8(const float* f) {
  Pack8 p;
#pragma unroll
  for (int i = 0; i < 4; ++i) p.h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return p;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Grid size for n threads' worth of work, capped so a grid-stride loop covers the rest.
inline unsigned grid_for(int64_t n, int threads, int64_t cap = int64_t(1) << 20) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  return unsigned(g < cap ? g : cap);
}

}  // namespace resbm::cuda_detail
