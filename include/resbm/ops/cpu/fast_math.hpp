#pragma once
// Vectorisable float exp and sigmoid for the elementwise hot loops (softmax, SwiGLU):
// glibc's expf is a scalar call the compiler cannot vectorise, and at training shapes the
// exps cost a third of an attention forward and most of a SwiGLU pass. Double keeps libm
// (the gradient checks run in double).
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <bit>

namespace resbm::ops {

// exp for x <= 0 (softmax after max subtraction), written so the compiler vectorises the
// loops that call it: glibc's expf is a scalar call, and at T=256 the exps cost as much as a
// third of the attention forward. Cephes' polynomial after a Cody–Waite reduction, ≤ 2 ulp
// on [-87, 0]; below -87 the result is clamped to ~1.6e-38 rather than flushed, which no
// normalised softmax row can tell apart from 0. A NaN or infinite x gives NaN.
//
// Every step is plain arithmetic, an integer min or a bit_cast, because GCC (without
// -fno-trapping-math, which a header cannot impose on its includer) turns a float clamp or
// float-to-int conversion here into control flow and then vectorises nothing.
inline float exp_nonpositive(float x) {
  const float x0 = x;
  // For x <= 0 the bit patterns grow with |x|: an unsigned min clamps x at -87.
  x = std::bit_cast<float>(std::min(std::bit_cast<uint32_t>(x), 0xC2AE0000u));
  const float t = x * 1.44269504088896341f;
  // Round to nearest by adding 1.5·2^23: n lands in the low mantissa bits of `shifted`.
  const float shifted = t + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const float scale = std::bit_cast<float>((std::bit_cast<int32_t>(shifted) - 0x4B400000 + 127) << 23);
  // + x0·0: exactly y·scale for finite x, NaN for NaN or ±inf (the clamp alone would turn a
  // negative NaN into exp(-87) and hide it).
  return y * scale + x0 * 0.0f;
}

// sigmoid(x) from exp of a non-positive argument only: e = exp(-|x|) never overflows, and
// 1/(1+e) or e/(1+e) picks the side. A select, not a branch, so loops stay vectorised.
inline float sigmoid(float x) {
  const float e = exp_nonpositive(-std::fabs(x));
  // Select an operand, not a result: a select between two products is control flow that
  // GCC refuses to vectorise (the untaken product could trap).
  return (x < 0.0f ? e : 1.0f) / (1.0f + e);
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace resbm::ops
