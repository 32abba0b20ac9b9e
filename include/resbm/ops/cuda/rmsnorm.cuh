#pragma once
// RMSNorm on the GPU: bf16 input, weight and output, fp32 statistics.
//   forward:  out = inp · rstd · weight, rstd[N] (fp32) = 1/sqrt(mean(inp²) + eps)
//   backward: dinp += rstd · (g − inp · rstd² · mean(g · inp)), g = dout · weight
//             (bf16, ACCUMULATED as in the CPU contract: dinp is the residual stream's
//             gradient), and dweight[C] += Σ_n dout · inp · rstd (fp32).
// One warp per row. dweight is reduced deterministically: fixed chunks of rows write
// partial column sums into the context's scratch, a second kernel adds them in order. With
// 16-byte rows of up to 2048 columns the backward is one fused pass plus that reduce.
#include <initializer_list>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_rmsnorm {
constexpr int kWarps = 8;       // rows per block
constexpr int kChunkRows = 64;  // rows per dweight partial

__global__ void fwd(bf16* __restrict__ out, float* __restrict__ rstd, const bf16* __restrict__ inp,
                    const bf16* __restrict__ weight, int64_t N, int C, float eps) {
  using namespace resbm::cuda_detail;
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
  using namespace resbm::cuda_detail;
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
  using namespace resbm::cuda_detail;
  const int lane = threadIdx.x % 32, C8 = C / 8;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const auto* x = reinterpret_cast<const Pack8*>(inp + n * C);
  const auto* w = reinterpret_cast<const Pack8*>(weight);
  float ss = 0;
  for (int c = lane; c < C8; c += 32) {
    float v[8];
    unpack8(x[c], v);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / float(C) + eps);
  if (lane == 0) rstd[n] = r;
  auto* y = reinterpret_cast<Pack8*>(out + n * C);
  for (int c = lane; c < C8; c += 32) {
    float v[8], g[8];
    unpack8(x[c], v);
    unpack8(w[c], g);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = v[e] * r * g[e];
    y[c] = pack8(v);
  }
}

__global__ void bwd_inp8(bf16* __restrict__ dinp, const bf16* __restrict__ dout, const bf16* __restrict__ inp,
                         const bf16* __restrict__ weight, const float* __restrict__ rstd, int64_t N, int C) {
  using namespace resbm::cuda_detail;
  const int lane = threadIdx.x % 32, C8 = C / 8;
  const int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const auto* x = reinterpret_cast<const Pack8*>(inp + n * C);
  const auto* dy = reinterpret_cast<const Pack8*>(dout + n * C);
  const auto* w = reinterpret_cast<const Pack8*>(weight);
  float dot = 0;
  for (int c = lane; c < C8; c += 32) {
    float a[8], b[8], g[8];
    unpack8(dy[c], a);
    unpack8(w[c], g);
    unpack8(x[c], b);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += a[e] * g[e] * b[e];
  }
  dot = warp_sum(dot);
  const float r = rstd[n];
  const float k = r * r * dot / float(C);
  auto* dx = reinterpret_cast<Pack8*>(dinp + n * C);
  for (int c = lane; c < C8; c += 32) {
    float a[8], b[8], g[8], d[8];
    unpack8(dy[c], a);
    unpack8(w[c], g);
    unpack8(x[c], b);
    unpack8(dx[c], d);
#pragma unroll
    for (int e = 0; e < 8; ++e) d[e] += r * (a[e] * g[e] - b[e] * k);
    dx[c] = pack8(d);
  }
}

// bwd_inp8 and the dweight partials in one pass: each warp owns kFusedRows consecutive
// rows and keeps its lanes' column sums of dout · inp · rstd in registers (K packs of 8
// columns a lane, C <= 256·K, K <= 8: up to 2048 columns at 128 registers); the block adds
// its warps' sums in warp order in shared memory and writes one partial row, so dout and
// inp are read from memory once and the result does not depend on scheduling.
constexpr int kFusedRows = 4;  // rows per warp: 32 rows per block, 512 blocks at 16k rows

template <int K>
__global__ void bwd_fused8(bf16* __restrict__ dinp, float* __restrict__ partial, const bf16* __restrict__ dout,
                           const bf16* __restrict__ inp, const bf16* __restrict__ weight,
                           const float* __restrict__ rstd, int64_t N, int C) {
  using namespace resbm::cuda_detail;
  extern __shared__ float col[];  // [C]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, C8 = C / 8;
  const auto* w = reinterpret_cast<const Pack8*>(weight);
  float acc[K][8];
#pragma unroll
  for (int j = 0; j < K; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[j][e] = 0.0f;
  const int64_t first = (int64_t(blockIdx.x) * kWarps + warp) * kFusedRows;
  for (int64_t n = first; n < first + kFusedRows && n < N; ++n) {
    const auto* x = reinterpret_cast<const Pack8*>(inp + n * C);
    const auto* dy = reinterpret_cast<const Pack8*>(dout + n * C);
    float dot = 0;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = lane + 32 * j;
      if (c >= C8) break;
      float a[8], b[8], g[8];
      unpack8(dy[c], a);
      unpack8(w[c], g);
      unpack8(x[c], b);
#pragma unroll
      for (int e = 0; e < 8; ++e) dot += a[e] * g[e] * b[e];
    }
    dot = warp_sum(dot);
    const float r = rstd[n];
    const float k = r * r * dot / float(C);
    auto* dx = reinterpret_cast<Pack8*>(dinp + n * C);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = lane + 32 * j;
      if (c >= C8) break;
      float a[8], b[8], g[8], d[8];
      unpack8(dy[c], a);
      unpack8(w[c], g);
      unpack8(x[c], b);
      unpack8(dx[c], d);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        d[e] += r * (a[e] * g[e] - b[e] * k);
        acc[j][e] += a[e] * b[e] * r;
      }
      dx[c] = pack8(d);
    }
  }
  for (int c = threadIdx.x; c < C; c += blockDim.x) col[c] = 0.0f;
  for (int w8 = 0; w8 < kWarps; ++w8) {
    __syncthreads();
    if (warp != w8) continue;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = lane + 32 * j;
      if (c >= C8) break;
#pragma unroll
      for (int e = 0; e < 8; ++e) col[c * 8 + e] += acc[j][e];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) partial[int64_t(blockIdx.x) * C + c] = col[c];
}

inline bool vec8(int64_t C, std::initializer_list<const void*> ptrs) {
  if (C % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!resbm::cuda_detail::aligned16(p)) return false;
  return true;
}

// partial[chunk, c] = Σ_{n in chunk} dout[n,c] · inp[n,c] · rstd[n]
__global__ void bwd_weight_partial(float* __restrict__ partial, const bf16* __restrict__ dout,
                                   const bf16* __restrict__ inp, const float* __restrict__ rstd, int64_t N, int C) {
  using namespace resbm::cuda_detail;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t n0 = int64_t(blockIdx.y) * kChunkRows;
  const int64_t n1 = n0 + kChunkRows < N ? n0 + kChunkRows : N;
  float s = 0;
  for (int64_t n = n0; n < n1; ++n) s += ldf(dout + n * C + c) * ldf(inp + n * C + c) * rstd[n];
  partial[int64_t(blockIdx.y) * C + c] = s;
}

__global__ void bwd_weight_reduce(float* __restrict__ dweight, const float* __restrict__ partial, int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0;
  for (int k = 0; k < chunks; ++k) s += partial[int64_t(k) * C + c];
  dweight[c] += s;
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
    const size_t shmem = size_t(C) * sizeof(float);
    auto launch = [&](auto kernel) {
      kernel<<<unsigned(blocks), kWarps * 32, shmem, ctx.stream>>>(dinp.data, partial, dout.data, inp.data,
                                                                   weight.data, rstd.data, N, int(C));
    };
    switch (K) {
      case 1: launch(bwd_fused8<1>); break;
      case 2: launch(bwd_fused8<2>); break;
      case 3: launch(bwd_fused8<3>); break;
      case 4: launch(bwd_fused8<4>); break;
      case 5: launch(bwd_fused8<5>); break;
      case 6: launch(bwd_fused8<6>); break;
      case 7: launch(bwd_fused8<7>); break;
      default: launch(bwd_fused8<8>); break;
    }
    RESBM_CUDA_LAUNCH_CHECK();
    bwd_weight_reduce<<<unsigned((C + 127) / 128), 128, 0, ctx.stream>>>(dweight.data, partial, blocks, int(C));
    RESBM_CUDA_LAUNCH_CHECK();
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
  bwd_weight_reduce<<<unsigned((C + 127) / 128), 128, 0, ctx.stream>>>(dweight.data, partial, chunks, int(C));
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
