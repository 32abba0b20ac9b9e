#pragma once
// The halves of Dense<W> (and QuantOnly<W>, the same type) on the GPU: the whole bf16
// residual stream goes through the wire W both ways, with the CPU wire's bytes (byte-exact
// encode and decode, ops/cuda/wire.cuh), so a GPU half can face a CPU half. No parameters.
// Same interface as CudaResidualBottleneck's halves, so a pipeline stage treats both alike:
// the encoder's dh is WRITTEN (=), wire errors (a non-finite activation or gradient, a
// corrupt payload) are reported by check(acts).
#include <cstddef>
#include <cstdint>

#include "resbm/codec/dense.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/ops/cuda/wire.cuh"

namespace resbm::codec {

template <class Codec>
struct CudaDense {
  static_assert(sizeof(Codec) == 0, "CudaDense: only Dense<W> with W in Bf16Wire, Int8Grouped<G>, Int8PerToken");
};

template <class W>
  requires ops::cuda_detail_wire::CudaWire<W>
struct CudaDense<Dense<W>> {
  // What both halves share. No parameters: an empty layout, so optimizers and norms skip it.
  class Half {
   public:
    struct Activations {
      int64_t tokens = 0;
      ops::CudaWireStatus fwd_status, bwd_status;
    };

    Half(CudaContext& ctx, const Boundary& b) : ctx_(&ctx), d_(b.d_model) {
      detail::check_boundary("Dense", b, 0, false);
    }
    const ParamArena<float>& layout() const { return layout_; }
    size_t size() const { return 0; }
    float* params() { return nullptr; }
    float* grads() { return nullptr; }
    bf16* params_bf16() { return nullptr; }
    void init(uint64_t) {}
    void zero_grad() {}

    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      Activations s;
      s.tokens = tokens;
      return s;
    }
    size_t wire_bytes(int64_t tokens) const { return W::bytes(tokens, d_); }
    size_t grad_bytes(int64_t tokens) const { return W::bytes(tokens, d_); }
    void check(Activations& s) {
      s.fwd_status.check(*ctx_);
      s.bwd_status.check(*ctx_);
    }

   protected:
    CudaContext* ctx_;
    int64_t d_;
    ParamArena<float> layout_;
  };

  class Encoder : public Half {
   public:
    using Half::Half;
    using typename Half::Activations;
    void forward(Activations& s, CudaTensor<const bf16> h, CudaTensor<std::byte> wire) {
      expect_shape(h, {s.tokens, this->d_}, "boundary encoder input");
      ops::wire_encode<W, bf16>(*this->ctx_, s.fwd_status, h, wire);
    }
    void backward(Activations& s, CudaTensor<const std::byte> grad_wire, CudaTensor<bf16> dh) {
      expect_shape(dh, {s.tokens, this->d_}, "boundary encoder input gradient");
      ops::wire_decode<W, bf16>(*this->ctx_, s.bwd_status, grad_wire, dh);
    }
  };

  class Decoder : public Half {
   public:
    using Half::Half;
    using typename Half::Activations;
    void forward(Activations& s, CudaTensor<const std::byte> wire, CudaTensor<const int32_t>, CudaTensor<bf16> h_out) {
      expect_shape(h_out, {s.tokens, this->d_}, "boundary decoder output");
      ops::wire_decode<W, bf16>(*this->ctx_, s.fwd_status, wire, h_out);
    }
    void backward(Activations& s, CudaTensor<const bf16> dh_out, CudaTensor<std::byte> grad_wire) {
      expect_shape(dh_out, {s.tokens, this->d_}, "boundary decoder output gradient");
      ops::wire_encode<W, bf16>(*this->ctx_, s.bwd_status, dh_out, grad_wire);
    }
  };
};

}  // namespace resbm::codec
