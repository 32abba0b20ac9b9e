#pragma once
// Baselines with no learned part: the whole residual stream, all d coordinates, goes
// through the wire. Dense<Bf16Wire> is the uncompressed boundary (the 2·d bytes per token
// that compression ratios are quoted against), Dense<Fp32Wire> is exact, and
// QuantOnly<W> is the same codec with a quantizing wire: compression by rounding alone.
// No parameters; the gradient goes back through the wire as dL/dh, also d per token.
#include <span>

#include "resbm/codec/concepts.hpp"
#include "resbm/codec/detail.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"

namespace resbm::codec {

template <class Wire>
struct Dense {
  static_assert(WirePolicy<Wire>, "Dense<Wire>: Wire does not model resbm::codec::WirePolicy");
  static constexpr const char* name = "dense";
  using fwd_wire = Wire;
  using bwd_wire = Wire;

  template <class T>
  class Encoder {
   public:
    struct Activations {
      int64_t tokens = 0;
    };
    Encoder(const Boundary& b, ParamArena<T>&) : b_(b) { detail::check_boundary("Dense encoder", b, 0, false); }
    void init(uint64_t) {}
    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      return Activations{tokens};
    }
    size_t wire_bytes(int64_t tokens) const { return Wire::bytes(tokens, b_.d_model); }
    size_t grad_bytes(int64_t tokens) const { return Wire::bytes(tokens, b_.d_model); }
    void forward(const Context&, Activations& s, Tensor<const T> h, std::span<const int32_t>,
                 std::span<std::byte> wire) {
      expect_shape(h, {s.tokens, b_.d_model}, "boundary encoder input");
      stage_.template send<Wire>(h.data, s.tokens, b_.d_model, wire);
    }
    void backward(const Context&, Activations& s, std::span<const std::byte> grad_wire, Tensor<T> dh) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(dh, {N, d}, "boundary encoder input gradient");
      T* g = detail::grow(g_, size_t(N * d));
      stage_.template receive<Wire>(grad_wire, N, d, g);
      for (int64_t i = 0; i < N * d; ++i) dh[i] += g[i];
    }

   private:
    Boundary b_;
    Buffer<T> g_;
    detail::WireStage<T> stage_;
  };

  template <class T>
  class Decoder {
   public:
    struct Activations {
      int64_t tokens = 0;
    };
    Decoder(const Boundary& b, ParamArena<T>&) : b_(b) { detail::check_boundary("Dense decoder", b, 0, false); }
    void init(uint64_t) {}
    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      return Activations{tokens};
    }
    size_t wire_bytes(int64_t tokens) const { return Wire::bytes(tokens, b_.d_model); }
    size_t grad_bytes(int64_t tokens) const { return Wire::bytes(tokens, b_.d_model); }
    void forward(const Context&, Activations& s, std::span<const std::byte> wire, std::span<const int32_t>,
                 Tensor<T> h_out) {
      expect_shape(h_out, {s.tokens, b_.d_model}, "boundary decoder output");
      stage_.template receive<Wire>(wire, s.tokens, b_.d_model, h_out.data);
    }
    void backward(const Context&, Activations& s, Tensor<const T> dh_out, std::span<std::byte> grad_wire) {
      expect_shape(dh_out, {s.tokens, b_.d_model}, "boundary decoder output gradient");
      stage_.template send<Wire>(dh_out.data, s.tokens, b_.d_model, grad_wire);
    }

   private:
    Boundary b_;
    detail::WireStage<T> stage_;
  };
};

// The quantize-only baseline: Dense with a lossy wire (e.g. QuantOnly<Int8PerToken>). An
// alias, not a new type, because the codec is the same; the name says what it is for.
template <class Wire>
using QuantOnly = Dense<Wire>;

}  // namespace resbm::codec
