#pragma once
// Softmax cross entropy over the vocabulary. Each row is shifted by its max before exp, so
// large logits cannot overflow: loss = log Σ exp(l − max) + max − l[target].
// The backward pass recomputes the softmax from the logits instead of storing an [N,V]
// probability tensor: the vocabulary dimension is the largest activation in the model.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::ops {

namespace detail {
inline void check_targets(Tensor<const int32_t> targets, int64_t V) {
  for (int64_t n = 0; n < targets.numel(); ++n)
    RESBM_CHECK(targets[n] >= 0 && targets[n] < V,
                cat("target id ", targets[n], " at position ", n, " is out of range [0, ", V, ")"),
                "tokenize with the model's vocabulary, or raise vocab_size");
}

// Row max and Σ exp(l − max); the simd reductions have a fixed order, so every row gives
// the same bits on any thread count.
template <class T>
void softmax_stats(const T* l, int64_t V, T& max, T& sum) {
  T m = l[0];
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = std::max(m, l[v]);
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) s += std::exp(l[v] - m);
  max = m;
  sum = s;
}
}  // namespace detail

// losses[n] = −log softmax(logits[n])[targets[n]]; returns their mean, summed in double in
// row order so it does not depend on the thread count.
template <class T>
T cross_entropy_forward(const Context& ctx, Tensor<T> losses, Tensor<const T> logits,
                        Tensor<const int32_t> targets) {
  const int64_t N = logits.size(0), V = logits.size(1);
  expect_shape(logits, {N, V}, "cross entropy logits");
  expect_shape(targets, {N}, "cross entropy targets");
  expect_shape(losses, {N}, "cross entropy losses");
  RESBM_CHECK(V > 0 || N == 0, "cross entropy over an empty vocabulary", "pass logits with V >= 1");
  detail::check_targets(targets, V);
  parallel_for(ctx, N, [&](int64_t n) {
    const T* l = logits.data + n * V;
    T max, sum;
    detail::softmax_stats(l, V, max, sum);
    // The target's shift is taken first: it is exact for nearby values, and log(sum) is
    // then added to a small number instead of to the (possibly large) max.
    losses.data[n] = std::log(sum) - (l[targets[n]] - max);
  });
  double total = 0;
  for (int64_t n = 0; n < N; ++n) total += double(losses.data[n]);
  return N ? T(total / double(N)) : T(0);
}

// dlogits += scale · (softmax(logits) − onehot(targets)). scale = 1/N gives the gradient of
// the mean.
template <class T>
void cross_entropy_backward(const Context& ctx, Tensor<T> dlogits, Tensor<const T> logits,
                            Tensor<const int32_t> targets, T scale) {
  const int64_t N = logits.size(0), V = logits.size(1);
  expect_shape(logits, {N, V}, "cross entropy logits");
  expect_shape(targets, {N}, "cross entropy targets");
  expect_shape(dlogits, {N, V}, "cross entropy logits gradient");
  RESBM_CHECK(V > 0 || N == 0, "cross entropy over an empty vocabulary", "pass logits with V >= 1");
  detail::check_targets(targets, V);
  parallel_for(ctx, N, [&](int64_t n) {
    const T* l = logits.data + n * V;
    T* dl = dlogits.data + n * V;
    T max, sum;
    detail::softmax_stats(l, V, max, sum);
    const T k = scale / sum;
    for (int64_t v = 0; v < V; ++v) dl[v] += std::exp(l[v] - max) * k;
    dl[targets[n]] -= scale;
  });
}

}  // namespace resbm::ops
