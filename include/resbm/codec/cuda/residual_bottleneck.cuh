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
// gradients in that layout, and a bf16 copy that forward and backward read.
//
// Precision (DESIGN §4): bf16 activations (hidden pre/post activations, the decoded code y
// and dz, the output h'), fp32 accumulation everywhere, fp32 rstd, fp32 weight gradients.
// The encoder's RMSNorm is folded (see Encoder::forward): its gain multiplies fc1 in one
// bf16 copy (from the fp32 masters) and its 1/rms scales the hidden rows, so N(h) is never
// rounded to bf16 or stored. The encoder's code z is accumulated in fp32 and quantised in
// the same kernel (ops::fused_linear_encode): the wire bytes are exactly FwdWire::encode(z)
// of that z, which differs from the CPU's z by the bf16 rounding of the hidden activations
// (~2e-3 relative), so the bytes match the CPU's only where no code rounds differently. The
// decoder's code gradient dy is accumulated in fp32 and encoded from fp32.
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
// - the re-embedding's gradient is a GEMM with the one-hot token matrix (deterministic) for
//   vocabularies that are multiples of 8 up to 1024; larger ones add with fp32 atomics (not
//   bitwise deterministic, like ops::embedding_backward).
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
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

// Encoder hidden layer, forward: pre = rstd ⊙ P (P = h · w1gᵀ, in pre on entry), act = silu(pre).
template <int H>
__global__ void enc_hidden_fwd(bf16* __restrict__ pre, bf16* __restrict__ act, const float* __restrict__ rstd,
                               int64_t N) {
  constexpr int H8 = H / 8;
  auto* P = reinterpret_cast<Pack8*>(pre);
  auto* A = reinterpret_cast<Pack8*>(act);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * H8; i += int64_t(gridDim.x) * blockDim.x) {
    const float sc = rstd[i / H8];
    float p[8], a[8];
    resbm::cuda_detail::unpack8(P[i], p);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      p[e] *= sc;
      a[e] = p[e] * sigmoid(p[e]);
    }
    P[i] = resbm::cuda_detail::pack8(p);
    A[i] = resbm::cuda_detail::pack8(a);
  }
}

// Encoder hidden layer, backward, a warp per row, from the code gradient dz [N, R] (K = R is
// too narrow for a GEMM to pay): dact = dz · fc2 (fp32), dpre = dact · silu'(pre),
// ds = rstd ⊙ dpre (bf16, stored).
template <int H, int R>
__global__ void enc_hidden_bwd(bf16* __restrict__ ds, const bf16* __restrict__ dz, const bf16* __restrict__ w2,
                               const bf16* __restrict__ pre, const float* __restrict__ rstd, int64_t N) {
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
        const float s = sigmoid(p[e]);
        g[e] *= s * (1.0f + p[e] * (1.0f - s)) * sc;
      }
      reinterpret_cast<Pack8*>(ds)[n * H8 + c] = pack8(g);
    }
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
      for (int e = 0; e < 8; ++e) {
        const float s = sigmoid(p[e]);
        g[e] *= s * (1.0f + p[e] * (1.0f - s));
      }
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

// One-hot rows of the token ids [N, V] (bf16; a bad id gives a zero row): the re-embedding's
// gradient is then the GEMM onehotᵀ · dh' (deterministic), for small vocabularies.
__global__ void one_hot(bf16* __restrict__ out, const int32_t* __restrict__ ids, int64_t N, int V) {
  const int lane = threadIdx.x % 32, V8 = V / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const int32_t t = ids[n];
  for (int c = lane; c < V8; c += 32) {
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = t == c * 8 + e ? 1.0f : 0.0f;
    reinterpret_cast<Pack8*>(out + n * V)[c] = resbm::cuda_detail::pack8(v);
  }
}

// The RMSNorm's input gradient from gs = rstd ⊙ (dnormed ⊙ gain) (= ds · w1g), per row:
//   dh = gs − x · rstd² · mean(gs · x)      (the CPU's rstd·(g − x·rstd²·mean(g·x)))
// plus the Truncate identity dh[:, :r] += dz. Written (=). A warp per row, 16-byte accesses.
template <bool kTruncate>
__global__ void enc_rows_bwd(bf16* __restrict__ dh, const bf16* __restrict__ gs, const bf16* __restrict__ x,
                             const float* __restrict__ rstd, const bf16* __restrict__ dz, int r, int64_t N, int d) {
  using resbm::cuda_detail::pack8;
  using resbm::cuda_detail::unpack8;
  const int lane = threadIdx.x % 32, d8 = d / 8;
  const int64_t n = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (n >= N) return;
  const auto* G = reinterpret_cast<const Pack8*>(gs + n * d);
  const auto* X = reinterpret_cast<const Pack8*>(x + n * d);
  auto* D = reinterpret_cast<Pack8*>(dh + n * d);
  float dot = 0;
  for (int c = lane; c < d8; c += 32) {
    float a[8], b[8];
    unpack8(G[c], a);
    unpack8(X[c], b);
#pragma unroll
    for (int e = 0; e < 8; ++e) dot += a[e] * b[e];
  }
  dot = resbm::cuda_detail::warp_sum(dot);
  const float rs = rstd[n], k = rs * rs * dot / float(d);
  for (int c = lane; c < d8; c += 32) {
    float a[8], b[8], o[8];
    unpack8(G[c], a);
    unpack8(X[c], b);
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = a[e] - b[e] * k;
    if (kTruncate && c * 8 < r)
      for (int e = 0; e < 8 && c * 8 + e < r; ++e) o[e] += ldf(dz + n * r + c * 8 + e);
    D[c] = pack8(o);
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

// Decoder hidden layer, forward, a warp per row, from the decoded code y [N, R] (K = R is
// too narrow for a GEMM to pay): pre = y · fc1ᵀ, act = silu(pre), fc1 staged (stage_fc1).
template <int H, int R>
__global__ void dec_hidden_fwd(bf16* __restrict__ pre, bf16* __restrict__ act, const bf16* __restrict__ y,
                               const bf16* __restrict__ w1, int64_t N) {
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
    for (int c = lane; c < H8; c += 32) {
      float p[8] = {0, 0, 0, 0, 0, 0, 0, 0}, w[8], a[8];
#pragma unroll
      for (int j = 0; j < R; ++j) {
        unpack8(WS[j * H8 + c], w);
#pragma unroll
        for (int e = 0; e < 8; ++e) p[e] += yv[j] * w[e];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) a[e] = p[e] * sigmoid(p[e]);
      reinterpret_cast<Pack8*>(pre)[n * H8 + c] = pack8(p);
      reinterpret_cast<Pack8*>(act)[n * H8 + c] = pack8(a);
    }
  }
}

// h'[n, :] = pad(y[n, :]) (kTruncate) + E[ids[n], :] (table non-null); the decoder's last
// GEMM then adds its product (beta = 1). A bad id gives a NaN row. Warps over rows.
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

// The re-embedding's gradient: dE[ids[n], :] += dh'[n, :], 8 values a thread, two 16-byte
// fp32 atomics on Hopper (float4 atomicAdd, sm_90), scalar atomics before it. Rows with a
// bad id add nothing. Not deterministic (atomics), like ops::embedding_backward.
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

// Up to this vocabulary (a multiple of 8) the re-embedding's gradient is a GEMM with the
// one-hot token matrix [N, V] (deterministic; 8 MB at 16k tokens and V = 256); above it,
// fp32 atomics.
constexpr int kOneHotMaxVocab = 1024;

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
  float* params() { return p32_.data(); }
  float* grads() { return g32_.data(); }
  bf16* params_bf16() { return p16_.data(); }

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
  }
  std::vector<float> download_params() const { return p32_.to_host(); }
  std::vector<float> download_grads() const { return g32_.to_host(); }
  void zero_grad() { g32_.zero(ctx_->stream); }

 protected:
  size_t find(const char* what) const { return layout_.find(prefix_ + what); }
  CudaTensor<const bf16> w(size_t i) const { return entry_view<cuda>(p16_.data(), layout_.info(i)); }
  CudaTensor<const float> w32(size_t i) const { return entry_view<cuda>(p32_.data(), layout_.info(i)); }
  CudaTensor<float> g(size_t i) { return entry_view<cuda>(g32_.data(), layout_.info(i)); }

  CudaContext* ctx_;
  Boundary b_;

 private:
  ParamArena<float> layout_;  // before decl_, which declares into it
  Half decl_;
  DeviceBuffer<float> p32_, g32_;
  DeviceBuffer<bf16> p16_;

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
      DeviceBuffer<bf16> pre, act;  // [N, H] each
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
    // scales the GEMM's rows in the SiLU pass, so h is read twice and N(h) never written.
    void forward(Activations& s, CudaTensor<const bf16> h, CudaTensor<std::byte> wire, CudaTensor<float> z_out = {}) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(h, {N, d}, "boundary encoder input");
      RESBM_CHECK(cuda_detail::aligned16(h.data), "boundary encoder input is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      s.h = h.data;
      auto pre = s.pre.view({N, H}), act = s.act.view({N, H});
      fold();
      if (N > 0) {
        row_rstd<<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(s.rstd.data(), h.data, N, int(d),
                                                                    float(rb_detail::kNormEps));
        RESBM_CUDA_LAUNCH_CHECK();
        ops::matmul_forward<bf16>(ctx, pre, h, cview(w1g_.data(), {H, d}));
        enc_hidden_fwd<H><<<cuda_detail::grid_for(N * H / 8, 256), 256, 0, ctx.stream>>>(pre.data, act.data,
                                                                                        s.rstd.data(), N);
        RESBM_CUDA_LAUNCH_CHECK();
      }
      ops::fused_linear_encode<FwdWire>(ctx, s.fwd_status, act, this->w(w2_), truncate ? h : CudaTensor<const bf16>{},
                                        wire, z_out);
    }

    // grad_wire (device, BwdWire bytes of dL/dz) -> dh [N, d] (WRITTEN, not added: the
    // stage's last output feeds the encoder alone), parameter gradients (+=).
    // With ds = rstd ⊙ dpre: the RMSNorm's input gradient is a row pass over gs = ds · w1g,
    // and M = dsᵀ · h gives both d fc1 (= M ⊙ gain) and d gain (= Σ_k fc1 ⊙ M). w1g is the
    // fold made by the latest forward (the weights of a micro-batch's forward and backward
    // are the same: the optimizer steps after the backwards).
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
      if (gs_.size() < size_t(N * d)) gs_.resize(size_t(N * d));
      if (m_.size() < size_t(H * d)) m_.resize(size_t(H * d));
      auto dz = dz_.view({N, r});
      ops::wire_decode<BwdWire, bf16>(ctx, s.bwd_status, grad_wire, dz);
      if (N == 0) return;
      enc_hidden_bwd<H, r><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
          ds_.data(), dz.data, this->w(w2_).data, s.pre.data(), s.rstd.data(), N);
      RESBM_CUDA_LAUNCH_CHECK();
      // d fc2 += dzᵀ · act
      ops::gemm<float>(ctx, true, false, r, H, N, 1.0f, dz.data, r, s.act.data(), H, 1.0f, this->g(w2_).data, H);
      ops::gemm<bf16>(ctx, false, false, N, d, H, 1.0f, ds_.data(), H, w1g_.data(), d, 0.0f, gs_.data(), d);
      ops::gemm<float>(ctx, true, false, H, d, N, 1.0f, ds_.data(), H, s.h, d, 0.0f, m_.data(), d);
      enc_rows_bwd<truncate><<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(dh.data, gs_.data(), s.h,
                                                                                s.rstd.data(), dz.data, r, N, int(d));
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
    // w1g = fc1 ⊙ gain (bf16 of the fp32 masters' product), made by each forward
    void fold() {
      const int d = this->b_.d_model;
      rb_cuda_detail::fold_gain<<<cuda_detail::grid_for(int64_t(H) * d, 256), 256, 0, this->ctx_->stream>>>(
          w1g_.data(), this->w32(w1_).data, this->w32(gain_).data, H, d);
      RESBM_CUDA_LAUNCH_CHECK();
    }

    size_t gain_ = 0, w1_ = 0, w2_ = 0;
    DeviceBuffer<bf16> w1g_;
    DeviceBuffer<bf16> dz_, ds_, gs_;  // backward scratch, grow-only
    DeviceBuffer<float> m_;           // dsᵀ · h [H, d]
  };

  class Decoder : public rb_cuda_detail::Params<typename Codec::template Decoder<float>> {
    using Base = rb_cuda_detail::Params<typename Codec::template Decoder<float>>;

   public:
    struct Activations {
      int64_t tokens = 0;
      DeviceBuffer<bf16> y, pre, act;  // Deq(q) [N, r], [N, H], [N, H]
      DeviceBuffer<int32_t> ids;       // [N] (TokenReembed)
      ops::CudaWireStatus fwd_status, bwd_status;
    };

    Decoder(CudaContext& ctx, const Boundary& b) : Base(ctx, b) {
      rb_cuda_detail::check_boundary(b);
      this->prefix_ = detail::prefix(b, "dec");
      w1_ = this->find("fc1.weight");
      w2_ = this->find("fc2.weight");
      if constexpr (reembed) emb_ = this->find("reembed.weight");
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      const size_t N = size_t(tokens);
      Activations s;
      s.tokens = tokens;
      s.y.resize(N * r);
      s.pre.resize(N * H);
      s.act.resize(N * H);
      if constexpr (reembed) s.ids.resize(N);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }

    // wire (device, FwdWire bytes) + token ids (device [N]; read with TokenReembed only) ->
    // h_out [N, d] (written).
    void forward(Activations& s, CudaTensor<const std::byte> wire, CudaTensor<const int32_t> ids,
                 CudaTensor<bf16> h_out) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(h_out, {N, d}, "boundary decoder output");
      RESBM_CHECK(cuda_detail::aligned16(h_out.data), "boundary decoder output is not 16-byte aligned",
                  "pass a DeviceBuffer or a view at a 16-byte aligned offset");
      (void)ids;  // read with TokenReembed only
      auto y = s.y.view({N, r}), pre = s.pre.view({N, H}), act = s.act.view({N, H});
      ops::wire_decode<FwdWire, bf16>(ctx, s.fwd_status, wire, y);
      if (N == 0) return;
      const bf16* table = nullptr;
      int64_t vocab = 0;
      if constexpr (reembed) {
        expect_shape(ids, {N}, "boundary decoder token ids");
        RESBM_CUDA_CHECK(cudaMemcpyAsync(s.ids.data(), ids.data, size_t(N) * sizeof(int32_t),
                                         cudaMemcpyDeviceToDevice, ctx.stream));
        table = this->w(emb_).data;
        vocab = this->b_.vocab;
      }
      dec_hidden_fwd<H, r><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(pre.data, act.data, y.data,
                                                                              this->w(w1_).data, N);
      RESBM_CUDA_LAUNCH_CHECK();
      if constexpr (truncate || reembed) {
        decoder_prefill<truncate><<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(
            h_out.data, int(d), y.data, r, s.ids.data(), table, vocab, N);
        RESBM_CUDA_LAUNCH_CHECK();
      }
      // h_out (+)= act · fc2ᵀ
      ops::gemm<bf16>(ctx, false, true, N, d, H, 1.0f, act.data, H, this->w(w2_).data, H,
                      (truncate || reembed) ? 1.0f : 0.0f, h_out.data, d);
    }

    // dh_out [N, d] -> grad_wire (device, >= grad_bytes(N) bytes: BwdWire of dL/dy,
    // straight through the rounding), parameter gradients (+=).
    void backward(Activations& s, CudaTensor<const bf16> dh_out, CudaTensor<std::byte> grad_wire) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
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
        ops::matmul_backward(ctx, dact, this->g(w2_), dh_out, s.act.view({N, H}), this->w(w2_), false);
        dec_hidden_bwd<H, r, truncate><<<row_grid(N, ctx), kRowWarps * 32, 0, ctx.stream>>>(
            dy.data, dpre.data, dact.data, s.pre.data(), this->w(w1_).data, dh_out.data, int(d), N);
        RESBM_CUDA_LAUNCH_CHECK();
        // d fc1 += dpreᵀ · y
        ops::matmul_backward(ctx, {}, this->g(w1_), dpre, s.y.view({N, r}), this->w(w1_));
        if constexpr (reembed) {
          const int V = this->b_.vocab;
          if (V % 8 == 0 && V <= kOneHotMaxVocab) {  // d E += onehot(ids)ᵀ · dh' (deterministic)
            if (onehot_.size() < size_t(N) * size_t(V)) onehot_.resize(size_t(N) * size_t(V));
            one_hot<<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(onehot_.data(), s.ids.data(), N, V);
            RESBM_CUDA_LAUNCH_CHECK();
            ops::gemm<float>(ctx, true, false, V, d, N, 1.0f, onehot_.data(), V, dh_out.data, d, 1.0f,
                             this->g(emb_).data, d);
          } else {
            reembed_bwd<<<row_blocks(N), kRowWarps * 32, 0, ctx.stream>>>(this->g(emb_).data, s.ids.data(),
                                                                            dh_out.data, N, int(d), V);
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
    size_t w1_ = 0, w2_ = 0, emb_ = 0;
    DeviceBuffer<float> dy_;
    DeviceBuffer<bf16> dact_, dpre_, onehot_;
    int64_t tokens_ = 0;
  };
};

}  // namespace resbm::codec
