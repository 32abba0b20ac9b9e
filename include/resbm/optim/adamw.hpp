#pragma once
// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"): Adam whose weight
// decay shrinks the parameters directly instead of being added to the gradient, so the
// decay is not rescaled by Adam's per-element step size. The update is PyTorch's
// torch.optim.AdamW, so runs can be checked against it.
//
// The optimizer may own every entry of an arena or only a subset (Muon hands it the
// entries it does not orthogonalise); state is kept only for the entries it owns.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/error.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/optim/optimizer.hpp"

namespace resbm::optim {

struct AdamWConfig {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};

inline void validate(const AdamWConfig& c) {
  RESBM_CHECK(std::isfinite(c.lr) && c.lr >= 0, cat("AdamW lr ", c.lr, " is not a finite value >= 0"),
              "pass a learning rate such as 1e-3");
  RESBM_CHECK(c.beta1 >= 0 && c.beta1 < 1, cat("AdamW beta1 ", c.beta1, " is outside [0, 1)"),
              "pass beta1 in [0, 1), e.g. 0.9");
  RESBM_CHECK(c.beta2 >= 0 && c.beta2 < 1, cat("AdamW beta2 ", c.beta2, " is outside [0, 1)"),
              "pass beta2 in [0, 1), e.g. 0.95");
  RESBM_CHECK(std::isfinite(c.eps) && c.eps > 0, cat("AdamW eps ", c.eps, " is not a finite value > 0"),
              "pass eps > 0, e.g. 1e-8");
  RESBM_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0,
              cat("AdamW weight_decay ", c.weight_decay, " is not a finite value >= 0"),
              "pass weight_decay >= 0, e.g. 0.1");
}

// Gains (norm weights) start at 1 and scale whole features: decaying them towards 0 only
// fights the loss, so they are left alone.
inline bool decays(ParamKind k) { return k != ParamKind::gain; }

inline void check_lr_scale(float lr_scale) {
  RESBM_CHECK(std::isfinite(lr_scale) && lr_scale >= 0,
              cat("learning-rate multiplier ", lr_scale, " is not a finite value >= 0"),
              "pass the schedule's multiplier (lr_multiplier) or 1");
}

// Every entry of `arena`, in order: what an AdamW over the whole arena steps.
inline std::vector<size_t> all_entries(const ParamArena<float>& arena) {
  std::vector<size_t> e(arena.infos().size());
  for (size_t i = 0; i < e.size(); ++i) e[i] = i;
  return e;
}

// Refuses an entry list (indices into arena.infos()) with an index out of range or one
// listed twice; `who` names the optimizer in the message (AdamW, CudaAdamW).
inline void check_entries(const ParamArena<float>& arena, const std::vector<size_t>& entries, const char* who) {
  std::vector<bool> seen(arena.infos().size(), false);
  for (size_t e : entries) {
    RESBM_CHECK(e < seen.size(), cat(who, " entry ", e, " is out of range (the arena has ", seen.size(), " entries)"),
                "pass indices into arena.infos()");
    RESBM_CHECK(!seen[e], cat(who, " entry ", e, " ('", arena.info(e).name, "') listed twice"),
                "list every entry once");
    seen[e] = true;
  }
}

class AdamW {
 public:
  // Every entry of `arena`; m and v are laid out exactly like the arena.
  AdamW(const ParamArena<float>& arena, AdamWConfig cfg = {}) : AdamW(arena, cfg, all_entries(arena)) {}

  // Only `entries` (indices into arena.infos()); the others are never touched.
  AdamW(const ParamArena<float>& arena, AdamWConfig cfg, std::vector<size_t> entries)
      : cfg_(cfg), entries_(std::move(entries)) {
    validate(cfg_);
    RESBM_CHECK(arena.allocated(), "AdamW built over an arena that is not allocated",
                "call arena.allocate() before building the optimizer");
    arena_size_ = arena.size();
    arena_entries_ = arena.infos().size();
    check_entries(arena, entries_, "AdamW");
    size_t total = 0;
    for (size_t e : entries_) {
      const ParamInfo& p = arena.info(e);
      offsets_.push_back(total);
      names_.push_back(p.name);
      shapes_.emplace_back(p.shape, p.rank);
      // Same 16-element alignment as the arena, so with every entry owned the state offsets
      // equal the parameter offsets and vector loops see the same alignment in both.
      for (size_t b = 0; b < p.numel; b += kChunk)
        chunks_.push_back({p.offset + b, total + b, std::min(kChunk, p.numel - b), decays(p.kind)});
      total += (p.numel + 15) / 16 * 16;
    }
    m_.resize(total);
    v_.resize(total);
  }

  void step(const Context& ctx, ParamArena<float>& arena, float lr_scale) {
    check_lr_scale(lr_scale);
    RESBM_CHECK(arena.allocated() && arena.size() == arena_size_ && arena.infos().size() == arena_entries_,
                "AdamW stepped with an arena other than the one it was built for",
                "build one optimizer per arena");
    // Bias correction in double: beta2^t for t in the thousands is lost to float rounding.
    const double t = double(steps_ + 1);
    const float b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
    const float lr = cfg_.lr * lr_scale;
    const float step_size = float(double(lr) / (1.0 - std::pow(double(b1), t)));
    const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(double(b2), t)));
    const float shrink = 1.0f - lr * cfg_.weight_decay;
    float* params = arena.params();
    const float* grads = arena.grads();
    float* m = m_.data();
    float* v = v_.data();
    parallel_for(ctx, int64_t(chunks_.size()), [&](int64_t c) {
      const Chunk& ch = chunks_[size_t(c)];
      float* p = params + ch.param;
      const float* g = grads + ch.param;
      float* mc = m + ch.state;
      float* vc = v + ch.state;
      const float keep = ch.decay ? shrink : 1.0f;
      for (size_t i = 0; i < ch.n; ++i) {
        const float gi = g[i];
        mc[i] = b1 * mc[i] + (1.0f - b1) * gi;
        vc[i] = b2 * vc[i] + (1.0f - b2) * gi * gi;
        const float denom = std::sqrt(vc[i]) / bc2_sqrt + eps;
        p[i] = p[i] * keep - step_size * (mc[i] / denom);
      }
    });
    ++steps_;
  }

  int64_t steps() const { return steps_; }
  void set_steps(int64_t n) {
    RESBM_CHECK(n >= 0, cat("AdamW step count ", n, " is negative"), "pass the saved step count");
    steps_ = n;
  }

  // "adamw.m.<name>" and "adamw.v.<name>" for every owned entry, shaped like the parameter.
  NamedState state() {
    NamedState out;
    out.reserve(2 * entries_.size());
    for (size_t k = 0; k < entries_.size(); ++k) out.emplace_back("adamw.m." + names_[k], view(m_, k));
    for (size_t k = 0; k < entries_.size(); ++k) out.emplace_back("adamw.v." + names_[k], view(v_, k));
    return out;
  }

  const AdamWConfig& config() const { return cfg_; }
  const std::vector<size_t>& entries() const { return entries_; }

 private:
  // Fixed-size pieces of one entry: the unit of parallel work, so an element is always
  // updated by the same loop iteration whatever the thread count.
  static constexpr size_t kChunk = 1 << 14;
  struct Chunk {
    size_t param, state, n;
    bool decay;
  };

  Tensor<float> view(Buffer<float>& b, size_t k) {
    Tensor<float> t;
    t.data = b.data() + offsets_[k];
    t.shape = shapes_[k].first;
    t.rank = shapes_[k].second;
    return t;
  }

  AdamWConfig cfg_;
  std::vector<size_t> entries_;
  std::vector<size_t> offsets_;
  // Copied from the arena so state() can name and shape its views without it.
  std::vector<std::string> names_;
  std::vector<std::pair<Shape, int>> shapes_;
  std::vector<Chunk> chunks_;
  Buffer<float> m_, v_;
  int64_t steps_ = 0;
  size_t arena_size_ = 0, arena_entries_ = 0;
};

static_assert(Optimizer<AdamW>);

}  // namespace resbm::optim
