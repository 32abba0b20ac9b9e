#pragma once
// RMSNorm on the GPU: bf16 input, weight and output, fp32 statistics.
//   forward:  out = inp · rstd · weight, rstd[N] (fp32) = 1/sqrt(mean(inp²) + eps)
//   backward: dinp += rstd · (g − inp · rstd² · mean(g · inp)), g = dout · weight
//             (bf16, ACCUMULATED as in the CPU contract: dinp is the residual stream's
//             gradient), and dweight[C] += Σ_n dout · inp · rstd (fp32).
// One warp per row. dweight is reduced deterministically: fixed chunks of rows write
// partial column sums into the context's scratch, a second kernel adds them in a fixed
// order. With 16-byte rows of up to 2048 columns the forward keeps its row in registers and
// the backward is one fused pass plus that reduce.
#include <initializer_list>
#include <type_traits>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_rmsnorm {
using namespace resbm::cuda_detail;
constexpr int kWarps = 8;       // rows per block
constexpr int kChunkRows = 64;  // rows per dweight partial

__global__ void fwd(bf16* __restrict__ out, float* __restrict__ rstd, const bf16* __restrict__ inp,
                    const bf16* __restrict__ weight, int64_t N, int C, float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;  // whole warps leave together
  const bf16* x = inp + n * C;
  float ss = 0;
  for (int c = lane; c < C; c += 32) {
    const float v = ldf(x + c);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(C) + eps);
  if (lane == 0) rstd[n] = r;
  bf16* y = out + n * C;
  for (int c = lane; c < C; c += 32) stf(y + c, ldf(x + c) * r * ldf(weight + c));
}

__global__ void bwd_inp(bf16* __restrict__ dinp, const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                        const bf16* __restrict__ weight, const float* __restrict__ rstd, int64_t N, int C) {
  const int lane = threadIdx.x % 32;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const bf16* x = inp + n * C;
  const bf16* dy = dout + n * C;
  float dot = 0;
  for (int c = lane; c < C; c += 32) dot += ldf(dy + c) * ldf(weight + c) * ldf(x + c);
  dot = warp_sum(dot);
  const float r = rstd[n];
  const float k = r * r * dot / float(C);
  bf16* dx = dinp + n * C;
  for (int c = lane; c < C; c += 32) {
    const float g = ldf(dy + c) * ldf(weight + c);
    stf(dx + c, ldf(dx + c) + r * (g - ldf(x + c) * k));
  }
}

// The same two kernels with 16-byte accesses (C % 8 == 0, aligned rows): a warp per row
// moving 2 bytes per lane per access stays far from the memory bandwidth.
__global__ void fwd8(bf16* __restrict__ out, float* __restrict__ rstd, const bf16* __restrict__ inp,
                     const bf16* __restrict__ weight, int64_t N, int C, float eps) {
  const int lane = threadIdx.x % 32, C8 = C / 8;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const bf16* x = inp + n * C;
  float ss = 0;
  for (int c = lane; c < C8; c += 32) {
    float v[8];
    unpack8(ld8(x + 8 * c), v);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(C) + eps);
  if (lane == 0) rstd[n] = r;
  bf16* y = out + n * C;
  for (int c = lane; c < C8; c += 32) {
    float v[8], g[8];
    unpack8(ld8(x + 8 * c), v);
    unpack8(ld8(weight + 8 * c), g);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * r * g[e];
    st8(y + 8 * c, pack8(v));
  }
}

// fwd8 for rows of up to 2048 columns (C <= 256·K): each lane issues the loads of all its
// packs of the row and of the weight before using any, and writes the output from those
// registers, so a warp waits for memory once per row instead of once per pack and reads
// the row once (fwd8: 0.026 ms at 16k × 768, 1.9 TB/s against a 4.2 TB/s copy).
// Blocks an SM each K is compiled for: the most that ptxas (CUDA 13, sm_90a) fits without
// spilling.
constexpr int fwd_min_blocks(int K) { return K <= 3 ? 6 : K == 4 ? 5 : K <= 6 ? 4 : 3; }

template <int K>
__global__ void __launch_bounds__(kWarps * 32, fwd_min_blocks(K))
    fwd8_row(bf16* __restrict__ out, float* __restrict__ rstd, const bf16* __restrict__ inp,
             const bf16* __restrict__ weight, int64_t N, int C, float eps) {
  const int lane = threadIdx.x % 32, C8 = C / 8;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const bf16* x = inp + n * C;
  Pack8 xv[K], wv[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const int c = lane + 32 * j;
    if (c < C8) {
      xv[j] = ld8(x + 8 * c);
      wv[j] = ld8(weight + 8 * c);
    }
  }
  float ss = 0;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    if (lane + 32 * j >= C8) break;
    float v[8];
    unpack8(xv[j], v);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(C) + eps);
  if (lane == 0) rstd[n] = r;
  bf16* y = out + n * C;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const int c = lane + 32 * j;
    if (c >= C8) break;
    float v[8], g[8];
    unpack8(xv[j], v);
    unpack8(wv[j], g);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * r * g[e];
    st8(y + 8 * c, pack8(v));
  }
}

__global__ void bwd_inp8(bf16* __restrict__ dinp, const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                         const bf16* __restrict__ weight, const float* __restrict__ rstd, int64_t N, int C) {
  const int lane = threadIdx.x % 32, C8 = C / 8;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const bf16* x = inp + n * C;
  const bf16* dy = dout + n * C;
  float dot = 0;
  for (int c = lane; c < C8; c += 32) {
    float a[8], b[8], g[8];
    unpack8(ld8(dy + 8 * c), a);
    unpack8(ld8(weight + 8 * c), g);
    unpack8(ld8(x + 8 * c), b);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += a[e] * g[e] * b[e];
  }
  dot = warp_sum(dot);
  const float r = rstd[n];
  const float k = r * r * dot / float(C);
  bf16* dx = dinp + n * C;
  for (int c = lane; c < C8; c += 32) {
    float a[8], b[8], g[8], d[8];
    unpack8(ld8(dy + 8 * c), a);
    unpack8(ld8(weight + 8 * c), g);
    unpack8(ld8(x + 8 * c), b);
    unpack8(ld8(dx + 8 * c), d);
#pragma unroll
    for (int e = 0; e < 8; ++e) d[e] += r * (a[e] * g[e] - b[e] * k);
    st8(dx + 8 * c, pack8(d));
  }
}

// bwd_inp8 and the dweight partials in one pass for rows of up to 2048 columns (K packs of
// 8 columns a lane, C <= 256·K, K <= 8): each warp owns kFusedRows consecutive rows and adds
// its lanes' dout · inp · rstd into its own slice of shared memory; the block then sums the
// slices in warp order and writes one partial row, so dout and inp are read from memory
// once and the result does not depend on scheduling.
// A row's dout, inp and dinp packs and its rstd are loaded before any is used: loading dinp
// only after the dot product cost a second memory latency per row (0.053 ms with the reduce
// at 16k × 768). Registers bound the rows in flight, so the column sums are kept in shared
// memory rather than in 8·K registers a lane, and the weight (an L1 hit) is read where it
// is used rather than held (holding both and prefetching, bwd_fused8<3> took 169 registers,
// one block an SM; now 122, two); up to kPrefetchK packs a lane that leaves room to load
// the next row before this row's reduction and update.
constexpr int kFusedRows = 4;  // rows per warp: 32 rows per block, 512 blocks at 16k rows
constexpr int kPrefetchK = 3;
// Blocks an SM each K is compiled for: the most that ptxas (CUDA 13, sm_90a) fits without
// spilling.
constexpr int fused_min_blocks(int K) { return K == 1 ? 4 : K == 4 ? 3 : 2; }

template <int K>
__device__ __forceinline__ void load_row(Pack8 (&a)[K], Pack8 (&b)[K], Pack8 (&d)[K], float& r,
                                         const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                                         const bf16* dinp, const float* __restrict__ rstd,
                                         int64_t n, int C, int lane) {
  const int C8 = C / 8;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const int c = lane + 32 * j;
    if (c < C8) {
      a[j] = ld8(dout + n * C + 8 * c);
      b[j] = ld8(inp + n * C + 8 * c);
      d[j] = ld8(dinp + n * C + 8 * c);
    }
  }
  r = rstd[n];
}

template <int K>
__global__ void __launch_bounds__(kWarps * 32, fused_min_blocks(K))
    bwd_fused8(bf16* __restrict__ dinp, float* __restrict__ partial, const bf16* __restrict__ dout,
               const bf16* __restrict__ inp, const bf16* __restrict__ weight, const float* __restrict__ rstd,
               int64_t N, int C) {
  constexpr bool kPrefetch = K <= kPrefetchK;
  // [kWarps][K][2][32] float4: s[(2j + h) · 32] of a lane holds columns 8c + 4h .. 8c + 4h + 3
  // of its pack c = lane + 32j, so a warp's 16-byte accesses are consecutive (no bank
  // conflicts) and each lane's offsets are constants.
  extern __shared__ float4 sums[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, C8 = C / 8;
  float4* s = sums + (warp * 2 * K) * 32 + lane;
#pragma unroll
  for (int j = 0; j < 2 * K; ++j) s[32 * j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  const int64_t first = (int64_t(blockIdx.x) * kWarps + warp) * kFusedRows;
  const int64_t last = first + kFusedRows < N ? first + kFusedRows : N;
  // Zeroed: the prefetch copies every pack, also those a lane past the row's end never loads.
  Pack8 a[K] = {}, b[K] = {}, d[K] = {};  // dout, inp, dinp
  float r = 0.0f;
  if (first < last) load_row<K>(a, b, d, r, dout, inp, dinp, rstd, first, C, lane);
  constexpr int P = kPrefetch ? K : 1;
  Pack8 na[P] = {}, nb[P] = {}, nd[P] = {};
  float nr = 0.0f;
  for (int64_t n = first; n < last; ++n) {
    if constexpr (!kPrefetch)
      if (n != first) load_row<K>(a, b, d, r, dout, inp, dinp, rstd, n, C, lane);
    float dot = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = lane + 32 * j;
      if (c >= C8) break;
      float av[8], bv[8], g[8];
      unpack8(a[j], av);
      unpack8(ld8(weight + 8 * c), g);
      unpack8(b[j], bv);
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += av[e] * g[e] * bv[e];
    }
    if constexpr (kPrefetch)
      if (n + 1 < last) load_row<K>(na, nb, nd, nr, dout, inp, dinp, rstd, n + 1, C, lane);
    dot = warp_sum(dot);
    const float k = r * r * dot / float(C);
    bf16* dx = dinp + n * C;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = lane + 32 * j;
      if (c >= C8) break;
      float av[8], bv[8], g[8], dv[8];
      unpack8(a[j], av);
      unpack8(ld8(weight + 8 * c), g);
      unpack8(b[j], bv);
      unpack8(d[j], dv);
      const float4 lo = s[64 * j], hi = s[64 * j + 32];
      float acc[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        dv[e] += r * (av[e] * g[e] - bv[e] * k);
        acc[e] += av[e] * bv[e] * r;
      }
      s[64 * j] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      s[64 * j + 32] = make_float4(acc[4], acc[5], acc[6], acc[7]);
      st8(dx + 8 * c, pack8(dv));
    }
    if constexpr (kPrefetch) {
#pragma unroll
      for (int j = 0; j < K; ++j) {
        a[j] = na[j];
        b[j] = nb[j];
        d[j] = nd[j];
      }
      r = nr;
    }
  }
  __syncthreads();
  const auto* f = reinterpret_cast<const float*>(sums);
  float* p = partial + int64_t(blockIdx.x) * C;
  for (int col = threadIdx.x; col < C; col += blockDim.x) {
    const int c = col / 8, at = ((2 * (c / 32) + col / 4 % 2) * 32 + c % 32) * 4 + col % 4;
    float t = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t += f[w * K * 256 + at];
    p[col] = t;
  }
}

inline bool vec8(int64_t C, std::initializer_list<const void*> ptrs) {
  if (C % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

// partial[chunk, c] = Σ_{n in chunk} dout[n,c] · inp[n,c] · rstd[n]
__global__ void bwd_weight_partial(float* __restrict__ partial, const bf16* __restrict__ dout,
                                   const bf16* __restrict__ inp, const float* __restrict__ rstd, int64_t N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t n0 = int64_t(blockIdx.y) * kChunkRows;
  const int64_t n1 = n0 + kChunkRows < N ? n0 + kChunkRows : N;
  float s = 0;
  for (int64_t n = n0; n < n1; ++n) s += ldf(dout + n * C + c) * ldf(inp + n * C + c) * rstd[n];
  partial[int64_t(blockIdx.y) * C + c] = s;
}

// dweight[c] += Σ_k partial[k, c]. One thread a column summing all the partial rows (512 at
// 16k rows) serially left a few blocks waiting on one load after another; here a block takes
// 32 columns and kReduceGroups row groups: thread (g, c) adds rows g, g + kReduceGroups, ...
// in order, with kReduceUnroll loads in flight, then the groups are added by a fixed tree in
// shared memory, so the sum is the same on every run.
constexpr int kReduceGroups = 32, kReduceUnroll = 8;

__global__ void __launch_bounds__(32 * kReduceGroups)
    bwd_weight_reduce(float* __restrict__ dweight, const float* __restrict__ partial, int chunks, int C) {
  __shared__ float part[kReduceGroups][32];
  const int tx = threadIdx.x, g = threadIdx.y;
  const int c = blockIdx.x * 32 + tx;
  float s = 0;
  if (c < C) {
    for (int k0 = g; k0 < chunks; k0 += kReduceGroups * kReduceUnroll) {
      float v[kReduceUnroll];
#pragma unroll
      for (int u = 0; u < kReduceUnroll; ++u) {
        const int k = k0 + u * kReduceGroups;
        v[u] = k < chunks ? partial[int64_t(k) * C + c] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kReduceUnroll; ++u) s += v[u];
    }
  }
  part[g][tx] = s;
#pragma unroll
  for (int h = kReduceGroups / 2; h > 0; h /= 2) {
    __syncthreads();
    if (g < h) part[g][tx] += part[g + h][tx];
  }
  if (g == 0 && c < C) dweight[c] += part[0][tx];
}

// f(std::integral_constant<int, K>{}) for K in [1, 8]: the packs of 8 columns a lane holds,
// as a template argument of the row kernels.
template <class F>
void with_packs(int K, F&& f) {
  switch (K) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

inline void reduce_weight(CudaContext& ctx, float* dweight, const float* partial, int chunks, int C) {
  bwd_weight_reduce<<<unsigned((C + 31) / 32), dim3(32, kReduceGroups), 0, ctx.stream>>>(dweight, partial, chunks,
                                                                                         C);
  RESBM_CUDA_LAUNCH_CHECK();
}
}  // namespace cuda_detail_rmsnorm

inline void rmsnorm_forward(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<float> rstd,
                            CudaTensor<const bf16> inp, CudaTensor<const bf16> weight, float eps) {
  using namespace cuda_detail_rmsnorm;
  const int64_t N = inp.size(0), C = inp.size(1);
  expect_shape(inp, {N, C}, "rmsnorm input");
  expect_shape(weight, {C}, "rmsnorm weight");
  expect_shape(out, {N, C}, "rmsnorm output");
  expect_shape(rstd, {N}, "rmsnorm rstd");
  if (N == 0) return;
  const int K = int((C / 8 + 31) / 32);
  if (vec8(C, {out.data, inp.data, weight.data}) && K >= 1 && K <= 8) {
    with_packs(K, [&](auto k) {
      fwd8_row<decltype(k)::value><<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, ctx.stream>>>(
          out.data, rstd.data, inp.data, weight.data, N, int(C), eps);
    });
    RESBM_CUDA_LAUNCH_CHECK();
    return;
  }
  if (vec8(C, {out.data, inp.data, weight.data})) {
    fwd8<<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, ctx.stream>>>(out.data, rstd.data, inp.data,
                                                                             weight.data, N, int(C), eps);
    RESBM_CUDA_LAUNCH_CHECK();
    return;
  }
  fwd<<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, ctx.stream>>>(out.data, rstd.data, inp.data,
                                                                          weight.data, N, int(C), eps);
  RESBM_CUDA_LAUNCH_CHECK();
}

inline void rmsnorm_backward(CudaContext& ctx, CudaTensor<bf16> dinp, CudaTensor<float> dweight,
                             CudaTensor<const bf16> dout, CudaTensor<const bf16> inp, CudaTensor<const bf16> weight,
                             CudaTensor<const float> rstd) {
  using namespace cuda_detail_rmsnorm;
  const int64_t N = inp.size(0), C = inp.size(1);
  expect_shape(inp, {N, C}, "rmsnorm input");
  expect_shape(weight, {C}, "rmsnorm weight");
  expect_shape(dout, {N, C}, "rmsnorm output gradient");
  expect_shape(dinp, {N, C}, "rmsnorm input gradient");
  expect_shape(dweight, {C}, "rmsnorm weight gradient");
  expect_shape(rstd, {N}, "rmsnorm rstd");
  if (N == 0 || C == 0) return;
  const int K = int((C / 8 + 31) / 32);
  if (vec8(C, {dinp.data, dout.data, inp.data, weight.data}) && K <= 8) {
    const int rows = kWarps * kFusedRows, blocks = int((N + rows - 1) / rows);
    auto* partial = static_cast<float*>(ctx.scratch(size_t(blocks) * size_t(C) * sizeof(float)));
    const size_t shmem = size_t(kWarps) * size_t(K) * 256 * sizeof(float);
    with_packs(K, [&](auto k) {
      auto* kernel = bwd_fused8<decltype(k)::value>;
      if (shmem > (size_t(48) << 10))  // past 1536 columns
        RESBM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shmem)));
      kernel<<<unsigned(blocks), kWarps * 32, shmem, ctx.stream>>>(dinp.data, partial, dout.data, inp.data,
                                                                   weight.data, rstd.data, N, int(C));
    });
    RESBM_CUDA_LAUNCH_CHECK();
    reduce_weight(ctx, dweight.data, partial, blocks, int(C));
    return;
  }
  if (vec8(C, {dinp.data, dout.data, inp.data, weight.data}))
    bwd_inp8<<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, ctx.stream>>>(dinp.data, dout.data, inp.data,
                                                                                 weight.data, rstd.data, N, int(C));
  else
    bwd_inp<<<unsigned((N + kWarps - 1) / kWarps), kWarps * 32, 0, ctx.stream>>>(dinp.data, dout.data, inp.data,
                                                                                weight.data, rstd.data, N, int(C));
  RESBM_CUDA_LAUNCH_CHECK();
  const int chunks = int((N + kChunkRows - 1) / kChunkRows);
  auto* partial = static_cast<float*>(ctx.scratch(size_t(chunks) * size_t(C) * sizeof(float)));
  bwd_weight_partial<<<dim3(unsigned((C + 127) / 128), unsigned(chunks)), 128, 0, ctx.stream>>>(
      partial, dout.data, inp.data, rstd.data, N, int(C));
  RESBM_CUDA_LAUNCH_CHECK();
  reduce_weight(ctx, dweight.data, partial, chunks, int(C));
}

}  // namespace resbm::ops
