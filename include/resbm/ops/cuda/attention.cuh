#pragma once
// Fused causal attention, flash style: the T×T matrix never exists in memory.
// q, k, v, out, dout, dq, dk, dv: bf16 [B, T, H, hd] (the layout a [B·T, C] linear gives,
// C = H·hd), scale 1/sqrt(hd), fp32 softmax and accumulation. hd ∈ {32, 64, 128}.
//
// The cache is NOT the CPU op's softmax: it is cuda_attention_cache_size(B, T, H) = 2·B·H·T
// floats, the log-sum-exp of every query row ([B, H, T], written by the forward) and a
// [B, H, T] scratch row of D = rowsum(dout ⊙ out) that the backward fills.
//
// Backward WRITES (=) dq, dk and dv (bf16) instead of adding to them as the CPU op does:
// they are fresh gradients that only RoPE's backward and the QKV matmul_backward read.
// On tensor cores it is by default FlashAttention-2's single pass: one kernel per key tile
// accumulates dk and dv and adds dq into an fp32 buffer (ctx.scratch, 4·B·T·H·hd bytes) with
// atomics, so dq's last bits vary from run to run; on Hopper (an sm_90a image, hd 64 or 128)
// on warpgroup MMA (attention_wgmma_bwd.cuh), elsewhere on mma.sync (attention_mma.cuh).
// cuda_attention_deterministic = true selects two kernels without atomics (one walks key
// tiles per query tile for dq, a second query tiles per key tile for dk and dv; both
// recompute P from the lse), bitwise reproducible, and slower.
//
// The CUDA-core kernels below (cuda_attention_tensor_cores = false) are the first, simple
// version, deterministic: each query (or key) row is owned by hd/32 consecutive lanes, each
// holding 32 of its dimensions in registers; dot products are finished with one or two
// shuffles. K/V (or Q/dO) tiles of 64 rows are staged in shared memory and read as
// broadcasts.
#include <cmath>

#include "resbm/ops/cuda/attention_mma.cuh"
#include "resbm/ops/cuda/attention_wgmma_bwd.cuh"
#include "resbm/ops/cuda/common.cuh"
#include "resbm/ops/cuda/rope.cuh"

namespace resbm::ops {

// Tensor cores (attention_mma.cuh) by default; false selects the CUDA-core kernels below
// (kept as an independent implementation to compare against, and as a fallback).
inline bool cuda_attention_tensor_cores = true;
// Tensor-core backward without atomics (two kernels, S and dP computed twice): bitwise the
// same dq on every run, for tests that compare gradients exactly. Default false: the
// single pass, whose dq is summed over key tiles by fp32 atomics in a varying order.
inline bool cuda_attention_deterministic = false;
// Hopper's warpgroup MMA where the kernels were built for sm_90a, at hd 64 and 128: the
// single-pass TMA backward (attention_wgmma_bwd.cuh's bwd_tma; 1.56x / 1.79x the mma.sync one
// on the H200, hd 64 / 128) and the TMA forward (attention_wgmma.cuh's fwd_tma; 1.28x /
// 1.53x). false keeps mma.sync (to compare, and for the tests that check both).
inline bool cuda_attention_wgmma = true;

inline int64_t cuda_attention_cache_size(int64_t B, int64_t T, int64_t H) { return 2 * B * H * T; }

namespace cuda_detail_attn {
constexpr int kRows = 64;  // query (or key) rows per block
constexpr int kTile = 64;  // key (or query) rows per shared-memory tile
constexpr float kLog2e = 1.4426950408889634f;

// 32 consecutive bf16 of `src` (16-byte aligned) into fp32 registers.
__device__ __forceinline__ void load32(const bf16* src, float* dst) {
  const auto* p = reinterpret_cast<const resbm::cuda_detail::Pack8*>(src);
#pragma unroll
  for (int i = 0; i < 4; ++i) resbm::cuda_detail::unpack8(p[i], dst + 8 * i);
}
__device__ __forceinline__ void store32(bf16* dst, const float* src) {
  auto* p = reinterpret_cast<resbm::cuda_detail::Pack8*>(dst);
#pragma unroll
  for (int i = 0; i < 4; ++i) p[i] = resbm::cuda_detail::pack8(src + 8 * i);
}
__device__ __forceinline__ float dot32(const float* a, const bf16* b) {
  float x[32];
  load32(b, x);
  float s = 0;
#pragma unroll
  for (int d = 0; d < 32; ++d) s = fmaf(a[d], x[d], s);
  return s;
}
// Finishes a dot product split over R consecutive lanes.
template <int R>
__device__ __forceinline__ float row_reduce(float v) {
#pragma unroll
  for (int o = 1; o < R; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Copies rows [r0, r0 + kTile) of a [T, ·] head (row stride C) into a [kTile][HD] shared
// tile; rows past T are zero.
template <int HD, int NT>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int64_t r0, int64_t T, int64_t C) {
  constexpr int kVec = HD / 8;  // 16-byte vectors per row
  for (int idx = threadIdx.x; idx < kTile * kVec; idx += NT) {
    const int r = idx / kVec, c = idx % kVec;
    resbm::cuda_detail::Pack8 val{};
    if (r0 + r < T) val = reinterpret_cast<const resbm::cuda_detail::Pack8*>(src + (r0 + r) * C)[c];
    reinterpret_cast<resbm::cuda_detail::Pack8*>(tile + r * HD)[c] = val;
  }
}

template <int HD>
__global__ void __launch_bounds__(kRows * HD / 32)
    fwd(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q, const bf16* __restrict__ k,
        const bf16* __restrict__ v, int T, int H) {
  constexpr int R = HD / 32, NT = kRows * R, kChunk = 16;
  __shared__ alignas(16) bf16 Ks[kTile * HD];
  __shared__ alignas(16) bf16 Vs[kTile * HD];
  const int row = threadIdx.x / R, part = threadIdx.x % R;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = blockIdx.x * kRows, i = q0 + row;
  const float qscale = kLog2e / sqrtf(float(HD));  // scores in the log2 domain

  float qr[32], acc[32];
  if (i < T) load32(q + base + int64_t(i) * C + part * 32, qr);
  else {
#pragma unroll
    for (int d = 0; d < 32; ++d) qr[d] = 0;
  }
#pragma unroll
  for (int d = 0; d < 32; ++d) {
    qr[d] *= qscale;
    acc[d] = 0;
  }
  float m = -INFINITY, l = 0;
  // Last query row of this warp: chunks of keys past it are skipped warp-uniformly.
  const int warp_last = q0 + ((threadIdx.x / 32) * 32 + 31) / R;
  const int kend = min(T, q0 + kRows);
  for (int k0 = 0; k0 < kend; k0 += kTile) {
    __syncthreads();
    load_tile<HD, NT>(Ks, k + base, k0, T, C);
    load_tile<HD, NT>(Vs, v + base, k0, T, C);
    __syncthreads();
    for (int jj = 0; jj < kTile; jj += kChunk) {
      if (k0 + jj > warp_last || k0 + jj >= T) break;
      float s[kChunk];
      float cmax = -INFINITY;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        s[u] = row_reduce<R>(dot32(qr, Ks + (jj + u) * HD + part * 32));
        if (k0 + jj + u > i) s[u] = -INFINITY;  // causal mask (also covers keys >= T for rows < T)
        cmax = fmaxf(cmax, s[u]);
      }
      const float m_new = fmaxf(m, cmax);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float corr = exp2f(m - m_use);
      l *= corr;
#pragma unroll
      for (int d = 0; d < 32; ++d) acc[d] *= corr;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const float p = exp2f(s[u] - m_use);
        l += p;
        float vv[32];
        load32(Vs + (jj + u) * HD + part * 32, vv);
#pragma unroll
        for (int d = 0; d < 32; ++d) acc[d] = fmaf(p, vv[d], acc[d]);
      }
      m = m_new;
    }
  }
  if (i < T) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int d = 0; d < 32; ++d) acc[d] *= inv;
    store32(out + base + int64_t(i) * C + part * 32, acc);
    if (part == 0) lse[int64_t(bh) * T + i] = (m + log2f(l)) / kLog2e;  // natural-log lse of scaled scores
  }
}

// D[bh, i] = Σ_d dout[i,d] · out[i,d]; HD/8 lanes per (b, t, h) row, 16 bytes each. When
// dq_acc is given (the single-pass backward), its HD floats of the row are zeroed too.
template <int HD>
__global__ void bwd_dot(float* __restrict__ D, float* __restrict__ dq_acc, const bf16* __restrict__ dout,
                        const bf16* __restrict__ out, int64_t rows, int T, int H) {
  constexpr int R = HD / 8;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t n = idx / R;  // (b*T + t)*H + h
  const int part = int(idx % R);
  float s = 0;
  if (n < rows) {  // no early return: the whole warp takes part in the shuffles
    float g[8], o[8];
    resbm::cuda_detail::unpack8(reinterpret_cast<const resbm::cuda_detail::Pack8*>(dout + n * HD)[part], g);
    resbm::cuda_detail::unpack8(reinterpret_cast<const resbm::cuda_detail::Pack8*>(out + n * HD)[part], o);
#pragma unroll
    for (int d = 0; d < 8; ++d) s = fmaf(g[d], o[d], s);
    if (dq_acc) {
      auto* z = reinterpret_cast<float4*>(dq_acc + n * HD + part * 8);
      z[0] = z[1] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  s = row_reduce<R>(s);
  if (n < rows && part == 0) {
    const int h = int(n % H);
    const int64_t bt = n / H;
    D[(bt / T * H + h) * T + bt % T] = s;
  }
}

// dq = scale · Σ_j dS_ij k_j, dS_ij = P_ij (dP_ij − D_i), dP_ij = dout_i · v_j.
template <int HD>
__global__ void __launch_bounds__(kRows * HD / 32)
    bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ dout, const float* __restrict__ lse,
           const float* __restrict__ D, const bf16* __restrict__ q, const bf16* __restrict__ k,
           const bf16* __restrict__ v, int T, int H, int64_t G) {
  constexpr int R = HD / 32, NT = kRows * R;
  __shared__ alignas(16) bf16 Ks[kTile * HD];
  __shared__ alignas(16) bf16 Vs[kTile * HD];
  const int row = threadIdx.x / R, part = threadIdx.x % R;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = blockIdx.x * kRows, i = q0 + row;
  const float scale = 1.0f / sqrtf(float(HD)), qscale = scale * kLog2e;

  float qr[32], gr[32], acc[32];
  float lse2 = 0, Di = 0;
  if (i < T) {
    load32(q + base + int64_t(i) * C + part * 32, qr);
    load32(dout + base + int64_t(i) * C + part * 32, gr);
    lse2 = lse[int64_t(bh) * T + i] * kLog2e;
    Di = D[int64_t(bh) * T + i];
  } else {
#pragma unroll
    for (int d = 0; d < 32; ++d) qr[d] = gr[d] = 0;
  }
#pragma unroll
  for (int d = 0; d < 32; ++d) {
    qr[d] *= qscale;
    acc[d] = 0;
  }
  const int warp_last = q0 + ((threadIdx.x / 32) * 32 + 31) / R;
  const int kend = min(T, q0 + kRows);
  for (int k0 = 0; k0 < kend; k0 += kTile) {
    __syncthreads();
    load_tile<HD, NT>(Ks, k + base, k0, T, C);
    load_tile<HD, NT>(Vs, v + base, k0, T, C);
    __syncthreads();
    const int jend = min(kTile, min(T, warp_last + 1) - k0);
    for (int jj = 0; jj < jend; ++jj) {
      const float s = row_reduce<R>(dot32(qr, Ks + jj * HD + part * 32));
      const float dp = row_reduce<R>(dot32(gr, Vs + jj * HD + part * 32));
      const float p = (k0 + jj <= i) ? exp2f(s - lse2) : 0.0f;
      const float ds = p * (dp - Di);
      float kk[32];
      load32(Ks + jj * HD + part * 32, kk);
#pragma unroll
      for (int d = 0; d < 32; ++d) acc[d] = fmaf(ds, kk[d], acc[d]);
    }
  }
  if (i < T) {
#pragma unroll
    for (int d = 0; d < 32; ++d) acc[d] *= scale;
    store32(dq + int64_t(b) * T * G + int64_t(h) * HD + int64_t(i) * G + part * 32, acc);
  }
}

// dv_j = Σ_i P_ij dout_i,  dk_j = scale · Σ_i dS_ij q_i, over queries i >= j.
template <int HD>
__global__ void __launch_bounds__(kRows * HD / 32)
    bwd_dkdv(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
             const float* __restrict__ lse, const float* __restrict__ D, const bf16* __restrict__ q,
             const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, int64_t G) {
  constexpr int R = HD / 32, NT = kRows * R;
  __shared__ alignas(16) bf16 Qs[kTile * HD];
  __shared__ alignas(16) bf16 Gs[kTile * HD];
  __shared__ float Ls[kTile], Ds[kTile];
  const int row = threadIdx.x / R, part = threadIdx.x % R;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int j0 = blockIdx.x * kRows, j = j0 + row;
  const float scale = 1.0f / sqrtf(float(HD)), qscale = scale * kLog2e;

  float kr[32], vr[32], dka[32], dva[32];
  if (j < T) {
    load32(k + base + int64_t(j) * C + part * 32, kr);
    load32(v + base + int64_t(j) * C + part * 32, vr);
  } else {
#pragma unroll
    for (int d = 0; d < 32; ++d) kr[d] = vr[d] = 0;
  }
#pragma unroll
  for (int d = 0; d < 32; ++d) {
    kr[d] *= qscale;
    dka[d] = dva[d] = 0;
  }
  const int warp_first = j0 + ((threadIdx.x / 32) * 32) / R;  // first key row of this warp
  for (int i0 = j0; i0 < T; i0 += kTile) {
    __syncthreads();
    load_tile<HD, NT>(Qs, q + base, i0, T, C);
    load_tile<HD, NT>(Gs, dout + base, i0, T, C);
    for (int r = threadIdx.x; r < kTile; r += NT) {
      const bool in = i0 + r < T;
      Ls[r] = in ? lse[int64_t(bh) * T + i0 + r] * kLog2e : INFINITY;
      Ds[r] = in ? D[int64_t(bh) * T + i0 + r] : 0.0f;
    }
    __syncthreads();
    // Queries before this warp's first key contribute nothing to any of its keys.
    const int ibeg = max(0, warp_first - i0), iend = min(kTile, T - i0);
    for (int ii = ibeg; ii < iend; ++ii) {
      const float s = row_reduce<R>(dot32(kr, Qs + ii * HD + part * 32));
      const float dp = row_reduce<R>(dot32(vr, Gs + ii * HD + part * 32));
      const float p = (i0 + ii >= j) ? exp2f(s - Ls[ii]) : 0.0f;
      const float ds = p * (dp - Ds[ii]);
      float qq[32], gg[32];
      load32(Qs + ii * HD + part * 32, qq);
      load32(Gs + ii * HD + part * 32, gg);
#pragma unroll
      for (int d = 0; d < 32; ++d) {
        dva[d] = fmaf(p, gg[d], dva[d]);
        dka[d] = fmaf(ds, qq[d], dka[d]);
      }
    }
  }
  if (j < T) {
#pragma unroll
    for (int d = 0; d < 32; ++d) dka[d] *= scale;
    const int64_t at = int64_t(b) * T * G + int64_t(h) * HD + int64_t(j) * G + part * 32;
    store32(dk + at, dka);
    store32(dv + at, dva);
  }
}

// Whether this binary's kernels have wgmma (an sm_90a image running on an sm_90 device): a
// one-thread kernel reports what it was compiled with, asked once per process.
__global__ void wgmma_probe(int* built) { *built = RESBM_ATTN_WGMMA; }
inline bool wgmma_built(CudaContext& ctx) {
  static const bool built = [&] {
    if (ctx.props.major != 9) return false;
    DeviceBuffer<int> flag(1);
    flag.zero(ctx.stream);
    wgmma_probe<<<1, 1, 0, ctx.stream>>>(flag.data());
    RESBM_CUDA_LAUNCH_CHECK();
    ctx.synchronize();
    return flag.to_host()[0] == 1;
  }();
  return built;
}

template <int HD>
void launch_fwd(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                int64_t T, int64_t H) {
  // The TMA forward on warpgroup MMA where built (H200, B 16, T 1024: hd 64 0.126 against
  // mma.sync's 0.161 ms, hd 128 0.227 against 0.347).
  if constexpr (HD == 64 || HD == 128) {
    if (cuda_attention_tensor_cores && cuda_attention_wgmma && wgmma_built(ctx)) {
      cuda_detail_attn_wgmma::launch_fwd_tma<HD>(ctx, out, lse, q, k, v, B, T, H);
      return;
    }
  }
  if (cuda_attention_tensor_cores) {
    cuda_detail_attn_mma::launch_fwd<HD>(ctx, out, lse, q, k, v, B, T, H);
    return;
  }
  const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(B * H));
  fwd<HD><<<grid, kRows * HD / 32, 0, ctx.stream>>>(out, lse, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

template <int HD>
void launch_bwd(CudaContext& ctx, bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse, float* D,
                const bf16* q, const bf16* k, const bf16* v, const bf16* out, int64_t B, int64_t T, int64_t H,
                const CudaRopeTable* rope, int64_t G) {
  const bool single_pass = cuda_attention_tensor_cores && !cuda_attention_deterministic;
  float* dq_acc = single_pass ? static_cast<float*>(ctx.scratch(size_t(B * T * H) * HD * sizeof(float))) : nullptr;
  const int64_t rows = B * T * H;
  bwd_dot<HD><<<unsigned((rows * (HD / 8) + 255) / 256), 256, 0, ctx.stream>>>(D, dq_acc, dout, out, rows, int(T),
                                                                                int(H));
  RESBM_CUDA_LAUNCH_CHECK();
  const float* rcos = rope ? rope->cos() : nullptr;
  const float* rsin = rope ? rope->sin() : nullptr;
  if constexpr (HD == 64 || HD == 128) {
    if (single_pass && cuda_attention_wgmma && wgmma_built(ctx)) {
      cuda_detail_attn_wgmma_bwd::launch_bwd_tma<HD>(ctx, dq, dq_acc, dk, dv, dout, lse, D, q, k, v, B, T, H, rcos,
                                                     rsin, G);
      return;
    }
  }
  if (cuda_attention_tensor_cores) {
    cuda_detail_attn_mma::launch_bwd<HD>(ctx, dq, dq_acc, dk, dv, dout, lse, D, q, k, v, B, T, H, rcos, rsin, G);
    return;
  }
  const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(B * H));
  bwd_dq<HD><<<grid, kRows * HD / 32, 0, ctx.stream>>>(dq, dout, lse, D, q, k, v, int(T), int(H), G);
  RESBM_CUDA_LAUNCH_CHECK();
  bwd_dkdv<HD><<<grid, kRows * HD / 32, 0, ctx.stream>>>(dk, dv, dout, lse, D, q, k, v, int(T), int(H), G);
  RESBM_CUDA_LAUNCH_CHECK();
  if (rope) {  // the reference kernels stay plain: RoPE's own pass
    rope_backward(ctx, CudaTensor<bf16>(dq, {B, T, H, HD}), *rope, G);
    rope_backward(ctx, CudaTensor<bf16>(dk, {B, T, H, HD}), *rope, G);
  }
}

inline void check(const char* what, int64_t hd, const void* p) {
  RESBM_CHECK(hd == 32 || hd == 64 || hd == 128, cat(what, ": head dimension ", hd, " is not 32, 64 or 128"),
              "choose d_model / n_heads in {32, 64, 128} for the CUDA attention");
  RESBM_CHECK(resbm::cuda_detail::aligned16(p), cat(what, ": a q/k/v/out pointer is not 16-byte aligned"),
              "pass views that start on a 16-byte boundary");
}
}  // namespace cuda_detail_attn

inline void attention_forward(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<float> cache,
                              CudaTensor<const bf16> q, CudaTensor<const bf16> k, CudaTensor<const bf16> v) {
  using namespace cuda_detail_attn;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3);
  expect_shape(q, {B, T, H, hd}, "attention q");
  expect_shape(k, {B, T, H, hd}, "attention k");
  expect_shape(v, {B, T, H, hd}, "attention v");
  expect_shape(out, {B, T, H, hd}, "attention output");
  expect_shape(cache, {cuda_attention_cache_size(B, T, H)}, "attention cache");
  if (B * T * H == 0) return;
  for (const void* p : {(const void*)q.data, (const void*)k.data, (const void*)v.data, (const void*)out.data})
    check("attention_forward", hd, p);
  float* lse = cache.data;
  switch (hd) {
    case 32: launch_fwd<32>(ctx, out.data, lse, q.data, k.data, v.data, B, T, H); break;
    case 64: launch_fwd<64>(ctx, out.data, lse, q.data, k.data, v.data, B, T, H); break;
    default: launch_fwd<128>(ctx, out.data, lse, q.data, k.data, v.data, B, T, H); break;
  }
}

// dq, dk, dv are WRITTEN (=). The cache's second half is overwritten with D. With `rope`
// (the table q and k were rotated with), dq and dk are rotated back before they are
// stored: the gradients of q and k before rope_forward, as rope_backward would leave them,
// rounded to bf16 once instead of twice and without RoPE's own pass over them.
// grad_ld: elements from one (b, t) row of dq, dk and dv to the next (0: H·hd, contiguous).
// The model passes 3·H·hd: its three gradients are the column blocks of one [B·T, 3·C]
// matrix, so that the projections' input gradient is one GEMM with K = 3·C.
inline void attention_backward(CudaContext& ctx, CudaTensor<bf16> dq, CudaTensor<bf16> dk, CudaTensor<bf16> dv,
                               CudaTensor<const bf16> dout, CudaTensor<float> cache, CudaTensor<const bf16> q,
                               CudaTensor<const bf16> k, CudaTensor<const bf16> v, CudaTensor<const bf16> out,
                               const CudaRopeTable* rope = nullptr, int64_t grad_ld = 0) {
  using namespace cuda_detail_attn;
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3);
  expect_shape(q, {B, T, H, hd}, "attention q");
  expect_shape(k, {B, T, H, hd}, "attention k");
  expect_shape(v, {B, T, H, hd}, "attention v");
  expect_shape(out, {B, T, H, hd}, "attention output");
  expect_shape(dout, {B, T, H, hd}, "attention output gradient");
  expect_shape(dq, {B, T, H, hd}, "attention q gradient");
  expect_shape(dk, {B, T, H, hd}, "attention k gradient");
  expect_shape(dv, {B, T, H, hd}, "attention v gradient");
  expect_shape(cache, {cuda_attention_cache_size(B, T, H)}, "attention cache");
  if (B * T * H == 0) return;
  for (const void* p : {(const void*)q.data, (const void*)k.data, (const void*)v.data, (const void*)out.data,
                        (const void*)dout.data, (const void*)dq.data, (const void*)dk.data, (const void*)dv.data})
    check("attention_backward", hd, p);
  const int64_t G = grad_ld ? grad_ld : H * hd;
  RESBM_CHECK(G >= H * hd && G % 8 == 0,
              cat("attention_backward: gradient row stride ", G, " for rows of ", H * hd, " elements"),
              "pass 0 (contiguous) or a multiple of 8 no smaller than heads · head dimension");
  if (rope) {
    RESBM_CHECK(rope->head_dim() == hd && rope->seq_len() >= T,
                cat("attention_backward: RoPE table for head dimension ", rope->head_dim(), " and ", rope->seq_len(),
                    " positions, attention of head dimension ", hd, " over ", T, " positions"),
                "pass the table q and k were rotated with");
  }
  const float* lse = cache.data;
  float* D = cache.data + B * H * T;
  switch (hd) {
    case 32: launch_bwd<32>(ctx, dq.data, dk.data, dv.data, dout.data, lse, D, q.data, k.data, v.data, out.data, B, T, H, rope, G); break;
    case 64: launch_bwd<64>(ctx, dq.data, dk.data, dv.data, dout.data, lse, D, q.data, k.data, v.data, out.data, B, T, H, rope, G); break;
    default: launch_bwd<128>(ctx, dq.data, dk.data, dv.data, dout.data, lse, D, q.data, k.data, v.data, out.data, B, T, H, rope, G); break;
  }
}

}  // namespace resbm::ops
