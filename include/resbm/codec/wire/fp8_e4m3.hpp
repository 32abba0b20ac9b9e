#pragma once
// Fp8E4M3PerToken: OCP fp8 e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits,
// subnormals, no infinity, S.1111.111 = NaN, largest 448) with one fp32 scale per token.
// Layout: `tokens` fp32 scales (absmax of the row / 448, little-endian), then tokens·width
// e4m3fn bytes, row-major; 4 + width bytes per token. x/scale is rounded to the nearest
// e4m3 value, ties to the even code, so |x − deq| <= 2^-4·|x| for values that land in the
// normal range and <= 2^-10·scale below it (the subnormal step is 2^-9). A zero row has
// scale 0 and decodes to zeros.
#include <algorithm>
#include <array>

#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

namespace fp8_detail {

// The 127 non-negative finite e4m3fn values, indexed by code (0x00..0x7E), increasing.
// A table instead of bit tricks: the encoder is then a search over exactly the values the
// format has, which makes rounding, the subnormal range and saturation at 448 obviously
// right.
inline constexpr std::array<float, 127> kE4m3 = [] {
  std::array<float, 127> t{};
  for (int c = 0; c < 127; ++c) {
    const int e = c >> 3, m = c & 7;
    float v = e == 0 ? float(m) / 512.0f : 1.0f + float(m) / 8.0f;
    for (int k = 7; k > e && e > 0; --k) v /= 2.0f;
    for (int k = 7; k < e; ++k) v *= 2.0f;
    t[size_t(c)] = v;
  }
  return t;
}();

inline uint8_t encode_mag(float a) {
  if (a >= 448.0f) return 0x7e;  // saturate: e4m3fn has no infinity
  // First code whose value exceeds a; a lies between codes c-1 and c.
  const auto it = std::upper_bound(kE4m3.begin(), kE4m3.end(), a);
  const int hi = int(it - kE4m3.begin()), lo = hi - 1;
  const float dlo = a - kE4m3[size_t(lo)], dhi = kE4m3[size_t(hi)] - a;
  if (dlo < dhi) return uint8_t(lo);
  if (dhi < dlo) return uint8_t(hi);
  return uint8_t(lo % 2 == 0 ? lo : hi);  // tie: the even code
}

inline float decode_code(uint8_t c) {
  const float v = kE4m3[c & 0x7fu];
  return c & 0x80u ? -v : v;
}

}  // namespace fp8_detail

struct Fp8E4M3PerToken {
  static constexpr const char* name = "fp8-e4m3-per-token";

  static size_t bytes(int64_t tokens, int64_t width) {
    return size_t(wire_detail::checked_count(name, tokens, width)) + size_t(tokens) * 4;
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    wire_detail::checked_count(name, tokens, width);
    std::byte* codes = out + 4 * tokens;
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t row = t * width;
      const float m = wire_detail::absmax(name, x, row, row + width, width);
      const float scale = m / 448.0f;
      wire_detail::put_f32(out + 4 * t, scale);
      for (int64_t i = row; i < row + width; ++i) {
        const float v = scale > 0 ? float(double(x[i]) / double(scale)) : 0.0f;
        const uint8_t mag = fp8_detail::encode_mag(std::fabs(v));
        codes[i] = std::byte(uint8_t(v < 0 && mag ? mag | 0x80u : mag));
      }
    }
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    wire_detail::checked_count(name, tokens, width);
    const std::byte* codes = in + 4 * tokens;
    for (int64_t t = 0; t < tokens; ++t) {
      const float scale = wire_detail::get_f32(in + 4 * t);
      if (!std::isfinite(scale)) wire_detail::corrupt(name, t * width, width);
      for (int64_t i = t * width; i < (t + 1) * width; ++i) {
        const uint8_t c = uint8_t(codes[i]);
        if ((c & 0x7fu) == 0x7fu) wire_detail::corrupt(name, i, width);
        y[i] = fp8_detail::decode_code(c) * scale;
      }
    }
  }
};
RESBM_ASSERT_WIRE_POLICY(Fp8E4M3PerToken);

}  // namespace resbm::codec
