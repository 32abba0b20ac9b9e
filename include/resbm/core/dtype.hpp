#pragma once
// Scalar types of the wire and of GPU compute. bf16 rounds to nearest even; NaN stays NaN.
#include <cstdint>
#include <cstring>

#include "resbm/core/device.hpp"

namespace resbm {

RESBM_HD inline uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

RESBM_HD inline float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Storage-only bf16: arithmetic happens in fp32.
struct bf16 {
  uint16_t bits = 0;

  RESBM_HD static bf16 from_bits(uint16_t b) {
    bf16 h;
    h.bits = b;
    return h;
  }
  RESBM_HD static bf16 from_float(float f) {
    uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return from_bits(uint16_t((u >> 16) | 0x40));  // quiet NaN
    uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return from_bits(uint16_t((u + rounding) >> 16));
  }
  RESBM_HD float to_float() const { return bits_float(uint32_t(bits) << 16); }
  RESBM_HD explicit operator float() const { return to_float(); }
};
static_assert(sizeof(bf16) == 2);

RESBM_HD inline float round_bf16(float f) { return bf16::from_float(f).to_float(); }

}  // namespace resbm
