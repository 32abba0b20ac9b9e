#pragma once
// What every wire policy shares: size validation, explicit little-endian stores (the two
// ends of a link may be different hosts, so nothing relies on the host's byte order or on
// memcpy of a struct), the non-finite check, and symmetric integer quantisation in groups.
//
// Scales are stored as fp32 in every scaled policy. bf16 scales would save 2 bytes per
// token or group but round the scale by up to 2^-9, which turns the clean bound
// |x − deq| <= absmax / (2·qmax) into a slightly larger one; at the ranks we train (r <= 64)
// the per-group cost of fp32 is at most 4 bytes per 64 values.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "resbm/codec/concepts.hpp"
#include "resbm/core/dtype.hpp"
#include "resbm/core/error.hpp"

namespace resbm::codec::wire_detail {

// tokens·width·8 must fit in int64 (and so in size_t): larger is a corrupt size, not data.
inline int64_t checked_count(const char* wire, int64_t tokens, int64_t width) {
  RESBM_CHECK(tokens >= 0 && width >= 0,
              cat(wire, ": negative payload shape ", tokens, " tokens x ", width, " values"),
              "pass tokens >= 0 and width >= 0");
  RESBM_CHECK(tokens == 0 || width <= std::numeric_limits<int64_t>::max() / 8 / tokens,
              cat(wire, ": payload of ", tokens, " tokens x ", width, " values is too large"),
              "split the micro-batch");
  return tokens * width;
}

inline void put_u16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v & 0xffu);
  p[1] = std::byte(v >> 8);
}
inline uint16_t get_u16(const std::byte* p) { return uint16_t(uint16_t(p[0]) | uint16_t(p[1]) << 8); }

inline void put_f32(std::byte* p, float f) {
  const uint32_t u = float_bits(f);
  for (int k = 0; k < 4; ++k) p[k] = std::byte((u >> (8 * k)) & 0xffu);
}
inline float get_f32(const std::byte* p) {
  uint32_t u = 0;
  for (int k = 0; k < 4; ++k) u |= uint32_t(p[k]) << (8 * k);
  return bits_float(u);
}

[[noreturn]] inline void non_finite(const char* wire, int64_t index, int64_t width) {
  const int64_t token = width > 0 ? index / width : 0, col = width > 0 ? index % width : 0;
  fail(cat(wire, ": non-finite value at token ", token, " (column ", col, ")"),
       "the activations or gradients diverged: lower the learning rate, clip gradients, or "
       "check the input; NaN is never sent over the wire");
}

[[noreturn]] inline void corrupt(const char* wire, int64_t index, int64_t width) {
  const int64_t token = width > 0 ? index / width : 0;
  fail(cat(wire, ": payload decodes to a non-finite value at token ", token),
       "the payload is corrupt or was produced by a different wire policy; check both "
       "stages' codec configuration");
}

// max |x[i]| over [begin, end), checking finiteness; `width` only locates the token.
inline float absmax(const char* wire, const float* x, int64_t begin, int64_t end, int64_t width) {
  float m = 0;
  for (int64_t i = begin; i < end; ++i) {
    if (!std::isfinite(x[i])) non_finite(wire, i, width);
    m = std::fabs(x[i]) > m ? std::fabs(x[i]) : m;
  }
  return m;
}

// Symmetric quantisation to the integers [-qmax, qmax] with one fp32 scale = absmax/qmax
// per group, round to nearest (ties to even). Groups are [g·group, min((g+1)·group, count))
// of the flattened payload. Layout: ngroups fp32 scales, then the codes: one int8 per
// value (Bits = 8), or two per byte (Bits = 4), value 2i in the low nibble of byte i and
// 2i+1 in the high nibble, 4-bit two's complement, an odd count's last high nibble 0.
template <int Bits>
inline constexpr int kQmax = Bits == 8 ? 127 : 7;

template <int Bits>
size_t int_group_bytes(int64_t count, int64_t ngroups) {
  static_assert(Bits == 8 || Bits == 4, "integer wires are 8 or 4 bits");
  return size_t(ngroups) * 4 + (Bits == 8 ? size_t(count) : size_t((count + 1) / 2));
}

template <int Bits>
void encode_int_groups(const char* wire, const float* x, int64_t count, int64_t group, int64_t ngroups,
                       int64_t width, std::byte* out) {
  constexpr int qmax = kQmax<Bits>;
  std::byte* codes = out + 4 * ngroups;
  if constexpr (Bits == 4)
    if (count > 0) std::memset(codes, 0, size_t((count + 1) / 2));  // out may be null when empty
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t begin = g * group, end = begin + group < count ? begin + group : count;
    const float m = absmax(wire, x, begin, end, width);
    const float scale = m / float(qmax);
    put_f32(out + 4 * g, scale);
    for (int64_t i = begin; i < end; ++i) {
      // In double, so that x/scale cannot overflow when the scale is subnormal; a zero
      // group (scale 0) sends zeros, which decode to exact zeros rather than 0/0.
      double q = scale > 0 ? std::nearbyint(double(x[i]) / double(scale)) : 0.0;
      q = q > qmax ? qmax : (q < -qmax ? -qmax : q);
      const int v = int(q);
      if constexpr (Bits == 8) {
        codes[i] = std::byte(uint8_t(int8_t(v)));
      } else {
        const uint8_t nib = uint8_t(v) & 0x0fu;
        codes[i / 2] |= std::byte(i % 2 ? uint8_t(nib << 4) : nib);
      }
    }
  }
}

template <int Bits>
void decode_int_groups(const char* wire, const std::byte* in, int64_t count, int64_t group, int64_t ngroups,
                       int64_t width, float* y) {
  const std::byte* codes = in + 4 * ngroups;
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t begin = g * group, end = begin + group < count ? begin + group : count;
    const float scale = get_f32(in + 4 * g);
    if (!std::isfinite(scale)) corrupt(wire, begin, width);
    for (int64_t i = begin; i < end; ++i) {
      int v;
      if constexpr (Bits == 8) {
        v = int(int8_t(uint8_t(codes[i])));
      } else {
        const uint8_t b = uint8_t(codes[i / 2]);
        const uint8_t nib = i % 2 ? uint8_t(b >> 4) : uint8_t(b & 0x0fu);
        v = nib >= 8 ? int(nib) - 16 : int(nib);
      }
      y[i] = float(v) * scale;
    }
  }
}

}  // namespace resbm::codec::wire_detail
