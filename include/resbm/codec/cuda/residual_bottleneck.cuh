#pragma once
// The two halves of ResidualBottleneck<rank<R>, Mlp<H, silu>, Truncate | NoIdentity, FwdWire,
// BwdWire, NoSideInfo | TokenReembed> on the GPU (the presets::Resbm<R> codec), the CPU
// halves of codec/residual_bottleneck.hpp with the same parameters and the same wire bytes
// format, so either half can face a CPU half over one link:
//
//   encoder   z = h[:, :r] + fc2(silu(fc1(rmsnorm(h) · gain)))  ->  FwdWire bytes
//   decoder   y = Deq(wire);  h' = pad(y) + fc2(silu(fc1(y))) + E[ids]
//   backward  decoder: dh' -> dy (straight through) -> BwdWire bytes, dW += ...;
//             encoder: BwdWire bytes -> dz -> dh (written), dW += ...
//
// Parameters: the layout (names, shapes, kinds, offsets, 16-element padding) is declared
// by the CPU half over a host ParamArena<float> that is never allocated, so it cannot drift
// from the CPU's; init(seed) runs the CPU half's init on the host and uploads the result, so
// the initial values are the CPU's bit for bit. As nn::CudaLlama: fp32 master weights and
// gradients in that layout, and a bf16 copy that forward and backward read. Each half also
// derives bf16 operands from them (the encoder's fc1 ⊙ gain, the decoder's [fc2 | Eᵀ |
// identity] output weight), rebuilt by the first forward after the weights may have changed.
//
// Precision (DESIGN §4): bf16 activations (hidden pre/post activations, the decoded code y
// and dz, the output h'), fp32 accumulation everywhere, fp32 rstd, fp32 weight gradients.
// The encoder's RMSNorm is folded (see Encoder::forward): its gain multiplies fc1 in one
// bf16 copy (from the fp32 masters) and its 1/rms scales the hidden rows, so N(h) is never
// rounded to bf16 or stored. The encoder's code z is accumulated in fp32 and quantised in
// the same kernel (the fused encoder): the wire bytes are exactly FwdWire::encode(z) of that
// z, which differs from the CPU's z by the bf16 rounding of the hidden activations (~2e-3
// relative), so the bytes match the CPU's only where no code rounds differently. The
// decoder's h' is one fp32 sum rounded once; its code gradient dy is accumulated in fp32
// and encoded from fp32.
//
// Gradient semantics: parameter gradients (fp32) accumulate (+=), as on the CPU; the
// encoder's dh (bf16) is WRITTEN (=), unlike the CPU's +=: the stage's last output feeds the
// encoder alone, so nothing else adds into it, and a read-add-write would cost a pass.
//
// Contracts the CPU halves do not have (no host sync on the hot path):
// - the encoder keeps a pointer to h, not a copy: h must stay unchanged until backward (it
//   is the stage's last block output, which the stage keeps for its own backward anyway);
// - token ids are on the device and not checked on the host: an id out of [0, vocab) gives
//   a NaN row of h' (as ops::embedding_forward) and adds nothing to the re-embedding's
//   gradient;
// - wire errors (a non-finite z or dy, a corrupt payload) are reported by check(acts),
//   which synchronises and throws the CPU wire's Error. Each Activations holds the
//   statuses of its own launches: call check() between two forwards (or two backwards) on
//   the same Activations.
// - weights change through params() / params_bf16() (what CudaAdamW steps), upload_params
//   or refresh_bf16: each call marks the derived operands stale, and the next forward
//   rebuilds them on the stream. A write through a pointer taken before the latest forward
//   is not seen; the weights must not change between a micro-batch's forward and backward.
// - the re-embedding takes part in the decoder's output GEMM as a one-hot block (its
//   gradient is deterministic) for vocabularies that are multiples of 8 up to 1024; larger
//   ones gather E[ids] in a pass and add its gradient with fp32 atomics (not bitwise
//   deterministic, like ops::embedding_backward).
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "resbm/codec/residual_bottleneck.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/ops/cuda/cast.cuh"
#include "resbm/ops/cuda/matmul.cuh"
#include "resbm/ops/cuda/silu.cuh"
#include "resbm/ops/cuda/wire.cuh"

namespace resbm::codec {

namespace rb_cuda_detail {

using resbm::cuda_detail::ldf;
using resbm::cuda_detail::Pack8;
using resbm::cuda_detail::stf;

constexpr int kRowWarps = 8;  // row kernels: a warp per row, 8 rows a block

__device__ __forceinline__ float sigmoid(float x) { return ops::cuda_detail_silu::sigmoid(x); }

// The encoder's RMSNorm gain folded into fc1 (from the fp32 masters, one rounding):
// w1g[k, c] = bf16(w1[k, c] · gain[c]), so fc1(rmsnorm(h) · gain) = rstd ⊙ (h · w1gᵀ).
__global__ void fold_gain(bf16* __restrict__ w1g, const float* __restrict__ w1, const float* __restrict__ gain, int H,
                          int d) {
  const int total = H * d;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x)
    stf(w1g + i, w1[i] * gain[i % d]);
}

// rstd[n] = 1 / sqrt(mean(x[n, :]²) + eps) (the CPU rmsnorm's), 16-byte loads.
__global__ void row_rstd(float* __restrict__ rstd, const bf16* __restrict__ x, int64_t N, int d, float eps) {
  const int lane = threadIdx.x % 32, d8 = d / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const auto* xr = reinterpret_cast<const Pack8*>(x + n * d);
  float ss = 0;
  for (int c = lane; c < d8; c += 32) {
    float v[8];
    resbm::cuda_detail::unpack8(xr[c], v);
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
  }
  ss = resbm::cuda_detail::warp_sum(ss);
  if (lane == 0) rstd[n] = rsqrtf(ss / float(d) + eps);
}

// silu(x) and silu'(x) in fp32, with ops/cuda/silu.cuh's sigmoid.
__device__ __forceinline__ float silu_f(float x) { return x * sigmoid(x); }
__device__ __forceinline__ float silu_grad_f(float x) {
  const float s = sigmoid(x);
  return s * (1.0f + x * (1.0f - s));
}

// Encoder hidden layer, forward, where the fused encoder cannot take it (see SiluRows):
// act = silu(rstd ⊙ P), P = h · w1gᵀ (kept: the backward reads it).
template <int H>
__global__ void enc_hidden_fwd(bf16* __restrict__ act, const bf16* __restrict__ pre, const float* __restrict__ rstd,
                               int64_t N) {
  constexpr int H8 = H / 8;
  const auto* P = reinterpret_cast<const Pack8*>(pre);
  auto* A = reinterpret_cast<Pack8*>(act);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * H8; i += int64_t(gridDim.x) * blockDim.x) {
    const float sc = rstd[i / H8];
    float a[8];
    resbm::cuda_detail::unpack8(P[i], a);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] = silu_f(a[e] * sc);
    A[i] = resbm::cuda_detail::pack8(a);
  }
}

// ---- the fused encoder with the hidden layer's rstd ⊙ and SiLU in its A-fragment loads ----
// ops::fused_linear_encode's per-warp kernel given this row transform reads P = h · w1gᵀ
// instead of act: each 16-byte A load of P becomes silu(rstd ⊙ P) in registers before its
// mmas, so the separate SiLU pass (read P, write act) is gone. act is still stored from the
// same registers, since the backward's d fc2 GEMM reads it; the backward recomputes rstd ⊙ P
// from P. act is the bf16 rounding of the same fp32 values the separate pass wrote, bit for
// bit. Only where 16 tokens hold whole groups of the wire (ops::fused_per_warp: Int8Grouped<16>,
// the presets' wire, and Int8PerToken); elsewhere enc_hidden_fwd, then the plain fused encoder.
__device__ __forceinline__ uint32_t silu2(uint32_t u, float sc) {
  const __nv_bfloat162 h =
      __floats2bfloat162_rn(silu_f(__uint_as_float(u << 16) * sc), silu_f(__uint_as_float(u & 0xffff0000u) * sc));
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint4 silu8(uint4 v, float sc) {
  return make_uint4(silu2(v.x, sc), silu2(v.y, sc), silu2(v.z, sc), silu2(v.w, sc));
}

struct SiluRows {
  const float* __restrict__ rstd;
  bf16* __restrict__ act;
  struct Row {
    float s0, s1;  // rstd of rows row0 and row0 + 8 (0 past N: those rows' A fragments are zeros)
  };
  __device__ __forceinline__ void load(const ops::cuda_detail_wire::FusedArgs& p, int64_t row0, Row& r) const {
    r.s0 = row0 < p.N ? __ldg(rstd + row0) : 0.0f;
    r.s1 = row0 + 8 < p.N ? __ldg(rstd + row0 + 8) : 0.0f;
  }
  // The fragments of P for k in [kc, kc + 256) turned into silu(rstd ⊙ P), in place, and
  // stored into act (rows below N).
  __device__ __forceinline__ void apply(const ops::cuda_detail_wire::FusedArgs& p, int64_t row0, int kc, int t,
                                        const Row& r, uint4 (&a0)[8], uint4 (&a1)[8]) const {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (kc + 32 * j >= p.H) break;
      const int k = kc + 32 * j + 8 * t;
      a0[j] = silu8(a0[j], r.s0);
      a1[j] = silu8(a1[j], r.s1);
      if (row0 < p.N) *reinterpret_cast<uint4*>(act + row0 * p.H + k) = a0[j];
      if (row0 + 8 < p.N) *reinterpret_cast<uint4*>(act + (row0 + 8) * p.H + k) = a1[j];
    }
  }
};

// Encoder hidden layer, backward, a warp per row, from the code gradient dz [N, R] (K = R is
// too narrow for a GEMM to pay): dact = dz · fc2 (fp32), dpre = dact · silu'(rstd ⊙ P),
// ds = rstd ⊙ dpre (bf16, stored), and the RMSNorm backward's per-row coefficient
//   coef[n] = rstd² · mean_c(gs · h) = rstd² · Σ_k ds[n, k] · P[n, k] / d
// (gs = ds · w1g and P = h · w1gᵀ share w1g), so that the row pass after the gs GEMM needs
// no reduction over gs and reads it once.
template <int H, int R>
__global__ void enc_hidden_bwd(bf16* __restrict__ ds, float* __restrict__ coef, const bf16* __restrict__ dz,
                               const bf16* __restrict__ w2, const bf16* __restrict__ pre,
                               const float* __restrict__ rstd, int64_t N, int d) {
  using resbm::cuda_detail::pack8;
  using resbm::cuda_detail::unpack8;
  constexpr int H8 = H / 8;
  const int lane = threadIdx.x % 32;
  const auto* W = reinterpret_cast<const Pack8*>(w2);
  for (int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32; n < N; n += int64_t(gridDim.x) * kRowWarps) {
    float zv[R];
#pragma unroll
    for (int j = 0; j < R; ++j) zv[j] = ldf(dz + n * R + j);
    const float sc = rstd[n];
    float dot = 0.0f;
    for (int c = lane; c < H8; c += 32) {
      float g[8] = {0, 0, 0, 0, 0, 0, 0, 0}, w[8], p[8];
#pragma unroll
      for (int j = 0; j < R; ++j) {
        unpack8(W[j * H8 + c], w);
#pragma unroll
        for (int e = 0; e < 8; ++e) g[e] += zv[j] * w[e];
      }
      unpack8(reinterpret_cast<const Pack8*>(pre)[n * H8 + c], p);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        g[e] *= silu_grad_f(p[e] * sc) * sc;
        dot += g[e] * p[e];
      }
      reinterpret_cast<Pack8*>(ds)[n * H8 + c] = pack8(g);
    }
    dot = resbm::cuda_detail::warp_sum(dot);
    if (lane == 0) coef[n] = sc * sc * dot / float(d);
  }
}

// The decoder's fc1 [H, R] into shared memory transposed, ws[j·H + k] = fc1[k, j], so a lane
// reads its 8 hidden units of code column j as one 16-byte vector; for the whole block.
template <int H, int R>
__device__ __forceinline__ const Pack8* stage_fc1(bf16* ws, const bf16* __restrict__ w1) {
  for (int i = threadIdx.x; i < R * H; i += blockDim.x) ws[(i % R) * H + i / R] = w1[i];
  __syncthreads();
  return reinterpret_cast<const Pack8*>(ws);
}

// Decoder hidden layer, backward, a warp per row: dpre = dact ⊙ silu'(pre) (stored, bf16, for
// the d fc1 GEMM) and dy[n, :] = dpre · fc1 (+ dh'[n, :r] with Truncate; fp32 from the fp32
// dpre, written): the N x R output is too narrow for a GEMM to pay.
template <int H, int R, bool kTruncate>
__global__ void dec_hidden_bwd(float* __restrict__ dy, bf16* __restrict__ dpre, const bf16* __restrict__ dact,
                               const bf16* __restrict__ pre, const bf16* __restrict__ w1, const bf16* __restrict__ dh,
                               int d, int64_t N) {
  using resbm::cuda_detail::pack8;
  using resbm::cuda_detail::unpack8;
  constexpr int H8 = H / 8;
  __shared__ __align__(16) bf16 ws[R * H];
  const Pack8* WS = stage_fc1<H, R>(ws, w1);
  const int lane = threadIdx.x % 32;
  for (int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32; n < N; n += int64_t(gridDim.x) * kRowWarps) {
    float part[R];
#pragma unroll
    for (int j = 0; j < R; ++j) part[j] = 0.0f;
    for (int c = lane; c < H8; c += 32) {
      float g[8], p[8], w[8];
      unpack8(reinterpret_cast<const Pack8*>(dact)[n * H8 + c], g);
      unpack8(reinterpret_cast<const Pack8*>(pre)[n * H8 + c], p);
#pragma unroll
      for (int e = 0; e < 8; ++e) g[e] *= silu_grad_f(p[e]);
      reinterpret_cast<Pack8*>(dpre)[n * H8 + c] = pack8(g);
#pragma unroll
      for (int j = 0; j < R; ++j) {
        unpack8(WS[j * H8 + c], w);
#pragma unroll
        for (int e = 0; e < 8; ++e) part[j] += g[e] * w[e];
      }
    }
#pragma unroll
    for (int j = 0; j < R; ++j) part[j] = resbm::cuda_detail::warp_sum(part[j]);
    if (lane == 0)
#pragma unroll
      for (int j = 0; j < R; ++j) dy[n * R + j] = part[j] + (kTruncate ? ldf(dh + n * d + j) : 0.0f);
  }
}

// The RMSNorm's input gradient, in place over dh = gs (= ds · w1g, the GEMM's output):
//   dh = gs − x · coef[n]      (the CPU's rstd·(g − x·rstd²·mean(g·x)); coef from
//                               enc_hidden_bwd)
// plus the Truncate identity dh[:, :r] += dz. A warp per row, 16-byte accesses, one read of
// each row.
template <bool kTruncate>
__global__ void enc_rows_bwd(bf16* __restrict__ dh, const bf16* __restrict__ x, const float* __restrict__ coef,
                             const bf16* __restrict__ dz, int r, int64_t N, int d) {
  using resbm::cuda_detail::pack8;
  using resbm::cuda_detail::unpack8;
  const int lane = threadIdx.x % 32, d8 = d / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const auto* X = reinterpret_cast<const Pack8*>(x + n * d);
  auto* D = reinterpret_cast<Pack8*>(dh + n * d);
  const float k = coef[n];
#pragma unroll 4
  for (int c = lane; c < d8; c += 32) {
    float a[8], b[8];
    unpack8(D[c], a);
    unpack8(X[c], b);
#pragma unroll
    for (int e = 0; e < 8; ++e) a[e] -= b[e] * k;
    if (kTruncate && c * 8 < r)
      for (int e = 0; e < 8 && c * 8 + e < r; ++e) a[e] += ldf(dz + n * r + c * 8 + e);
    D[c] = pack8(a);
  }
}

// fc1's and the gain's gradients from M = dsᵀ · h [H, d] (fp32):
//   d fc1[k, c] += M[k, c] · gain[c],   d gain[c] += Σ_k fc1[k, c] · M[k, c]
// 32 columns a block, 32 row slices summed in a fixed order: deterministic.
constexpr int kColSlices = 32;
__global__ void enc_params_bwd(float* __restrict__ dw1, float* __restrict__ dgain, const float* __restrict__ M,
                               const float* __restrict__ w1, const float* __restrict__ gain, int H, int d) {
  __shared__ float part[kColSlices][32];
  const int lane = threadIdx.x % 32, slice = threadIdx.x / 32, c = blockIdx.x * 32 + lane;
  float s = 0;
  if (c < d) {
    const float g = gain[c];
    for (int k = slice; k < H; k += kColSlices) {
      const int64_t i = int64_t(k) * d + c;
      const float m = M[i];
      dw1[i] += m * g;
      s += w1[i] * m;
    }
  }
  part[slice][lane] = s;
  __syncthreads();
  if (slice == 0 && c < d) {
    float t = 0;
    for (int q = 0; q < kColSlices; ++q) t += part[q][lane];
    dgain[c] += t;
  }
}

// Up to this vocabulary (a multiple of 8) the re-embedding is a one-hot block of the
// decoder's output GEMM (8 MB of one-hot rows at 16k tokens and V = 256, and as many
// columns of GEMM); above it, a gather pass and fp32 atomics.
constexpr int kOneHotMaxVocab = 1024;

// The decoder's output as one GEMM: h' = X · Woutᵀ over the row buffer X [N, width] and the
// weight Wout [d, width] (built from the bf16 copy, build_out_weight):
//   X    = [ act = silu(pre) | onehot(ids) | y, bad-id flag, 0 ... ]
//   Wout = [ fc2             | Eᵀ          | I_r, 1,           0 ... ]
// so pad(y), E[ids] and fc2(act) are summed in the GEMM's fp32 accumulator (no pass that
// writes pad(y) + E[ids] first, no read-back of h'), and the backward gets d fc2 and d E
// from one weight-gradient GEMM over X's first H + V columns. The tail holds y with Truncate
// and, with TokenReembed, a column that is NaN for a row whose id is out of range (its
// weight column is all ones: the row of h' is NaN, as the gather's; its one-hot part is zero,
// so the row adds nothing to d E). Padded to 8 columns (16-byte rows).
struct DecCols {
  bool one_gemm = false;
  int vocab = 0;  // one-hot columns
  int tail = 0;   // y, flag, padding
  int flag = -1;  // the flag's column within the tail, or -1
  int width = 0;  // H + vocab + tail
};
template <int H, int R, bool kTruncate, bool kReembed>
DecCols dec_cols(int vocab) {
  DecCols c;
  // Truncate alone: [act | y] still saves the pass; NoIdentity alone is a plain GEMM.
  c.one_gemm = kReembed ? vocab % 8 == 0 && vocab <= kOneHotMaxVocab : kTruncate;
  if (c.one_gemm) {
    c.vocab = kReembed ? vocab : 0;
    c.flag = kReembed ? (kTruncate ? R : 0) : -1;
    c.tail = ((kTruncate ? R : 0) + (kReembed ? 1 : 0) + 7) / 8 * 8;
  }
  c.width = H + c.vocab + c.tail;
  return c;
}

// Wout [d, width] (see DecCols) from the bf16 copy of fc2 [d, H] and E [V, d].
__global__ void build_out_weight(bf16* __restrict__ w, const bf16* __restrict__ w2, const bf16* __restrict__ emb,
                                 int d, int H, int V, int width, int r_id, int flag) {
  const int64_t total = int64_t(d) * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i / width), k = int(i % width);
    if (k < H) {
      w[i] = w2[int64_t(c) * H + k];
    } else if (k < H + V) {
      w[i] = emb[int64_t(k - H) * d + c];
    } else {
      const int j = k - H - V;
      stf(w + i, (j < r_id && j == c) || j == flag ? 1.0f : 0.0f);
    }
  }
}

// Decoder hidden layer, forward, a warp per row, from the decoded code y [N, R] (K = R is
// too narrow for a GEMM to pay): pre = y · fc1ᵀ, act = silu(pre), fc1 staged (stage_fc1);
// act is the first H columns of the row buffer x (row stride ldx). With DecCols' one-GEMM
// path the rest of x's row too: the one-hot of ids (ids non-null; V columns) and the tail.
template <int H, int R, bool kTruncate>
__global__ void dec_hidden_fwd(bf16* __restrict__ pre, bf16* __restrict__ x, int ldx, const bf16* __restrict__ y,
                               const bf16* __restrict__ w1, const int32_t* __restrict__ ids, int V, int tail,
                               int flag, int64_t N) {
  using resbm::cuda_detail::pack8;
  using resbm::cuda_detail::unpack8;
  constexpr int H8 = H / 8;
  __shared__ __align__(16) bf16 ws[R * H];
  const Pack8* WS = stage_fc1<H, R>(ws, w1);
  const int lane = threadIdx.x % 32;
  for (int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32; n < N; n += int64_t(gridDim.x) * kRowWarps) {
    float yv[R];
#pragma unroll
    for (int j = 0; j < R; ++j) yv[j] = ldf(y + n * R + j);
    auto* X = reinterpret_cast<Pack8*>(x + n * ldx);
    for (int c = lane; c < H8; c += 32) {
      float p[8] = {0, 0, 0, 0, 0, 0, 0, 0}, w[8], a[8];
#pragma unroll
      for (int j = 0; j < R; ++j) {
        unpack8(WS[j * H8 + c], w);
#pragma unroll
        for (int e = 0; e < 8; ++e) p[e] += yv[j] * w[e];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) a[e] = silu_f(p[e]);
      reinterpret_cast<Pack8*>(pre)[n * H8 + c] = pack8(p);
      X[c] = pack8(a);
    }
    const int32_t t = ids ? ids[n] : 0;
    const bool ok = t >= 0 && t < V;
    for (int c = lane; c < V / 8; c += 32) {
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = t == c * 8 + e ? 1.0f : 0.0f;
      X[H8 + c] = pack8(v);
    }
    for (int c = lane; c < tail / 8; c += 32) {
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int j = c * 8 + e;
        v[e] = kTruncate && j < R ? ldf(y + n * R + j) : j == flag && !ok ? __int_as_float(0x7fc00000) : 0.0f;
      }
      X[H8 + V / 8 + c] = pack8(v);
    }
  }
}

// d fc2 [d, H] += G[:H, :]ᵀ and d E [V, d] += G[H:, :], from G = X[:, :H + V]ᵀ · dh'
// [H + V, d] (fp32; the one weight-gradient GEMM of the one-GEMM path). A 32 x 32 tile a
// block: fc2's tiles (H is a multiple of 32) go through shared memory so that both their
// reads and their writes are whole rows. Deterministic.
__global__ void dec_params_bwd(float* __restrict__ dw2, float* __restrict__ demb, const float* __restrict__ G, int H,
                               int V, int d) {
  __shared__ float tile[32][33];
  const int c0 = blockIdx.x * 32, k0 = blockIdx.y * 32, tx = threadIdx.x, ty = threadIdx.y;
  if (k0 < H) {
    for (int i = ty; i < 32; i += 8) tile[i][tx] = c0 + tx < d ? G[int64_t(k0 + i) * d + c0 + tx] : 0.0f;
    __syncthreads();
    for (int i = ty; i < 32; i += 8)
      if (c0 + i < d) dw2[int64_t(c0 + i) * H + k0 + tx] += tile[tx][i];
  } else {
    for (int i = ty; i < 32; i += 8) {
      const int k = k0 + i, c = c0 + tx;
      if (k < H + V && c < d) demb[int64_t(k - H) * d + c] += G[int64_t(k) * d + c];
    }
  }
}

// The gather path (no one-hot block): h'[n, :] = pad(y[n, :]) (kTruncate) + E[ids[n], :]
// (table non-null); the decoder's last GEMM then adds its product (beta = 1). A bad id
// gives a NaN row. Warps over rows.
template <bool kTruncate>
__global__ void decoder_prefill(bf16* __restrict__ out, int d, const bf16* __restrict__ y, int r,
                                const int32_t* __restrict__ ids, const bf16* __restrict__ table, int64_t vocab,
                                int64_t N) {
  const int lane = threadIdx.x % 32, d8 = d / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const int32_t t = table ? ids[n] : 0;
  const bool ok = t >= 0 && t < vocab;
  for (int c = lane; c < d8; c += 32) {
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (table) {
      if (ok)
        resbm::cuda_detail::unpack8(reinterpret_cast<const Pack8*>(table + int64_t(t) * d)[c], v);
      else
        for (float& x : v) x = __int_as_float(0x7fc00000);
    }
    if (kTruncate && c * 8 < r)
      for (int e = 0; e < 8 && c * 8 + e < r; ++e) v[e] += ldf(y + n * r + c * 8 + e);
    reinterpret_cast<Pack8*>(out + n * d)[c] = resbm::cuda_detail::pack8(v);
  }
}

// The gather path's re-embedding gradient: dE[ids[n], :] += dh'[n, :], 8 values a thread,
// two 16-byte fp32 atomics on Hopper (float4 atomicAdd, sm_90), scalar atomics before it.
// Rows with a bad id add nothing. Not deterministic (atomics), like ops::embedding_backward.
__global__ void reembed_bwd(float* __restrict__ dtable, const int32_t* __restrict__ ids, const bf16* __restrict__ dout,
                            int64_t N, int d, int64_t vocab) {
  const int lane = threadIdx.x % 32, d8 = d / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const int32_t t = ids[n];
  if (t < 0 || t >= vocab) return;
  for (int c = lane; c < d8; c += 32) {
    float v[8];
    resbm::cuda_detail::unpack8(reinterpret_cast<const Pack8*>(dout + n * d)[c], v);
    float* dst = dtable + int64_t(t) * d + c * 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float4*>(dst), make_float4(v[0], v[1], v[2], v[3]));
    atomicAdd(reinterpret_cast<float4*>(dst + 4), make_float4(v[4], v[5], v[6], v[7]));
#else
    for (int e = 0; e < 8; ++e) atomicAdd(dst + e, v[e]);
#endif
  }
}

inline unsigned row_blocks(int64_t N) { return unsigned((N + kRowWarps - 1) / kRowWarps); }
// Persistent row kernels (they stage fc1 once per block): at most `per_sm` blocks of 8 warps
// per SM.
inline unsigned row_grid(int64_t N, const CudaContext& ctx, int per_sm = 16) {
  const int64_t cap = int64_t(per_sm) * ctx.props.multiProcessorCount;
  const int64_t b = int64_t(row_blocks(N));
  return unsigned(b < cap ? (b > 0 ? b : 1) : cap);
}

// The parameters of one half in the CPU half's arena layout: fp32 masters and gradients,
// and the bf16 copy the kernels read.
template <class Half>
class Params {
 public:
  Params(CudaContext& ctx, const Boundary& b) : ctx_(&ctx), b_(b), decl_(b, layout_) {
    const size_t n = layout_.size();
    p32_.resize(n);
    p16_.resize(n);
    g32_.resize(n);
    p32_.zero(ctx.stream);
    p16_.zero(ctx.stream);
    g32_.zero(ctx.stream);
  }
  Params(const Params&) = delete;
  Params& operator=(const Params&) = delete;

  // Names, shapes, kinds and offsets (the arena is not allocated).
  const ParamArena<float>& layout() const { return layout_; }
  size_t size() const { return layout_.size(); }
  // Writable weights (what CudaAdamW steps): the derived operands are rebuilt by the next
  // forward (see the header comment).
  float* params() {
    stale_ = true;
    return p32_.data();
  }
  float* grads() { return g32_.data(); }
  bf16* params_bf16() {
    stale_ = true;
    return p16_.data();
  }

  // The CPU half's init(seed), run on the host, uploaded.
  void init(uint64_t seed) {
    ParamArena<float> a;
    Half h(b_, a);
    a.allocate();
    h.init(seed);
    upload_params(std::vector<float>(a.params(), a.params() + a.size()));
  }
  // Replaces the fp32 weights (layout order, size() elements) and refreshes the bf16 copy.
  void upload_params(const std::vector<float>& host) {
    RESBM_CHECK(host.size() == size(), cat("upload of ", host.size(), " codec parameters into a half of ", size()),
                "pass an array in the half's arena layout (layout().size() elements)");
    p32_.from_host(host.data(), host.size());
    refresh_bf16();
  }
  // After the optimizer changed the fp32 weights.
  void refresh_bf16() {
    const int64_t n = int64_t(size());
    ops::cast_to_bf16(*ctx_, p16_.view({n}), CudaTensor<const float>(p32_.data(), {n}));
    stale_ = true;
  }
  std::vector<float> download_params() const { return p32_.to_host(); }
  std::vector<float> download_grads() const { return g32_.to_host(); }
  void zero_grad() { g32_.zero(ctx_->stream); }

 protected:
  size_t find(const char* what) const { return layout_.find(prefix_ + what); }
  CudaTensor<const bf16> w(size_t i) const { return entry_view<cuda>(p16_.data(), layout_.info(i)); }
  CudaTensor<const float> w32(size_t i) const { return entry_view<cuda>(p32_.data(), layout_.info(i)); }
  CudaTensor<float> g(size_t i) { return entry_view<cuda>(g32_.data(), layout_.info(i)); }
  // Whether the weights may have changed since the last call (then the caller rebuilds what
  // it derives from them). Per-step rather than per-forward: CudaAdamW writes the bf16 copy
  // itself, without refresh_bf16(), so that copy step is not ours to extend; its params()
  // and params_bf16() calls are what mark the change.
  bool take_stale() { return std::exchange(stale_, false); }

  CudaContext* ctx_;
  Boundary b_;

 private:
  ParamArena<float> layout_;  // before decl_, which declares into it
  Half decl_;
  DeviceBuffer<float> p32_, g32_;
  DeviceBuffer<bf16> p16_;
  bool stale_ = true;

 protected:
  std::string prefix_;
};

inline void check_boundary(const Boundary& b) {
  RESBM_CHECK(b.d_model % 8 == 0, cat("CUDA ResidualBottleneck: d_model ", b.d_model, " is not a multiple of 8"),
              "choose --d-model divisible by 8 (16-byte rows for cuBLASLt and the vector kernels)");
}

template <class T>
CudaTensor<const T> cview(const T* p, std::initializer_list<int64_t> dims) {
  return CudaTensor<const T>(p, dims);
}

}  // namespace rb_cuda_detail

// The GPU halves of a ResidualBottleneck codec; only the Mlp<H, silu> encoder/decoder with
// int8 forward wires (the fused encoder output) has them.
template <class Codec>
struct CudaResidualBottleneck {
  static_assert(sizeof(Codec) == 0,
                "CudaResidualBottleneck: only ResidualBottleneck<rank<R>, Mlp<H, silu>, ...> with an int8 forward "
                "wire (Int8Grouped<G> or Int8PerToken) has GPU halves");
};

// Whether CudaResidualBottleneck<Codec> exists (the conditions its static_asserts spell out).
template <class Codec>
inline constexpr bool has_cuda_residual_bottleneck = false;
template <class Rank, int H, class IdentityPath, class FwdWire, class BwdWire, class SideInfo>
inline constexpr bool
    has_cuda_residual_bottleneck<ResidualBottleneck<Rank, Mlp<H, silu>, IdentityPath, FwdWire, BwdWire, SideInfo>> =
        ops::cuda_detail_wire::CudaInt8Wire<FwdWire> && ops::cuda_detail_wire::CudaWire<BwdWire> && H % 32 == 0 &&
        Rank::value <= ops::cuda_detail_wire::kFusedMaxRank && H * Rank::value * 2 <= 32768;

template <class Rank, int H, class IdentityPath, class FwdWire, class BwdWire, class SideInfo>
struct CudaResidualBottleneck<ResidualBottleneck<Rank, Mlp<H, silu>, IdentityPath, FwdWire, BwdWire, SideInfo>> {
  using Codec = ResidualBottleneck<Rank, Mlp<H, silu>, IdentityPath, FwdWire, BwdWire, SideInfo>;
  static constexpr int r = Codec::r;
  static constexpr bool truncate = Codec::truncate;
  static constexpr bool reembed = Codec::reembed;
  static_assert(ops::cuda_detail_wire::CudaInt8Wire<FwdWire>,
                "CudaResidualBottleneck: the forward wire must be Int8Grouped<G> or Int8PerToken (fused encoder)");
  static_assert(ops::cuda_detail_wire::CudaWire<BwdWire>,
                "CudaResidualBottleneck: the backward wire must be Int8Grouped<G>, Int8PerToken or Bf16Wire");
  static_assert(H % 32 == 0, "CudaResidualBottleneck: the Mlp hidden width must be a multiple of 32");
  static_assert(r <= ops::cuda_detail_wire::kFusedMaxRank, "CudaResidualBottleneck: rank above 64");
  static_assert(H * r * 2 <= 32768,
                "CudaResidualBottleneck: the decoder's fc1 (H x r bf16) must fit in 32 KiB of shared memory");

  class Encoder : public rb_cuda_detail::Params<typename Codec::template Encoder<float>> {
    using Base = rb_cuda_detail::Params<typename Codec::template Encoder<float>>;

   public:
    struct Activations {
      int64_t tokens = 0;
      const bf16* h = nullptr;    // the input, not owned (see the header comment)
      DeviceBuffer<bf16> pre, act;  // [N, H] each: P = h · w1gᵀ (before the 1/rms), silu(rstd ⊙ P)
      DeviceBuffer<float> rstd;   // [N]
      ops::CudaWireStatus fwd_status, bwd_status;
    };

    Encoder(CudaContext& ctx, const Boundary& b) : Base(ctx, b) {
      rb_cuda_detail::check_boundary(b);
      this->prefix_ = detail::prefix(b, "enc");
      gain_ = this->find("norm.weight");
      w1_ = this->find("fc1.weight");
      w2_ = this->find("fc2.weight");
      w1g_.resize(size_t(H) * size_t(b.d_model));
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      const size_t N = size_t(tokens);
      Activations s;
      s.tokens = tokens;
      s.pre.resize(N * H);
      s.act.resize(N * H);
      s.rstd.resize(N);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }

    // h [N, d] (kept by pointer until backward) -> wire (device, >= wire_bytes(N) bytes).
    // z_out [N, r] fp32, optional: the code before quantisation (tests).
    // The RMSNorm is not materialised: its gain is folded into fc1 (w1g) and its 1/rms
    // scales the GEMM's rows where the fused encoder loads them (with the SiLU), so h is
    // read twice and N(h) never written.
    void forward(Activations& s, CudaTensor<const bf16> h, CudaTensor<std::byte> wire, CudaTensor<float> z_out = {}) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(h, {N, d}, "boundary encoder input");
      RESBM_CHECK(cuda_detail::aligned16(h.data), "boundary encoder input is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      s.h = h.data;
      auto pre = s.pre.view({N, H}), act = s.act.view({N, H});
      if (this->take_stale()) fold();
      if (N > 0) {
        row_rstd<<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(s.rstd.data(), h.data, N, int(d),
                                                                    float(rb_detail::kNormEps));
        RESBM_CUDA_LAUNCH_CHECK();
        ops::matmul_forward<bf16>(ctx, pre, h, cview(w1g_.data(), {H, d}));
      }
      const CudaTensor<const bf16> resid = truncate ? h : CudaTensor<const bf16>{};
      if (ops::fused_per_warp<FwdWire>(N, r)) {
        ops::fused_linear_encode<FwdWire>(ctx, s.fwd_status, pre, this->w(w2_), resid, wire, z_out,
                                          SiluRows{s.rstd.data(), act.data});
        return;
      }
      if (N > 0) {
        enc_hidden_fwd<H><<<cuda_detail::grid_for(N * H / 8, 256), 256, 0, ctx.stream>>>(act.data, pre.data,
                                                                                        s.rstd.data(), N);
        RESBM_CUDA_LAUNCH_CHECK();
      }
      ops::fused_linear_encode<FwdWire>(ctx, s.fwd_status, act, this->w(w2_), resid, wire, z_out);
    }

    // grad_wire (device, BwdWire bytes of dL/dz) -> dh [N, d] (WRITTEN, not added: the
    // stage's last output feeds the encoder alone), parameter gradients (+=).
    // With ds = rstd ⊙ dpre: the RMSNorm's input gradient is gs = ds · w1g (a GEMM, written
    // into dh) less x times a per-row coefficient that enc_hidden_bwd takes from ds and P,
    // and M = dsᵀ · h gives both d fc1 (= M ⊙ gain) and d gain (= Σ_k fc1 ⊙ M). w1g is the
    // fold the latest forward used (the weights of a micro-batch's forward and backward are
    // the same: the optimizer steps after the backwards).
    void backward(Activations& s, CudaTensor<const std::byte> grad_wire, CudaTensor<bf16> dh) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(dh, {N, d}, "boundary encoder input gradient");
      RESBM_CHECK(N == 0 || s.h != nullptr, "boundary encoder backward before its forward",
                  "run forward on these activations first");
      RESBM_CHECK(cuda_detail::aligned16(dh.data), "boundary encoder input gradient is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      if (dz_.size() < size_t(N * r)) dz_.resize(size_t(N * r));
      if (ds_.size() < size_t(N * H)) ds_.resize(size_t(N * H));
      if (coef_.size() < size_t(N)) coef_.resize(size_t(N));
      if (m_.size() < size_t(H * d)) m_.resize(size_t(H * d));
      auto dz = dz_.view({N, r});
      ops::wire_decode<BwdWire, bf16>(ctx, s.bwd_status, grad_wire, dz);
      if (N == 0) return;
      enc_hidden_bwd<H, r><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
          ds_.data(), coef_.data(), dz.data, this->w(w2_).data, s.pre.data(), s.rstd.data(), N, int(d));
      RESBM_CUDA_LAUNCH_CHECK();
      // d fc2 += dzᵀ · act
      ops::gemm<float>(ctx, true, false, r, H, N, 1.0f, dz.data, r, s.act.data(), H, 1.0f, this->g(w2_).data, H);
      ops::gemm<bf16>(ctx, false, false, N, d, H, 1.0f, ds_.data(), H, w1g_.data(), d, 0.0f, dh.data, d);  // gs
      ops::gemm<float>(ctx, true, false, H, d, N, 1.0f, ds_.data(), H, s.h, d, 0.0f, m_.data(), d);
      enc_rows_bwd<truncate><<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(dh.data, s.h, coef_.data(), dz.data,
                                                                                r, N, int(d));
      RESBM_CUDA_LAUNCH_CHECK();
      enc_params_bwd<<<unsigned((d + 31) / 32), kColSlices * 32, 0, ctx.stream>>>(
          this->g(w1_).data, this->g(gain_).data, m_.data(), this->w32(w1_).data, this->w32(gain_).data, H, int(d));
      RESBM_CUDA_LAUNCH_CHECK();
    }

    // Synchronises; throws the wire's Error if a launch on s met a bad value.
    void check(Activations& s) {
      s.fwd_status.check(*this->ctx_);
      s.bwd_status.check(*this->ctx_);
    }

   private:
    // w1g = fc1 ⊙ gain (bf16 of the fp32 masters' product)
    void fold() {
      const int d = this->b_.d_model;
      rb_cuda_detail::fold_gain<<<cuda_detail::grid_for(int64_t(H) * d, 256), 256, 0, this->ctx_->stream>>>(
          w1g_.data(), this->w32(w1_).data, this->w32(gain_).data, H, d);
      RESBM_CUDA_LAUNCH_CHECK();
    }

    size_t gain_ = 0, w1_ = 0, w2_ = 0;
    DeviceBuffer<bf16> w1g_;
    DeviceBuffer<bf16> dz_, ds_;  // backward scratch, grow-only
    DeviceBuffer<float> coef_;    // [N], enc_hidden_bwd -> enc_rows_bwd
    DeviceBuffer<float> m_;       // dsᵀ · h [H, d]
  };

  class Decoder : public rb_cuda_detail::Params<typename Codec::template Decoder<float>> {
    using Base = rb_cuda_detail::Params<typename Codec::template Decoder<float>>;

   public:
    struct Activations {
      int64_t tokens = 0;
      DeviceBuffer<bf16> y, pre;  // Deq(q) [N, r], [N, H]
      DeviceBuffer<bf16> act;     // the row buffer [N, row_width()]: silu(pre) first (DecCols)
      DeviceBuffer<int32_t> ids;  // [N] (TokenReembed on the gather path)
      ops::CudaWireStatus fwd_status, bwd_status;
    };

    Decoder(CudaContext& ctx, const Boundary& b) : Base(ctx, b) {
      rb_cuda_detail::check_boundary(b);
      this->prefix_ = detail::prefix(b, "dec");
      w1_ = this->find("fc1.weight");
      w2_ = this->find("fc2.weight");
      if constexpr (reembed) emb_ = this->find("reembed.weight");
      cols_ = rb_cuda_detail::dec_cols<H, r, truncate, reembed>(b.vocab);
      if (cols_.one_gemm) wout_.resize(size_t(b.d_model) * size_t(cols_.width));
      if (reembed && cols_.one_gemm) gw_.resize(size_t(H + cols_.vocab) * size_t(b.d_model));
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      const size_t N = size_t(tokens);
      Activations s;
      s.tokens = tokens;
      s.y.resize(N * r);
      s.pre.resize(N * H);
      s.act.resize(N * size_t(cols_.width));
      if (reembed && !cols_.one_gemm) s.ids.resize(N);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }
    // Columns of the row buffer: H, or H + vocab + tail on the one-GEMM path (DecCols).
    int row_width() const { return cols_.width; }
    // Whether h' is one GEMM over [act | onehot(ids) | y] (false: the gather path).
    bool one_gemm() const { return cols_.one_gemm; }

    // wire (device, FwdWire bytes) + token ids (device [N]; read with TokenReembed only, and
    // not kept on the one-GEMM path) -> h_out [N, d] (written).
    void forward(Activations& s, CudaTensor<const std::byte> wire, CudaTensor<const int32_t> ids,
                 CudaTensor<bf16> h_out) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model, K = cols_.width;
      expect_shape(h_out, {N, d}, "boundary decoder output");
      RESBM_CHECK(cuda_detail::aligned16(h_out.data), "boundary decoder output is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      (void)ids;  // read with TokenReembed only
      auto y = s.y.view({N, r}), pre = s.pre.view({N, H});
      if (this->take_stale() && cols_.one_gemm) build_out();
      ops::wire_decode<FwdWire, bf16>(ctx, s.fwd_status, wire, y);
      if (N == 0) return;
      const int32_t* id = nullptr;
      if constexpr (reembed) {
        expect_shape(ids, {N}, "boundary decoder token ids");
        id = ids.data;
      }
      if (cols_.one_gemm) {
        dec_hidden_fwd<H, r, truncate><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
            pre.data, s.act.data(), int(K), y.data, this->w(w1_).data, id, cols_.vocab, cols_.tail, cols_.flag, N);
        RESBM_CUDA_LAUNCH_CHECK();
        // h_out = [act | onehot | y, flag] · [fc2 | Eᵀ | I, 1]ᵀ
        ops::gemm<bf16>(ctx, false, true, N, d, K, 1.0f, s.act.data(), K, wout_.data(), K, 0.0f, h_out.data, d);
        return;
      }
      dec_hidden_fwd<H, r, truncate><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
          pre.data, s.act.data(), H, y.data, this->w(w1_).data, nullptr, 0, 0, -1, N);
      RESBM_CUDA_LAUNCH_CHECK();
      const bf16* table = nullptr;
      if constexpr (reembed) {
        RESBM_CUDA_CHECK(cudaMemcpyAsync(s.ids.data(), id, size_t(N) * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                         ctx.stream));
        table = this->w(emb_).data;
      }
      if constexpr (truncate || reembed) {
        decoder_prefill<truncate><<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(
            h_out.data, int(d), y.data, r, s.ids.data(), table, this->b_.vocab, N);
        RESBM_CUDA_LAUNCH_CHECK();
      }
      // h_out (+)= act · fc2ᵀ
      ops::gemm<bf16>(ctx, false, true, N, d, H, 1.0f, s.act.data(), H, this->w(w2_).data, H,
                      (truncate || reembed) ? 1.0f : 0.0f, h_out.data, d);
    }

    // dh_out [N, d] -> grad_wire (device, >= grad_bytes(N) bytes: BwdWire of dL/dy,
    // straight through the rounding), parameter gradients (+=).
    void backward(Activations& s, CudaTensor<const bf16> dh_out, CudaTensor<std::byte> grad_wire) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model, K = cols_.width;
      expect_shape(dh_out, {N, d}, "boundary decoder output gradient");
      RESBM_CHECK(cuda_detail::aligned16(dh_out.data), "boundary decoder output gradient is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      if (dy_.size() < size_t(N * r)) dy_.resize(size_t(N * r));
      if (dact_.size() < size_t(N * H)) {
        dact_.resize(size_t(N * H));
        dpre_.resize(size_t(N * H));
      }
      tokens_ = N;
      auto dy = dy_.view({N, r});
      if (N > 0) {
        auto dact = dact_.view({N, H}), dpre = dpre_.view({N, H});
        // dact = dh' · fc2
        ops::gemm<bf16>(ctx, false, false, N, H, d, 1.0f, dh_out.data, d, this->w(w2_).data, H, 0.0f, dact.data, H);
        dec_hidden_bwd<H, r, truncate><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
            dy.data, dpre.data, dact.data, s.pre.data(), this->w(w1_).data, dh_out.data, int(d), N);
        RESBM_CUDA_LAUNCH_CHECK();
        // d fc1 += dpreᵀ · y
        ops::matmul_backward(ctx, {}, this->g(w1_), dpre, s.y.view({N, r}), this->w(w1_));
        if (reembed && cols_.one_gemm) {
          // [d fc2ᵀ ; d E] = [act | onehot]ᵀ · dh' (one GEMM), then added in place
          const int HV = H + cols_.vocab;
          ops::gemm<float>(ctx, true, false, HV, d, N, 1.0f, s.act.data(), K, dh_out.data, d, 0.0f, gw_.data(), d);
          dec_params_bwd<<<dim3(unsigned((d + 31) / 32), unsigned((HV + 31) / 32)), dim3(32, 8), 0, ctx.stream>>>(
              this->g(w2_).data, reembed ? this->g(emb_).data : nullptr, gw_.data(), H, cols_.vocab, int(d));
          RESBM_CUDA_LAUNCH_CHECK();
        } else {
          // d fc2 += dh'ᵀ · act
          ops::gemm<float>(ctx, true, false, d, H, N, 1.0f, dh_out.data, d, s.act.data(), K, 1.0f, this->g(w2_).data,
                           H);
          if constexpr (reembed) {
            reembed_bwd<<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(this->g(emb_).data, s.ids.data(),
                                                                            dh_out.data, N, int(d), this->b_.vocab);
            RESBM_CUDA_LAUNCH_CHECK();
          }
        }
      }
      ops::wire_encode<BwdWire, float>(ctx, s.bwd_status, cview(dy.data, {N, r}), grad_wire);
    }

    // dL/dy [N, r] (fp32) of the last backward, before its quantisation (tests).
    CudaTensor<const float> code_grad() const { return rb_cuda_detail::cview(dy_.data(), {tokens_, r}); }

    // Synchronises; throws the wire's Error if a launch on s met a bad value.
    void check(Activations& s) {
      s.fwd_status.check(*this->ctx_);
      s.bwd_status.check(*this->ctx_);
    }

   private:
    // Wout = [fc2 | Eᵀ | tail] (DecCols) from the bf16 copy.
    void build_out() {
      const int d = this->b_.d_model;
      rb_cuda_detail::build_out_weight<<<cuda_detail::grid_for(int64_t(d) * cols_.width, 256), 256, 0,
                                         this->ctx_->stream>>>(
          wout_.data(), this->w(w2_).data, reembed ? this->w(emb_).data : nullptr, d, H, cols_.vocab, cols_.width,
          truncate ? r : 0, cols_.flag);
      RESBM_CUDA_LAUNCH_CHECK();
    }

    size_t w1_ = 0, w2_ = 0, emb_ = 0;
    rb_cuda_detail::DecCols cols_;
    DeviceBuffer<bf16> wout_;  // [d, cols_.width] (one-GEMM path)
    DeviceBuffer<float> gw_;   // [H + vocab, d]: the one-GEMM path's weight gradients
    DeviceBuffer<float> dy_;
    DeviceBuffer<bf16> dact_, dpre_;
    int64_t tokens_ = 0;
  };
};

}  // namespace resbm::codec
