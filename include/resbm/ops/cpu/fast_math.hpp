#pragma once
// Vectorisable float exp and sigmoid for the elementwise hot loops (softmax, SwiGLU):
// glibc's expf is a scalar call the compiler cannot vectorise, and at training shapes the
// exps cost a third of an attention forward and most of a SwiGLU pass. Double keeps libm
// (the gradient checks run in double).
#include <cmath>
#include <cstdint>
#include <cstring>

namespace resbm::ops {

// exp for x <= 0 (softmax after max subtraction), written so the compiler vectorises the
// whole softmax row: glibc's expf is a scalar call, and at T=256 the exps cost as much as a
// third of the forward. Cephes' polynomial after a Cody–Waite reduction, ≤ 2 ulp on
// [-87, 0]; below -87 the result is clamped to ~1.6e-38 rather than flushed, which no
// normalised softmax row can tell apart from 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;
  // Round to nearest by the 1.5·2^23 trick: branch-free and vectorisable, unlike nearbyint.
  const float n = (t + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// sigmoid(x) from exp of a non-positive argument only: e = exp(-|x|) never overflows, and
// 1/(1+e) or e/(1+e) picks the side. A select, not a branch, so loops stay vectorised.
inline float sigmoid(float x) {
  const float e = exp_nonpositive(x < 0.0f ? x : -x);
  const float r = 1.0f / (1.0f + e);
  return x < 0.0f ? e * r : r;
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace resbm::ops
