#pragma once
// The two halves of ResidualBottleneck<rank<R>, Mlp<H, silu>, Truncate | NoIdentity, FwdWire,
// BwdWire, NoSideInfo | TokenReembed> on the GPU (the presets::Resbm<R> codec), the CPU
// halves of codec/residual_bottleneck.hpp with the same parameters and the same wire bytes
// format, so either half can face a CPU half over one link:
//
//   encoder   z = h[:, :r] + fc2(silu(fc1(rmsnorm(h) · gain)))  ->  FwdWire bytes
//   decoder   y = Deq(wire);  h' = pad(y) + fc2(silu(fc1(y))) + E[ids]
//   backward  decoder: dh' -> dy (straight through) -> BwdWire bytes, dW += ...;
//             encoder: BwdWire bytes -> dz -> dh (+=), dW += ...
//
// Parameters: the layout (names, shapes, kinds, offsets, 16-element padding) is declared
// by the CPU half over a host ParamArena<float> that is never allocated, so it cannot drift
// from the CPU's; init(seed) runs the CPU half's init on the host and uploads the result, so
// the initial values are the CPU's bit for bit. As nn::CudaLlama: fp32 master weights and
// gradients in that layout, and a bf16 copy that forward and backward read.
//
// Precision (DESIGN §4): bf16 activations (rmsnorm output, hidden pre/post activations, the
// decoded code y and dz, the output h'), fp32 accumulation everywhere, fp32 rstd, fp32
// weight gradients. The encoder's code z is accumulated in fp32 and quantised in the same
// kernel (ops::fused_linear_encode): the wire bytes are exactly FwdWire::encode(z) of that
// z, which differs from the CPU's z by the bf16 rounding of the hidden activations (~1e-2
// relative on the MLP's part), so the bytes match the CPU's only where no code rounds
// differently. The decoder's code gradient dy is accumulated in fp32 and encoded from fp32.
//
// Gradient semantics: parameter gradients (fp32) accumulate (+=), as on the CPU; the
// encoder's dh (bf16) accumulates too (it is the residual stream's gradient of the stage).
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
// - the re-embedding's gradient adds with fp32 atomics (ops::embedding_backward): not
//   bitwise deterministic yet.
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "resbm/codec/residual_bottleneck.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/ops/cuda/cast.cuh"
#include "resbm/ops/cuda/embedding.cuh"
#include "resbm/ops/cuda/matmul.cuh"
#include "resbm/ops/cuda/rmsnorm.cuh"
#include "resbm/ops/cuda/silu.cuh"
#include "resbm/ops/cuda/wire.cuh"

namespace resbm::codec {

namespace rb_cuda_detail {

using resbm::cuda_detail::ldf;
using resbm::cuda_detail::Pack8;
using resbm::cuda_detail::stf;

// dh[n, j] += dz[n, j] for j < r (the encoder's Truncate identity, backward).
__global__ void add_code(bf16* __restrict__ dh, int64_t d, const bf16* __restrict__ dz, int64_t N, int r) {
  const int64_t total = N * r;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / r, j = i % r;
    stf(dh + n * d + j, ldf(dh + n * d + j) + ldf(dz + i));
  }
}

// h'[n, :] = pad(y[n, :]) (kTruncate) + E[ids[n], :] (table non-null), 8 columns a thread;
// the decoder's last GEMM then adds its product (beta = 1). A bad id gives a NaN row.
template <bool kTruncate>
__global__ void decoder_prefill(bf16* __restrict__ out, int64_t d, const bf16* __restrict__ y, int r,
                                const int32_t* __restrict__ ids, const bf16* __restrict__ table, int64_t vocab,
                                int64_t N) {
  const int64_t d8 = d / 8, total = N * d8;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / d8, c0 = (i % d8) * 8;
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (table) {
      const int32_t t = ids[n];
      if (t >= 0 && t < vocab)
        resbm::cuda_detail::unpack8(reinterpret_cast<const Pack8*>(table + int64_t(t) * d)[c0 / 8], v);
      else
        for (float& x : v) x = __int_as_float(0x7fc00000);
    }
    if (kTruncate && c0 < r)
      for (int e = 0; e < 8 && c0 + e < r; ++e) v[e] += ldf(y + n * r + c0 + e);
    reinterpret_cast<Pack8*>(out)[i] = resbm::cuda_detail::pack8(v);
  }
}

// dy[n, j] = dh'[n, j] (fp32), j < r: the decoder's Truncate identity, backward; the code
// gradient GEMM then adds (beta = 1).
__global__ void code_grad_init(float* __restrict__ dy, int r, const bf16* __restrict__ dh, int64_t d, int64_t N) {
  const int64_t total = N * r;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    dy[i] = ldf(dh + (i / r) * d + i % r);
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
  CudaTensor<const bf16> w(size_t i) const { return view<const bf16>(p16_.data(), i); }
  CudaTensor<float> g(size_t i) { return view<float>(g32_.data(), i); }

  CudaContext* ctx_;
  Boundary b_;

 private:
  template <class P, class B>
  CudaTensor<P> view(B* base, size_t i) const {
    const ParamInfo& p = layout_.info(i);
    CudaTensor<P> t;
    t.data = base + p.offset;
    t.shape = p.shape;
    t.rank = p.rank;
    return t;
  }

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

  class Encoder : public rb_cuda_detail::Params<typename Codec::template Encoder<float>> {
    using Base = rb_cuda_detail::Params<typename Codec::template Encoder<float>>;

   public:
    struct Activations {
      int64_t tokens = 0;
      const bf16* h = nullptr;           // the input, not owned (see the header comment)
      DeviceBuffer<bf16> normed, pre, act;  // [N, d], [N, H], [N, H]
      DeviceBuffer<float> rstd;          // [N]
      ops::CudaWireStatus fwd_status, bwd_status;
    };

    Encoder(CudaContext& ctx, const Boundary& b) : Base(ctx, b) {
      rb_cuda_detail::check_boundary(b);
      this->prefix_ = detail::prefix(b, "enc");
      gain_ = this->find("norm.weight");
      w1_ = this->find("fc1.weight");
      w2_ = this->find("fc2.weight");
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      const size_t N = size_t(tokens), d = size_t(this->b_.d_model);
      Activations s;
      s.tokens = tokens;
      s.normed.resize(N * d);
      s.pre.resize(N * H);
      s.act.resize(N * H);
      s.rstd.resize(N);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }

    // h [N, d] (kept by pointer until backward) -> wire (device, >= wire_bytes(N) bytes).
    // z_out [N, r] fp32, optional: the code before quantisation (tests).
    void forward(Activations& s, CudaTensor<const bf16> h, CudaTensor<std::byte> wire, CudaTensor<float> z_out = {}) {
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(h, {N, d}, "boundary encoder input");
      s.h = h.data;
      auto normed = s.normed.view({N, d}), pre = s.pre.view({N, H}), act = s.act.view({N, H});
      ops::rmsnorm_forward(ctx, normed, s.rstd.view({N}), h, this->w(gain_), float(rb_detail::kNormEps));
      ops::matmul_forward<bf16>(ctx, pre, normed, this->w(w1_));
      ops::silu_forward<bf16>(ctx, act, pre);
      ops::fused_linear_encode<FwdWire>(ctx, s.fwd_status, act, this->w(w2_), truncate ? h : CudaTensor<const bf16>{},
                                        wire, z_out);
    }

    // grad_wire (device, BwdWire bytes of dL/dz) -> dh [N, d] (+=), parameter gradients (+=).
    void backward(Activations& s, CudaTensor<const std::byte> grad_wire, CudaTensor<bf16> dh) {
      using namespace rb_cuda_detail;
      CudaContext& ctx = *this->ctx_;
      const int64_t N = s.tokens, d = this->b_.d_model;
      expect_shape(dh, {N, d}, "boundary encoder input gradient");
      RESBM_CHECK(N == 0 || s.h != nullptr, "boundary encoder backward before its forward",
                  "run forward on these activations first");
      if (dz_.size() < size_t(N * r)) dz_.resize(size_t(N * r));
      if (dact_.size() < size_t(N * H)) {
        dact_.resize(size_t(N * H));
        dpre_.resize(size_t(N * H));
      }
      if (dnormed_.size() < size_t(N * d)) dnormed_.resize(size_t(N * d));
      auto dz = dz_.view({N, r}), dact = dact_.view({N, H}), dpre = dpre_.view({N, H}), dnormed = dnormed_.view({N, d});
      ops::wire_decode<BwdWire, bf16>(ctx, s.bwd_status, grad_wire, dz);
      if (N == 0) return;
      if constexpr (truncate) {
        add_code<<<cuda_detail::grid_for(N * r, 256), 256, 0, ctx.stream>>>(dh.data, d, dz.data, N, r);
        RESBM_CUDA_LAUNCH_CHECK();
      }
      ops::matmul_backward(ctx, dact, this->g(w2_), dz, s.act.view({N, H}), this->w(w2_), /*accumulate=*/false);
      ops::silu_backward<bf16>(ctx, dpre, dact, s.pre.view({N, H}));
      ops::matmul_backward(ctx, dnormed, this->g(w1_), dpre, s.normed.view({N, d}), this->w(w1_), false);
      ops::rmsnorm_backward(ctx, dh, this->g(gain_), dnormed, cview(s.h, {N, d}), this->w(gain_),
                            s.rstd.view({N}));
    }

    // Synchronises; throws the wire's Error if a launch on s met a bad value.
    void check(Activations& s) {
      s.fwd_status.check(*this->ctx_);
      s.bwd_status.check(*this->ctx_);
    }

   private:
    size_t gain_ = 0, w1_ = 0, w2_ = 0;
    DeviceBuffer<bf16> dz_, dact_, dpre_, dnormed_;  // backward scratch, grow-only
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
      ops::matmul_forward<bf16>(ctx, pre, y, this->w(w1_));
      ops::silu_forward<bf16>(ctx, act, pre);
      if constexpr (truncate || reembed) {
        decoder_prefill<truncate><<<cuda_detail::grid_for(N * d / 8, 256), 256, 0, ctx.stream>>>(
            h_out.data, d, y.data, r, s.ids.data(), table, vocab, N);
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
      if (dy_.size() < size_t(N * r)) dy_.resize(size_t(N * r));
      if (dact_.size() < size_t(N * H)) {
        dact_.resize(size_t(N * H));
        dpre_.resize(size_t(N * H));
      }
      tokens_ = N;
      auto dy = dy_.view({N, r});
      auto dact = dact_.view({N, H}), dpre = dpre_.view({N, H});
      if (N > 0) {
        auto y = s.y.view({N, r});
        ops::matmul_backward(ctx, dact, this->g(w2_), dh_out, s.act.view({N, H}), this->w(w2_), false);
        ops::silu_backward<bf16>(ctx, dpre, dact, s.pre.view({N, H}));
        if constexpr (truncate) {
          code_grad_init<<<cuda_detail::grid_for(N * r, 256), 256, 0, ctx.stream>>>(dy.data, r, dh_out.data, d, N);
          RESBM_CUDA_LAUNCH_CHECK();
        }
        // dy (+)= dpre · fc1 (fp32), d fc1 += dpreᵀ · y
        ops::gemm<float>(ctx, false, false, N, r, H, 1.0f, dpre.data, H, this->w(w1_).data, r,
                         truncate ? 1.0f : 0.0f, dy.data, r);
        ops::matmul_backward(ctx, {}, this->g(w1_), dpre, y, this->w(w1_));
        if constexpr (reembed)
          ops::embedding_backward(ctx, this->g(emb_), cview(s.ids.data(), {N}), dh_out);
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
    DeviceBuffer<bf16> dact_, dpre_;
    int64_t tokens_ = 0;
  };
};

}  // namespace resbm::codec
