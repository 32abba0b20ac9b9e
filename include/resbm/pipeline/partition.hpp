#pragma once
// Which layers each of S pipeline stages holds: contiguous, as equal as possible, the
// earlier stages taking the remainder; stage 0 owns the embedding, stage S-1 the head.
#include <vector>

#include "resbm/core/error.hpp"
#include "resbm/nn/llama.hpp"

namespace resbm::pipeline {

inline std::vector<nn::LayerRange> partition(int n_layers, int stages) {
  RESBM_CHECK(stages >= 1, cat("--stages ", stages, " must be at least 1"), "pass --stages 1 or more");
  RESBM_CHECK(stages <= n_layers, cat("--stages ", stages, " exceeds the model's ", n_layers, " layers"),
              "give every stage at least one layer: --stages <= --layers");
  std::vector<nn::LayerRange> out;
  int first = 0;
  for (int s = 0; s < stages; ++s) {
    const int n = n_layers / stages + (s < n_layers % stages ? 1 : 0);
    out.push_back({first, first + n, s == 0, s == stages - 1});
    first += n;
  }
  return out;
}

}  // namespace resbm::pipeline
