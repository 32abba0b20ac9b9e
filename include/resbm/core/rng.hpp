#pragma once
// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so the same (seed,
// stream, index) gives the same number on the CPU and on the GPU, in any order, on any
// number of threads. Weights are drawn as normal(seed, stream = parameter id, index).
#include <cmath>
#include <cstdint>

#include "resbm/core/device.hpp"

namespace resbm {

struct Philox {
  struct U4 {
    uint32_t v[4];
  };

  RESBM_HD static U4 block(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
    uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
    uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
    uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
    for (int r = 0; r < 10; ++r) {
      uint64_t p0 = uint64_t(0xD2511F53u) * c0;
      uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
      uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
      uint32_t n1 = uint32_t(p1);
      uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
      uint32_t n3 = uint32_t(p0);
      c0 = n0; c1 = n1; c2 = n2; c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return U4{{c0, c1, c2, c3}};
  }

  // Uniform in (0, 1), 24 bits of mantissa, never exactly 0 or 1.
  RESBM_HD static float uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    U4 r = block(seed, stream, index);
    return (float(r.v[0] >> 8) + 0.5f) * (1.0f / 16777216.0f);
  }

  // Standard normal by Box–Muller over two words of one block.
  RESBM_HD static float normal(uint64_t seed, uint64_t stream, uint64_t index) {
    U4 r = block(seed, stream, index);
    float u1 = (float(r.v[0] >> 8) + 0.5f) * (1.0f / 16777216.0f);
    float u2 = (float(r.v[1] >> 8) + 0.5f) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
  }

  // A 64-bit integer, e.g. for sampling batch offsets.
  RESBM_HD static uint64_t bits64(uint64_t seed, uint64_t stream, uint64_t index) {
    U4 r = block(seed, stream, index);
    return (uint64_t(r.v[1]) << 32) | r.v[0];
  }
};

}  // namespace resbm
