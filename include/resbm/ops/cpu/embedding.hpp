#pragma once
// Token embedding: a row gather forward, a scatter-add backward. Token ids are checked
// before any thread starts, so a bad id is an Error naming it, never a wild read.
#include <algorithm>
#include <cstdint>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::ops {

namespace detail {
inline void check_tokens(Tensor<const int32_t> tokens, int64_t V) {
  for (int64_t n = 0; n < tokens.numel(); ++n)
    RESBM_CHECK(tokens[n] >= 0 && tokens[n] < V,
                cat("token id ", tokens[n], " at position ", n, " is out of range [0, ", V, ")"),
                "tokenize with the model's vocabulary, or raise vocab_size");
}
}  // namespace detail

// out[n,:] = table[tokens[n],:]
template <class T>
void embedding_forward(const Context& ctx, Tensor<T> out, Tensor<const int32_t> tokens,
                       Tensor<const T> table) {
  const int64_t N = tokens.size(0), V = table.size(0), C = table.size(1);
  expect_shape(tokens, {N}, "embedding tokens");
  expect_shape(table, {V, C}, "embedding table");
  expect_shape(out, {N, C}, "embedding output");
  detail::check_tokens(tokens, V);
  parallel_for(ctx, N, [&](int64_t n) {
    const T* src = table.data + int64_t(tokens[n]) * C;
    T* dst = out.data + n * C;
    for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
  });
}

// dtable[tokens[n],:] += dout[n,:]. Two positions may share a token, so rows cannot be
// split across threads without a race; columns can. Each thread owns a fixed block of
// columns and walks all N positions in order, so every sum has the same order on any
// thread count. The block width is fixed (not derived from ctx.threads) so that each
// column always runs through the same (vector or scalar) code path too.
template <class T>
void embedding_backward(const Context& ctx, Tensor<T> dtable, Tensor<const int32_t> tokens,
                        Tensor<const T> dout) {
  const int64_t N = tokens.size(0), V = dtable.size(0), C = dtable.size(1);
  expect_shape(tokens, {N}, "embedding tokens");
  expect_shape(dtable, {V, C}, "embedding table gradient");
  expect_shape(dout, {N, C}, "embedding output gradient");
  detail::check_tokens(tokens, V);
  constexpr int64_t kCols = 64;
  parallel_for(ctx, (C + kCols - 1) / kCols, [&](int64_t b) {
    const int64_t c0 = b * kCols, c1 = std::min(C, c0 + kCols);
    for (int64_t n = 0; n < N; ++n) {
      const T* src = dout.data + n * C;
      T* dst = dtable.data + int64_t(tokens[n]) * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  });
}

}  // namespace resbm::ops
