#pragma once
// Fp32Wire: the exact wire. Layout: tokens·width fp32 values, row-major, little-endian;
// 4 bytes per value, no header. The reference every lossy wire is measured against, and
// the wire of the gradient checks.
#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

struct Fp32Wire {
  static constexpr const char* name = "fp32";

  static size_t bytes(int64_t tokens, int64_t width) {
    return size_t(wire_detail::checked_count(name, tokens, width)) * 4;
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(x[i])) wire_detail::non_finite(name, i, width);
      wire_detail::put_f32(out + 4 * i, x[i]);
    }
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    for (int64_t i = 0; i < n; ++i) {
      y[i] = wire_detail::get_f32(in + 4 * i);
      if (!std::isfinite(y[i])) wire_detail::corrupt(name, i, width);
    }
  }
};
RESBM_ASSERT_WIRE_POLICY(Fp32Wire);

}  // namespace resbm::codec
