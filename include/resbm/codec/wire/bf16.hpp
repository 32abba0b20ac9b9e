#pragma once
// Bf16Wire: tokens·width bf16 values (resbm::bf16, round to nearest even), row-major, each
// the upper 16 bits of the fp32 pattern stored little-endian; 2 bytes per value, no scale.
// The dense bf16 boundary that compression ratios are quoted against.
#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

struct Bf16Wire {
  static constexpr const char* name = "bf16";

  static size_t bytes(int64_t tokens, int64_t width) {
    return size_t(wire_detail::checked_count(name, tokens, width)) * 2;
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    for (int64_t i = 0; i < n; ++i) {
      const bf16 b = bf16::from_float(x[i]);
      // A finite fp32 above bf16's largest value rounds to infinity: as useless to the
      // receiver as a NaN, so it is refused the same way.
      if (!std::isfinite(x[i]) || !std::isfinite(b.to_float())) wire_detail::non_finite(name, i, width);
      wire_detail::put_u16(out + 2 * i, b.bits);
    }
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    for (int64_t i = 0; i < n; ++i) {
      y[i] = bf16::from_bits(wire_detail::get_u16(in + 2 * i)).to_float();
      if (!std::isfinite(y[i])) wire_detail::corrupt(name, i, width);
    }
  }
};
RESBM_ASSERT_WIRE_POLICY(Bf16Wire);

}  // namespace resbm::codec
