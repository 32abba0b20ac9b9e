#pragma once
// The learning-rate schedule as a multiplier of the configured rate, so every optimizer
// (and every parameter group inside Muon) follows the same curve from one number.
#include <cmath>
#include <cstdint>
#include <numbers>

#include "resbm/core/error.hpp"

namespace resbm::optim {

// Linear warmup (step+1)/warmup over steps [0, warmup) — step 0 already moves, and step
// warmup-1 reaches 1 — then cosine decay from 1 at `warmup` to `min_ratio` at `total`,
// held at min_ratio after it.
inline float lr_multiplier(int64_t step, int64_t warmup, int64_t total, float min_ratio = 0.1f) {
  RESBM_CHECK(step >= 0, cat("schedule step ", step, " is negative"), "pass steps counted from 0");
  RESBM_CHECK(total > 0, cat("schedule total ", total, " is not positive"), "pass the run's step count");
  RESBM_CHECK(warmup >= 0 && warmup <= total,
              cat("warmup ", warmup, " is outside [0, total = ", total, "]"),
              "pass a warmup of at most the run's step count");
  RESBM_CHECK(min_ratio >= 0 && min_ratio <= 1, cat("min_ratio ", min_ratio, " is outside [0, 1]"),
              "pass the final fraction of the peak rate, e.g. 0.1");
  if (step < warmup) return float(double(step + 1) / double(warmup));
  if (step >= total) return min_ratio;
  const double progress = double(step - warmup) / double(total - warmup);
  const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  return float(double(min_ratio) + (1.0 - double(min_ratio)) * cosine);
}

}  // namespace resbm::optim
