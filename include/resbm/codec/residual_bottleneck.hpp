#pragma once
// ResidualBottleneck: the learned boundary of DESIGN §1.
//
//   sender    z  = T h + Enc(N(h))             T = first r coordinates (Truncate) or 0
//   wire      q  = FwdWire(z)
//   receiver  h' = P Deq(q) + Dec(Deq(q)) + E[x]   P = zero-pad r -> d, E only with TokenReembed
//   backward  dL/dz (straight through the rounding), r numbers per token, over BwdWire
//
// Parameters (in the arena of the stage that holds the half):
//   boundary.<k>.enc.norm.weight [d] gain; Linear: enc.proj.weight [r, d];
//     Mlp<m>: enc.fc1.weight [m, d], enc.fc2.weight [r, m]
//   Linear: dec.proj.weight [d, r]; Mlp<m>: dec.fc1.weight [m, r], dec.fc2.weight [d, m]
//   TokenReembed: dec.reembed.weight [vocab, d] (embedding)
//
// Initialisation. Output layers that add to the identity path start at exactly zero:
// the decoder's last layer, the re-embedding, and (with Truncate) the encoder's last layer.
// Then the boundary at init is truncate-then-pad, bit for bit up to the wire rounding, and
// training starts from the rank-r identity the method is built around. Zero, not a small
// std: a 1e-3 init buys nothing (the other factor of each of these layers' gradients — the
// hidden activations, N(h) or z — is already nonzero, so they move on the first step) and
// would make "identity at init" hold only approximately. With NoIdentity the encoder's last
// layer is random (std 1/sqrt(fan_in)): a zero encoder and a zero decoder would then
// multiply to zero gradients for both, forever. First layers: std 1/sqrt(fan_in), so the
// hidden pre-activations are O(1) given the unit-RMS N(h).
#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <type_traits>

#include "resbm/codec/concepts.hpp"
#include "resbm/codec/detail.hpp"
#include "resbm/codec/policies.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/nn/init.hpp"
#include "resbm/ops/cpu/embedding.hpp"
#include "resbm/ops/cpu/gemm.hpp"
#include "resbm/ops/cpu/rmsnorm.hpp"

namespace resbm::codec {

namespace rb_detail {

// The encoder's RMSNorm epsilon: the model's own default (nn::LlamaConfig::norm_eps).
inline constexpr double kNormEps = 1e-5;

// How the optimizer treats a codec matrix. Muon scales its orthogonalised update by
// sqrt(max(1, rows/cols)): for the layer that reads the r-wide code (256 x 2 at r = 2)
// that is 11x a hidden layer's step, and training diverged in our runs. A matrix with one
// side 8x narrower than the other is code-facing, like an embedding or a head: AdamW.
inline ParamKind code_matrix_kind(int64_t rows, int64_t cols) {
  return std::min(rows, cols) * 8 <= std::max(rows, cols) ? ParamKind::head : ParamKind::matrix;
}

// A learned map in -> out, Linear or Mlp; one per codec half.
template <class T, class EncDec>
class Map;

template <class T>
class Map<T, Linear> {
 public:
  struct Acts {};

  Map(ParamArena<T>& a, const std::string& prefix, int64_t in, int64_t out) : in_(in) {
    w_ = a.add(prefix + "proj.weight", {out, in}, code_matrix_kind(out, in));
  }
  void init(ParamArena<T>& a, uint64_t seed, bool zero_out) const {
    if (zero_out)
      nn::fill_constant(a.param(w_), T(0));
    else
      nn::init_normal(a, w_, seed, T(1 / std::sqrt(double(in_))));
  }
  Acts make_acts(int64_t) const { return {}; }
  // y = x·Wᵀ (written)
  void forward(const Context& ctx, ParamArena<T>& a, Acts&, Tensor<const T> x, Tensor<T> y) const {
    ops::matmul_forward<T>(ctx, y, x, a.param(w_));
  }
  // dx += dy·W, dW += dyᵀ·x
  void backward(const Context& ctx, ParamArena<T>& a, Acts&, Tensor<const T> x, Tensor<const T> dy, Tensor<T> dx) {
    ops::matmul_backward<T>(ctx, dx, a.grad(w_), dy, x, a.param(w_));
  }

 private:
  int64_t in_;
  size_t w_ = 0;
};

template <class T, int H, class Act>
class Map<T, Mlp<H, Act>> {
 public:
  struct Acts {
    Buffer<T> pre, act;  // [N, H] before and after the nonlinearity
  };

  Map(ParamArena<T>& a, const std::string& prefix, int64_t in, int64_t out) : in_(in) {
    w1_ = a.add(prefix + "fc1.weight", {H, in}, code_matrix_kind(H, in));
    w2_ = a.add(prefix + "fc2.weight", {out, H}, code_matrix_kind(out, H));
  }
  void init(ParamArena<T>& a, uint64_t seed, bool zero_out) const {
    nn::init_normal(a, w1_, seed, T(1 / std::sqrt(double(in_))));
    if (zero_out)
      nn::fill_constant(a.param(w2_), T(0));
    else
      nn::init_normal(a, w2_, seed, T(1 / std::sqrt(double(H))));
  }
  Acts make_acts(int64_t N) const {
    Acts s;
    s.pre.resize(size_t(N * H));
    s.act.resize(size_t(N * H));
    return s;
  }
  void forward(const Context& ctx, ParamArena<T>& a, Acts& s, Tensor<const T> x, Tensor<T> y) const {
    const int64_t N = x.size(0);
    auto pre = s.pre.view({N, H}), act = s.act.view({N, H});
    ops::matmul_forward<T>(ctx, pre, x, a.param(w1_));
    Act::template forward<T>(ctx, act, pre);
    ops::matmul_forward<T>(ctx, y, act, a.param(w2_));
  }
  void backward(const Context& ctx, ParamArena<T>& a, Acts& s, Tensor<const T> x, Tensor<const T> dy, Tensor<T> dx) {
    const int64_t N = x.size(0);
    auto pre = s.pre.view({N, H}), act = s.act.view({N, H});
    auto dact = detail::zeroed(dact_, {N, H}), dpre = detail::zeroed(dpre_, {N, H});
    ops::matmul_backward<T>(ctx, dact, a.grad(w2_), dy, act, a.param(w2_));
    Act::template backward<T>(ctx, dpre, dact, pre);
    ops::matmul_backward<T>(ctx, dx, a.grad(w1_), dpre, x, a.param(w1_));
  }

 private:
  int64_t in_;
  size_t w1_ = 0, w2_ = 0;
  Buffer<T> dact_, dpre_;  // backward scratch; halves run backward one micro-batch at a time
};

template <class M>
constexpr bool enc_dec_ok() {
  if constexpr (is_mlp_v<M>) {
    static_assert(M::hidden >= 1, "ResidualBottleneck: Mlp<Hidden, Act> needs Hidden >= 1");
    static_assert(Activation<typename M::activation>,
                  "ResidualBottleneck: Mlp's Act does not model resbm::codec::Activation");
  }
  return true;
}

}  // namespace rb_detail

template <class Rank, class EncDec, class IdentityPath, class FwdWire, class BwdWire, class SideInfo = NoSideInfo>
struct ResidualBottleneck {
  static_assert(is_rank_v<Rank>, "ResidualBottleneck: the first parameter must be resbm::rank<R>");
  static_assert(Rank::value >= 1, "ResidualBottleneck: rank<R> needs R >= 1");
  static_assert(std::is_same_v<EncDec, Linear> || is_mlp_v<EncDec>,
                "ResidualBottleneck: EncDec must be resbm::codec::Linear or resbm::codec::Mlp<Hidden, Act>");
  static_assert(std::is_same_v<IdentityPath, Truncate> || std::is_same_v<IdentityPath, NoIdentity>,
                "ResidualBottleneck: IdentityPath must be resbm::codec::Truncate or resbm::codec::NoIdentity");
  static_assert(WirePolicy<FwdWire>, "ResidualBottleneck: FwdWire does not model resbm::codec::WirePolicy");
  static_assert(WirePolicy<BwdWire>, "ResidualBottleneck: BwdWire does not model resbm::codec::WirePolicy");
  static_assert(std::is_same_v<SideInfo, NoSideInfo> || std::is_same_v<SideInfo, TokenReembed>,
                "ResidualBottleneck: SideInfo must be resbm::codec::NoSideInfo or resbm::codec::TokenReembed");

  static constexpr int r = Rank::value;
  static constexpr bool truncate = std::is_same_v<IdentityPath, Truncate>;
  static constexpr bool reembed = std::is_same_v<SideInfo, TokenReembed>;
  static constexpr const char* name = "resbm";
  using fwd_wire = FwdWire;
  using bwd_wire = BwdWire;

  static_assert(rb_detail::enc_dec_ok<EncDec>());

 public:
  template <class T>
  class Encoder {
   public:
    struct Activations {
      int64_t tokens = 0;
      Buffer<T> h, normed, rstd;  // input [N, d], N(h) [N, d], 1/rms [N]
      Buffer<T> z;                // the code before quantisation [N, r]
      typename rb_detail::Map<T, EncDec>::Acts net;
    };

    Encoder(const Boundary& b, ParamArena<T>& arena)
        : b_(checked(b)), a_(&arena), net_(arena, detail::prefix(b, "enc"), b.d_model, r) {
      gain_ = arena.add(detail::prefix(b, "enc") + "norm.weight", {b.d_model}, ParamKind::gain);
    }

    void init(uint64_t seed) {
      nn::fill_constant(a_->param(gain_), T(1));
      net_.init(*a_, seed, /*zero_out=*/truncate);
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      Activations s;
      s.tokens = tokens;
      s.h.resize(size_t(tokens * b_.d_model));
      s.normed.resize(size_t(tokens * b_.d_model));
      s.rstd.resize(size_t(tokens));
      s.z.resize(size_t(tokens * r));
      s.net = net_.make_acts(tokens);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }

    // The encoder needs no token ids (the receiver has its own); `tokens` is ignored.
    void forward(const Context& ctx, Activations& s, Tensor<const T> h, std::span<const int32_t> /*tokens*/,
                 std::span<std::byte> wire) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(h, {N, d}, "boundary encoder input");
      std::copy(h.begin(), h.end(), s.h.begin());
      auto x = s.h.view({N, d}), normed = s.normed.view({N, d}), z = s.z.view({N, r});
      ops::rmsnorm_forward<T>(ctx, normed, s.rstd.view({N}), x, a_->param(gain_), T(rb_detail::kNormEps));
      net_.forward(ctx, *a_, s.net, normed, z);
      if constexpr (truncate)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < r; ++j) z[n * r + j] += x[n * d + j];
      stage_.template send<FwdWire>(z.data, N, r, wire);
    }

    void backward(const Context& ctx, Activations& s, std::span<const std::byte> grad_wire, Tensor<T> dh) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(dh, {N, d}, "boundary encoder input gradient");
      T* dz = detail::grow(dz_, size_t(N * r));
      stage_.template receive<BwdWire>(grad_wire, N, r, dz);
      if constexpr (truncate)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < r; ++j) dh[n * d + j] += dz[n * r + j];
      auto dnormed = detail::zeroed(dnormed_, {N, d});
      net_.backward(ctx, *a_, s.net, s.normed.view({N, d}), Tensor<const T>(dz, {N, r}), dnormed);
      ops::rmsnorm_backward<T>(ctx, dh, a_->grad(gain_), dnormed, s.h.view({N, d}), a_->param(gain_),
                               s.rstd.view({N}));
    }

   private:
    static const Boundary& checked(const Boundary& b) {
      detail::check_boundary("ResidualBottleneck encoder", b, r, false);
      return b;
    }

    Boundary b_;
    ParamArena<T>* a_;
    rb_detail::Map<T, EncDec> net_;
    size_t gain_ = 0;
    Buffer<T> dz_, dnormed_;
    detail::WireStage<T> stage_;
  };

  template <class T>
  class Decoder {
   public:
    struct Activations {
      int64_t tokens = 0;
      Buffer<T> y;          // Deq(q) [N, r]
      Buffer<int32_t> ids;  // token ids [N] (TokenReembed only)
      typename rb_detail::Map<T, EncDec>::Acts net;
    };

    Decoder(const Boundary& b, ParamArena<T>& arena)
        : b_(checked(b)), a_(&arena), net_(arena, detail::prefix(b, "dec"), r, b.d_model) {
      if constexpr (reembed)
        emb_ = arena.add(detail::prefix(b, "dec") + "reembed.weight", {b.vocab, b.d_model}, ParamKind::embedding);
    }

    // Zero re-embedding: E[x] = 0 at init, so the boundary starts as truncate-then-pad; its
    // gradient (dh' gathered by token) is nonzero from the first step.
    void init(uint64_t seed) {
      net_.init(*a_, seed, /*zero_out=*/true);
      if constexpr (reembed) nn::fill_constant(a_->param(emb_), T(0));
    }

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      Activations s;
      s.tokens = tokens;
      s.y.resize(size_t(tokens * r));
      if constexpr (reembed) s.ids.resize(size_t(tokens));
      s.net = net_.make_acts(tokens);
      return s;
    }

    size_t wire_bytes(int64_t tokens) const { return FwdWire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return BwdWire::bytes(tokens, r); }

    // `tokens` is read only with TokenReembed (then it must hold N ids).
    void forward(const Context& ctx, Activations& s, std::span<const std::byte> wire, std::span<const int32_t> tokens,
                 Tensor<T> h_out) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(h_out, {N, d}, "boundary decoder output");
      if constexpr (reembed) detail::check_ids("ResidualBottleneck decoder", tokens, N, b_.vocab);
      stage_.template receive<FwdWire>(wire, N, r, s.y.data());
      auto y = s.y.view({N, r});
      net_.forward(ctx, *a_, s.net, y, h_out);
      if constexpr (truncate)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < r; ++j) h_out[n * d + j] += y[n * r + j];
      if constexpr (reembed) {
        std::copy(tokens.begin(), tokens.end(), s.ids.begin());
        auto E = a_->param(emb_);
        for (int64_t n = 0; n < N; ++n) {
          const T* e = E.data + int64_t(tokens[size_t(n)]) * d;
          for (int64_t c = 0; c < d; ++c) h_out[n * d + c] += e[c];
        }
      }
    }

    // Straight-through: dL/dz is the gradient with respect to the dequantized code, as if
    // the rounding were the identity.
    void backward(const Context& ctx, Activations& s, Tensor<const T> dh_out, std::span<std::byte> grad_wire) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(dh_out, {N, d}, "boundary decoder output gradient");
      auto dy = detail::zeroed(dy_, {N, r});
      if constexpr (truncate)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < r; ++j) dy[n * r + j] += dh_out[n * d + j];
      net_.backward(ctx, *a_, s.net, s.y.view({N, r}), dh_out, dy);
      if constexpr (reembed) ops::embedding_backward<T>(ctx, a_->grad(emb_), s.ids.view({N}), dh_out);
      stage_.template send<BwdWire>(dy.data, N, r, grad_wire);
    }

   private:
    static const Boundary& checked(const Boundary& b) {
      detail::check_boundary("ResidualBottleneck decoder", b, r, reembed);
      return b;
    }

    Boundary b_;
    ParamArena<T>* a_;
    rb_detail::Map<T, EncDec> net_;
    size_t emb_ = 0;
    Buffer<T> dy_;
    detail::WireStage<T> stage_;
  };
};

}  // namespace resbm::codec
