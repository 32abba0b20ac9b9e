#pragma once
// The two concepts a boundary codec is built from. A pipeline stage only ever talks to
// these: the wire policy turns floats into bytes, the codec turns a residual stream into a
// wire payload and a wire gradient back into a residual gradient. Everything else in
// resbm::codec is one model of them, and a user's own is a peer of the built-in ones.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "resbm/core/arena.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/error.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::codec {

// Which pipeline boundary a codec half serves. `index` k is the boundary between stage k
// and stage k+1; it prefixes the parameter names ("boundary.<k>.enc." on the sender,
// "boundary.<k>.dec." on the receiver) so that the weights of every boundary are drawn
// from their own Philox streams and checkpoints keep them apart.
struct Boundary {
  int index = 0;
  int d_model = 0;
  int vocab = 0;
};

// WirePolicy: how `tokens × width` floats become bytes and back. Stateless, all static:
//   bytes(tokens, width)               exact payload size; the same on both ends, so the
//                                      receiver knows how much to read from the config alone
//   encode(x, tokens, width, out)      writes exactly bytes(tokens, width) bytes, little-
//                                      endian whatever the host; a non-finite input is an
//                                      Error naming the wire and the token, never sent
//   decode(in, tokens, width, y)       reads at most bytes(tokens, width) bytes
//   name                               for messages and metrics
// Both sides see row-major [tokens, width] arrays. Out-of-range sizes are resbm::Error.
template <class W>
concept WirePolicy = requires(const float* x, float* y, std::byte* out, const std::byte* in,
                              int64_t tokens, int64_t width) {
  { W::bytes(tokens, width) } -> std::same_as<size_t>;
  W::encode(x, tokens, width, out);
  W::decode(in, tokens, width, y);
  { W::name } -> std::convertible_to<const char*>;
};

// The sending half of a codec, for one scalar type T. Constructed from (Boundary, arena):
// it declares its parameters into the stage's arena (before allocate()) and keeps indices.
//   init(seed)                         draws its parameters (after allocate())
//   make_activations(N)                what one micro-batch of N tokens keeps for backward
//   wire_bytes(N) / grad_bytes(N)      forward payload it sends / backward payload it reads
//   forward(ctx, acts, h[N,d], tokens[N], wire)   encodes; `tokens` may be ignored
//   backward(ctx, acts, grad_wire, dh[N,d])       dh += dL/dh (every backward accumulates)
template <class E, class T>
concept CodecEncoder =
    std::constructible_from<E, const Boundary&, ParamArena<T>&> &&
    requires(E& e, const E& ce, const Context& ctx, typename E::Activations& acts, Tensor<const T> h,
             Tensor<T> dh, std::span<const int32_t> tokens, std::span<std::byte> out,
             std::span<const std::byte> in, uint64_t seed, int64_t n) {
      e.init(seed);
      { ce.make_activations(n) } -> std::same_as<typename E::Activations>;
      { ce.wire_bytes(n) } -> std::same_as<size_t>;
      { ce.grad_bytes(n) } -> std::same_as<size_t>;
      e.forward(ctx, acts, h, tokens, out);
      e.backward(ctx, acts, in, dh);
    };

// The receiving half, for one scalar type T.
//   forward(ctx, acts, wire, tokens[N], h_out[N,d])   h_out is written (=), not accumulated
//   backward(ctx, acts, dh_out[N,d], grad_wire)       writes the gradient payload
// Token ids come from the receiver's own data loader: they cost no wire bytes.
template <class D, class T>
concept CodecDecoder =
    std::constructible_from<D, const Boundary&, ParamArena<T>&> &&
    requires(D& d, const D& cd, const Context& ctx, typename D::Activations& acts, Tensor<T> h_out,
             Tensor<const T> dh_out, std::span<const int32_t> tokens, std::span<std::byte> out,
             std::span<const std::byte> in, uint64_t seed, int64_t n) {
      d.init(seed);
      { cd.make_activations(n) } -> std::same_as<typename D::Activations>;
      { cd.wire_bytes(n) } -> std::same_as<size_t>;
      { cd.grad_bytes(n) } -> std::same_as<size_t>;
      d.forward(ctx, acts, in, tokens, h_out);
      d.backward(ctx, acts, dh_out, out);
    };

// BoundaryCodec: a pair of halves, member templates Encoder<T> and Decoder<T>, for float
// (training) and double (gradient checks). The halves never share memory: they live on
// different stages, possibly different machines, and meet only through the two payloads.
template <class C>
concept BoundaryCodec = requires {
  typename C::template Encoder<float>;
  typename C::template Decoder<float>;
  typename C::template Encoder<double>;
  typename C::template Decoder<double>;
} && CodecEncoder<typename C::template Encoder<float>, float> &&
                        CodecDecoder<typename C::template Decoder<float>, float> &&
                        CodecEncoder<typename C::template Encoder<double>, double> &&
                        CodecDecoder<typename C::template Decoder<double>, double>;

// Optional hook for codecs that only work on a constrained model (Subspace):
//   template <class T> static void constrain(ParamArena<T>& stage_arena, const Boundary&,
//                                            uint64_t seed);
// The trainer calls it on EVERY stage's arena, after init and after every optimizer step
// (projected gradient descent). It finds the parameters it cares about by name and leaves
// the others alone, so it is safe on stages that hold none of them. Codecs without it
// need nothing: constrain_model<C>() below is then a no-op.
template <class C, class T>
concept ConstrainsModel = requires(ParamArena<T>& a, const Boundary& b, uint64_t seed) {
  C::template constrain<T>(a, b, seed);
};

template <class C, class T>
void constrain_model(ParamArena<T>& stage_arena, const Boundary& b, uint64_t seed) {
  if constexpr (ConstrainsModel<C, T>) C::template constrain<T>(stage_arena, b, seed);
}

// Span-checked entry points to a wire policy: a buffer too small for the payload is an
// Error, never a write or read past its end.
template <WirePolicy W>
void wire_encode(const float* x, int64_t tokens, int64_t width, std::span<std::byte> out) {
  const size_t need = W::bytes(tokens, width);
  RESBM_CHECK(out.size() >= need,
              cat(W::name, ": payload buffer of ", out.size(), " bytes is smaller than the ", need,
                  " bytes of ", tokens, " tokens x ", width, " values"),
              "size the buffer with the codec's wire_bytes()/grad_bytes()");
  W::encode(x, tokens, width, out.data());
}

template <WirePolicy W>
void wire_decode(std::span<const std::byte> in, int64_t tokens, int64_t width, float* y) {
  const size_t need = W::bytes(tokens, width);
  RESBM_CHECK(in.size() >= need,
              cat(W::name, ": received ", in.size(), " bytes but ", tokens, " tokens x ", width,
                  " values need ", need),
              "both stages must use the same codec, rank and micro-batch size");
  W::decode(in.data(), tokens, width, y);
}

}  // namespace resbm::codec

// The checks to put next to a model of a concept: a policy that misses an operation fails
// here, with the concept's name in the message, instead of deep inside a stage. The
// compiler's note under it names the requirement that is not met.
#define RESBM_ASSERT_WIRE_POLICY(W)                                                         \
  static_assert(::resbm::codec::WirePolicy<W>,                                              \
                #W " does not model resbm::codec::WirePolicy: it needs static bytes(tokens, " \
                   "width) -> size_t, encode(const float*, tokens, width, std::byte*), "    \
                   "decode(const std::byte*, tokens, width, float*) and a name")
#define RESBM_ASSERT_BOUNDARY_CODEC(C)                                                       \
  static_assert(::resbm::codec::BoundaryCodec<C>,                                            \
                #C " does not model resbm::codec::BoundaryCodec: it needs member templates "  \
                   "Encoder<T> and Decoder<T> (T = float, double), each constructible from " \
                   "(const Boundary&, ParamArena<T>&) with init, make_activations, "         \
                   "wire_bytes, grad_bytes, forward and backward (see codec/concepts.hpp)")
