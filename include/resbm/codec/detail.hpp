#pragma once
// Plumbing shared by the built-in codecs: boundary validation, parameter-name prefixes,
// grow-only scratch, and the float staging between a codec's scalar type and the wire.
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "resbm/codec/concepts.hpp"
#include "resbm/core/buffer.hpp"

namespace resbm::codec::detail {

inline void check_boundary(const char* codec, const Boundary& b, int width, bool needs_vocab) {
  RESBM_CHECK(b.index >= 0, cat(codec, ": boundary index ", b.index, " is negative"),
              "number boundaries 0 .. stages-2");
  RESBM_CHECK(b.d_model > 0, cat(codec, ": d_model ", b.d_model, " must be positive"),
              "pass the model's d_model in the Boundary");
  RESBM_CHECK(width <= b.d_model,
              cat(codec, ": rank ", width, " is larger than d_model ", b.d_model),
              "choose a rank r <= d_model (the bottleneck must be narrower than the stream)");
  RESBM_CHECK(!needs_vocab || b.vocab > 0,
              cat(codec, ": vocab ", b.vocab, " must be positive for a codec that uses token ids"),
              "pass the model's vocabulary size in the Boundary");
}

inline std::string prefix(const Boundary& b, const char* half) {
  return "boundary." + std::to_string(b.index) + "." + half + ".";
}

inline void check_tokens_arg(int64_t tokens) {
  RESBM_CHECK(tokens >= 0, cat("micro-batch of ", tokens, " tokens"), "pass tokens >= 0");
}

inline void check_ids(const char* codec, std::span<const int32_t> ids, int64_t N, int vocab) {
  RESBM_CHECK(int64_t(ids.size()) == N,
              cat(codec, ": got ", ids.size(), " token ids for a micro-batch of ", N, " tokens"),
              "pass the token ids of the micro-batch (one per position) from the data loader");
  for (size_t i = 0; i < ids.size(); ++i)
    RESBM_CHECK(ids[i] >= 0 && ids[i] < vocab,
                cat(codec, ": token id ", ids[i], " at position ", i, " is out of range [0, ", vocab, ")"),
                "tokenize with the model's vocabulary");
}

// A view of the first n elements of a buffer that only ever grows.
template <class T>
T* grow(Buffer<T>& b, size_t n) {
  if (b.size() < n) b.resize(n);
  return b.data();
}

template <class T>
Tensor<T> zeroed(Buffer<T>& b, std::initializer_list<int64_t> dims) {
  Tensor<T> probe(nullptr, dims);
  T* p = grow(b, size_t(probe.numel()));
  std::fill(p, p + probe.numel(), T(0));
  return Tensor<T>(p, dims);
}

// Wire policies speak fp32. A float codec hands its buffers straight to the wire; a double
// one (the gradient checks) goes through this fp32 copy, so in double the wire is exactly
// the rounding a float run sees.
template <class T>
class WireStage {
 public:
  template <WirePolicy W>
  void send(const T* x, int64_t tokens, int64_t width, std::span<std::byte> out) {
    if constexpr (std::is_same_v<T, float>) {
      wire_encode<W>(x, tokens, width, out);
    } else {
      const size_t n = size_t(tokens * width);
      buf_.resize(n);
      for (size_t i = 0; i < n; ++i) buf_[i] = float(x[i]);
      wire_encode<W>(buf_.data(), tokens, width, out);
    }
  }
  template <WirePolicy W>
  void receive(std::span<const std::byte> in, int64_t tokens, int64_t width, T* y) {
    if constexpr (std::is_same_v<T, float>) {
      wire_decode<W>(in, tokens, width, y);
    } else {
      const size_t n = size_t(tokens * width);
      buf_.resize(n);
      wire_decode<W>(in, tokens, width, buf_.data());
      for (size_t i = 0; i < n; ++i) y[i] = T(buf_[i]);
    }
  }

 private:
  std::vector<float> buf_;
};

}  // namespace resbm::codec::detail
