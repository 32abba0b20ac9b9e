#pragma once
// Global gradient-norm clipping: one norm over every gradient of the arena, so a spike
// in any parameter shrinks the whole step and keeps its direction.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/error.hpp"

namespace resbm::optim {

// The factor a gradient of joint norm `norm` is scaled by: max_norm / (norm + 1e-6) above
// max_norm (PyTorch's clip_grad_norm_; the 1e-6 keeps the clipped norm just under max_norm),
// else 1. max_norm <= 0 disables clipping. A non-finite norm gives 1: scaling would turn
// infinities into NaNs and hide which gradients overflowed; the caller skips or stops.
// A pipeline computes `norm` across stages and each stage applies this same factor.
inline double clip_coefficient(double norm, double max_norm) {
  return max_norm > 0 && std::isfinite(norm) && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

// Every gradient of the arena times coef (nothing to do for 1).
template <class T>
void scale_grads(const Context& ctx, ParamArena<T>& arena, double coef) {
  if (coef == 1.0) return;
  const T c = T(coef);
  T* g = arena.grads();
  constexpr int64_t kChunk = 1 << 14;
  const int64_t n = int64_t(arena.size());
  parallel_for(ctx, (n + kChunk - 1) / kChunk, [&](int64_t k) {
    for (int64_t i = k * kChunk, e = std::min(n, i + kChunk); i < e; ++i) g[i] *= c;
  });
}

// Returns the L2 norm of all gradients before clipping, and scales them by
// clip_coefficient(norm, max_norm). max_norm <= 0 only measures.
template <class T>
double clip_grad_norm(const Context& ctx, ParamArena<T>& arena, double max_norm) {
  RESBM_CHECK(arena.allocated(), "gradient norm of an arena that is not allocated",
              "call arena.allocate() first");
  RESBM_CHECK(!std::isnan(max_norm), "max_norm is NaN", "pass a positive max_norm, or <= 0 to disable clipping");
  // Fixed pieces summed in double, then added in order: the norm is the same for every
  // thread count, so runs with different --threads stay bitwise identical.
  constexpr size_t kChunk = 1 << 14;
  struct Piece {
    size_t begin, n;
  };
  std::vector<Piece> pieces;
  for (const ParamInfo& p : arena.infos())
    for (size_t b = 0; b < p.numel; b += kChunk) pieces.push_back({p.offset + b, std::min(kChunk, p.numel - b)});
  std::vector<double> partial(pieces.size());
  T* grads = arena.grads();
  parallel_for(ctx, int64_t(pieces.size()), [&](int64_t k) {
    const T* g = grads + pieces[size_t(k)].begin;
    double s = 0;
    for (size_t i = 0; i < pieces[size_t(k)].n; ++i) s += double(g[i]) * double(g[i]);
    partial[size_t(k)] = s;
  });
  double sq = 0;
  for (double s : partial) sq += s;
  const double norm = std::sqrt(sq);
  scale_grads(ctx, arena, clip_coefficient(norm, max_norm));
  return norm;
}

}  // namespace resbm::optim
