#pragma once
// A small model and a random corpus shared by the pipeline tests.
#include <cstdint>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/nn/config.hpp"

namespace resbm::testing {

inline nn::LlamaConfig small_model(int vocab) {
  nn::LlamaConfig c;
  c.vocab = vocab;
  c.d_model = 32;
  c.n_layers = 4;
  c.n_heads = 2;
  c.seq_len = 16;
  c.ffn = 48;
  return c;
}

inline std::vector<int32_t> random_corpus(int vocab, size_t n, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(Philox::bits64(seed, 0, i) % uint64_t(vocab));
  return t;
}

}  // namespace resbm::testing
