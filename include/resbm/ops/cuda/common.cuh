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

// 8 bf16 = 16 bytes, held as four 32-bit words so that copying one is a single 16-byte
// load or store: as four __nv_bfloat162 it compiled to four 4-byte accesses (PTX of CUDA
// 13), a quarter of the width every 16-byte kernel was written for.
struct alignas(16) Pack8 {
  uint4 u;
};
__device__ __forceinline__ Pack8 ld8(const bf16* p) { return *reinterpret_cast<const Pack8*>(p); }
__device__ __forceinline__ void st8(bf16* p, Pack8 v) { *reinterpret_cast<Pack8*>(p) = v; }
// bf16 -> fp32 is exact: a bf16 is the upper half of its float (element 0 in the low half).
__device__ __forceinline__ void unpack8(const Pack8& p, float* f) {
  const unsigned u[4] = {p.u.x, p.u.y, p.u.z, p.u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ Pack8 pack8(const float* f) {
  unsigned u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    u[i] = *reinterpret_cast<const unsigned*>(&h);
  }
  return Pack8{make_uint4(u[0], u[1], u[2], u[3])};
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
