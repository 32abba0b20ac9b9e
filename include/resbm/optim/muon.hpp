#pragma once
// Muon (Keller Jordan et al., 2024): SGD momentum whose update for each hidden 2-D weight
// is replaced by the nearest semi-orthogonal matrix, computed with a few Newton–Schulz
// iterations. Orthogonalising equalises the update's singular values, so directions the
// gradient barely visits still move. Embedding, head and gains keep AdamW: their rows are
// looked up or read out one token at a time and do not behave as linear maps of the
// residual stream.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/error.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/gemm.hpp"
#include "resbm/optim/adamw.hpp"
#include "resbm/optim/optimizer.hpp"

namespace resbm::optim {

struct MuonConfig {
  float lr = 0.02f, momentum = 0.95f;
  bool nesterov = true;
  int ns_steps = 5;
  float weight_decay = 0.0f;
  AdamWConfig adamw;
};

inline void validate(const MuonConfig& c) {
  RESBM_CHECK(std::isfinite(c.lr) && c.lr >= 0, cat("Muon lr ", c.lr, " is not a finite value >= 0"),
              "pass a learning rate such as 0.02");
  RESBM_CHECK(c.momentum >= 0 && c.momentum < 1, cat("Muon momentum ", c.momentum, " is outside [0, 1)"),
              "pass momentum in [0, 1), e.g. 0.95");
  RESBM_CHECK(c.ns_steps >= 1, cat("Muon ns_steps ", c.ns_steps, " is below 1"),
              "pass ns_steps >= 1, e.g. 5");
  RESBM_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0,
              cat("Muon weight_decay ", c.weight_decay, " is not a finite value >= 0"),
              "pass weight_decay >= 0, e.g. 0");
  validate(c.adamw);
}

// c once validate(c) passed: for a member initialiser, so that a bad config is named before
// the optimizer allocates anything.
inline const MuonConfig& validated(const MuonConfig& c) {
  validate(c);
  return c;
}

// The entries Muon leaves to its AdamW half: all but the hidden matrices.
inline std::vector<size_t> adamw_entries(const ParamArena<float>& arena) {
  std::vector<size_t> e;
  for (size_t i = 0; i < arena.infos().size(); ++i)
    if (arena.info(i).kind != ParamKind::matrix) e.push_back(i);
  return e;
}

// Working memory of newton_schulz5, sized once for the largest matrix so a training step
// never allocates.
template <class T>
class NewtonSchulzScratch {
 public:
  NewtonSchulzScratch() = default;
  NewtonSchulzScratch(int64_t rows, int64_t cols) { reserve(rows, cols); }

  // Elements needed for a rows x cols matrix: two iterates X (r x c) and two r x r
  // products, r = min(rows, cols), c = max(rows, cols).
  static size_t need(int64_t rows, int64_t cols) {
    const size_t r = size_t(std::min(rows, cols)), c = size_t(std::max(rows, cols));
    return 2 * r * c + 2 * r * r;
  }
  static size_t chunks(int64_t rows, int64_t cols) {
    return (size_t(rows) * size_t(cols) + kNormChunk - 1) / kNormChunk;
  }

  // Grows (never shrinks) to fit a rows x cols matrix; contents are not kept.
  void reserve(int64_t rows, int64_t cols) {
    RESBM_CHECK(rows >= 0 && cols >= 0, cat("Newton-Schulz matrix ", rows, " x ", cols, " is negative"),
                "pass sizes >= 0");
    if (need(rows, cols) > buf_.size()) buf_.resize(need(rows, cols));
    if (chunks(rows, cols) > partials_.size()) partials_.resize(chunks(rows, cols));
  }
  bool fits(int64_t rows, int64_t cols) const {
    return need(rows, cols) <= buf_.size() && chunks(rows, cols) <= partials_.size();
  }

  // The squared norm is summed in fixed pieces and the pieces added in order, so it does
  // not depend on the thread count.
  static constexpr size_t kNormChunk = 1 << 14;

  T* data() { return buf_.data(); }
  double* partials() { return partials_.data(); }

 private:
  Buffer<T> buf_;
  std::vector<double> partials_;
};

// out = NewtonSchulz5(in) for a row-major rows x cols matrix: X = in / (‖in‖_F + 1e-7),
// transposed to be wide, then `steps` times A = X·Xᵀ; B = b·A + c·A·A; X = a·X + B·X with
// (a, b, c) = (3.4445, -4.7750, 2.0315), transposed back. The quintic's coefficients are
// tuned for speed, not convergence: the singular values land roughly in [0.7, 1.2], not
// at exactly 1. `in` may equal `out`. T is float or double.
template <class T>
void newton_schulz5(const Context& ctx, const T* in, T* out, int64_t rows, int64_t cols, int steps,
                    NewtonSchulzScratch<T>& scratch) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "newton_schulz5 is float or double");
  RESBM_CHECK(rows >= 0 && cols >= 0, cat("Newton-Schulz matrix ", rows, " x ", cols, " is negative"),
              "pass sizes >= 0");
  RESBM_CHECK(steps >= 0, cat("Newton-Schulz step count ", steps, " is negative"), "pass steps >= 0, e.g. 5");
  RESBM_CHECK(scratch.fits(rows, cols),
              cat("Newton-Schulz scratch is too small for a ", rows, " x ", cols, " matrix"),
              "reserve(rows, cols) the scratch for the largest matrix first");
  const int64_t n = rows * cols;
  if (n == 0) return;

  const int64_t nchunks = int64_t(NewtonSchulzScratch<T>::chunks(rows, cols));
  const int64_t chunk = int64_t(NewtonSchulzScratch<T>::kNormChunk);
  double* partials = scratch.partials();
  parallel_for(ctx, nchunks, [&](int64_t k) {
    const int64_t b = k * chunk, e = std::min(n, b + chunk);
    double s = 0;
    for (int64_t i = b; i < e; ++i) s += double(in[i]) * double(in[i]);
    partials[k] = s;
  });
  double sq = 0;
  for (int64_t k = 0; k < nchunks; ++k) sq += partials[k];
  const T scale = T(1.0 / (std::sqrt(sq) + 1e-7));

  // Work on the wide orientation so X·Xᵀ is the smaller Gram matrix.
  const bool tall = rows > cols;
  const int64_t r = tall ? cols : rows, c = tall ? rows : cols;
  T* X = scratch.data();
  T* Y = X + r * c;
  T* A = Y + r * c;
  T* B = A + r * r;
  if (tall)
    parallel_for(ctx, r, [&](int64_t i) {
      for (int64_t j = 0; j < c; ++j) X[i * c + j] = in[j * r + i] * scale;
    });
  else
    parallel_for(ctx, r, [&](int64_t i) {
      for (int64_t j = 0; j < c; ++j) X[i * c + j] = in[i * c + j] * scale;
    });

  const T ca = T(3.4445), cb = T(-4.7750), cc = T(2.0315);
  for (int it = 0; it < steps; ++it) {
    ops::gemm<T>(ctx, false, true, r, r, c, T(1), X, c, X, c, T(0), A, r);
    parallel_for(ctx, r, [&](int64_t i) {
      for (int64_t j = 0; j < r; ++j) B[i * r + j] = cb * A[i * r + j];
    });
    ops::gemm<T>(ctx, false, false, r, r, r, cc, A, r, A, r, T(1), B, r);
    parallel_for(ctx, r, [&](int64_t i) {
      for (int64_t j = 0; j < c; ++j) Y[i * c + j] = ca * X[i * c + j];
    });
    ops::gemm<T>(ctx, false, false, r, c, r, T(1), B, r, X, c, T(1), Y, c);
    std::swap(X, Y);
  }

  if (tall)
    parallel_for(ctx, c, [&](int64_t i) {
      for (int64_t j = 0; j < r; ++j) out[i * r + j] = X[j * c + i];
    });
  else
    parallel_for(ctx, r, [&](int64_t i) {
      for (int64_t j = 0; j < c; ++j) out[i * c + j] = X[i * c + j];
    });
}

class Muon {
 public:
  Muon(const ParamArena<float>& arena, MuonConfig cfg = {})
      : cfg_(validated(cfg)), adamw_(arena, cfg_.adamw, adamw_entries(arena)) {
    size_t total = 0, largest = 0;
    for (size_t e = 0; e < arena.infos().size(); ++e) {
      const ParamInfo& p = arena.info(e);
      if (p.kind != ParamKind::matrix) continue;
      RESBM_CHECK(p.rank == 2,
                  cat("matrix parameter '", p.name, "' has shape ", shape_str(p.shape, p.rank),
                      ", not 2 dimensions"),
                  "declare hidden weights as [out, in], or give the entry another ParamKind");
      matrices_.push_back({total, p.offset, p.shape[0], p.shape[1]});
      names_.push_back(p.name);
      total += (p.numel + 15) / 16 * 16;
      largest = std::max(largest, p.numel);
      scratch_.reserve(p.shape[0], p.shape[1]);
    }
    momentum_.resize(total);
    update_.resize(largest);
    arena_size_ = arena.size();
    arena_entries_ = arena.infos().size();
  }

  void step(const Context& ctx, ParamArena<float>& arena, float lr_scale) {
    check_lr_scale(lr_scale);
    RESBM_CHECK(arena.allocated() && arena.size() == arena_size_ && arena.infos().size() == arena_entries_,
                "Muon stepped with an arena other than the one it was built for",
                "build one optimizer per arena");
    const float mu = cfg_.momentum;
    const float lr = cfg_.lr * lr_scale;
    const float shrink = 1.0f - lr * cfg_.weight_decay;
    const bool nesterov = cfg_.nesterov;
    float* u = update_.data();
    for (const Matrix& mx : matrices_) {
      const int64_t n = mx.rows * mx.cols;
      const int64_t nchunks = (n + kChunk - 1) / kChunk;
      float* buf = momentum_.data() + mx.state;
      const float* g = arena.grads() + mx.param;
      parallel_for(ctx, nchunks, [&](int64_t k) {
        const int64_t e = std::min(n, (k + 1) * kChunk);
        for (int64_t i = k * kChunk; i < e; ++i) {
          buf[i] = mu * buf[i] + g[i];
          u[i] = nesterov ? g[i] + mu * buf[i] : buf[i];
        }
      });
      newton_schulz5<float>(ctx, u, u, mx.rows, mx.cols, cfg_.ns_steps, scratch_);
      // O has unit singular values, so its RMS entry is 1/sqrt(cols) when wide but
      // 1/sqrt(rows) when tall; the factor brings tall matrices to 1/sqrt(cols) (their
      // fan-in) too, so one lr suits every shape.
      const float alpha = lr * std::sqrt(std::max(1.0f, float(mx.rows) / float(mx.cols)));
      float* p = arena.params() + mx.param;
      parallel_for(ctx, nchunks, [&](int64_t k) {
        const int64_t e = std::min(n, (k + 1) * kChunk);
        for (int64_t i = k * kChunk; i < e; ++i) p[i] = p[i] * shrink - alpha * u[i];
      });
    }
    adamw_.step(ctx, arena, lr_scale);
    ++steps_;
  }

  int64_t steps() const { return steps_; }
  // The AdamW half follows, so its bias correction resumes at the same step.
  void set_steps(int64_t n) {
    RESBM_CHECK(n >= 0, cat("Muon step count ", n, " is negative"), "pass the saved step count");
    steps_ = n;
    adamw_.set_steps(n);
  }

  // "muon.momentum.<name>" for every matrix entry, then the AdamW state of the others.
  NamedState state() {
    NamedState out;
    for (size_t k = 0; k < matrices_.size(); ++k) {
      Tensor<float> t(momentum_.data() + matrices_[k].state, {matrices_[k].rows, matrices_[k].cols});
      out.emplace_back("muon.momentum." + names_[k], t);
    }
    for (auto& s : adamw_.state()) out.push_back(std::move(s));
    return out;
  }

  const MuonConfig& config() const { return cfg_; }
  const AdamW& adamw() const { return adamw_; }

 private:
  // Fixed pieces for elementwise work, so results do not depend on the thread count.
  static constexpr int64_t kChunk = 1 << 14;
  struct Matrix {
    size_t state, param;
    int64_t rows, cols;
  };

  MuonConfig cfg_;
  AdamW adamw_;
  std::vector<Matrix> matrices_;
  std::vector<std::string> names_;
  Buffer<float> momentum_, update_;
  NewtonSchulzScratch<float> scratch_;
  int64_t steps_ = 0;
  size_t arena_size_ = 0, arena_entries_ = 0;
};

static_assert(Optimizer<Muon>);

}  // namespace resbm::optim
