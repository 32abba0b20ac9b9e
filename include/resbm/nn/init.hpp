#pragma once
// Parameter initialisation from Philox: the stream of a parameter is a hash of its name,
// so a pipeline stage that holds blocks 4..7 draws exactly the weights that the whole
// model draws for them, on any backend.
#include <cstdint>
#include <string_view>

#include "resbm/core/arena.hpp"
#include "resbm/core/rng.hpp"

namespace resbm::nn {

inline uint64_t name_stream(std::string_view name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

template <class T>
void init_normal(ParamArena<T>& a, size_t index, uint64_t seed, T std) {
  auto t = a.param(index);
  const uint64_t stream = name_stream(a.info(index).name);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = T(Philox::normal(seed, stream, uint64_t(i))) * std;
}

template <class T>
void fill_constant(Tensor<T> t, T value) {
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = value;
}

}  // namespace resbm::nn
