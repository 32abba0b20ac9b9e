#pragma once
// optim::AdamW on the GPU over flat fp32 arrays in a ParamArena layout (a CudaLlama slice,
// a codec half): the same update, the same decoupled decay (none for gains), fp32 m and v
// in the arena layout; refreshes the bf16 copy of the weights. Entries are grouped into
// runs of equal decay, one launch per run (padding between entries stays 0: zero gradient,
// zero state, zero weight). Built over some entries only (CudaMuon's non-matrix ones), it
// keeps state for those alone and never touches the others.
#include <algorithm>
#include <concepts>
#include <cstdint>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/ops/cuda/adamw.cuh"
#include "resbm/optim/adamw.hpp"

namespace resbm::optim {

// What CudaAdamW steps: fp32 masters and gradients and their bf16 copy, size() elements
// each, laid out as layout() says.
template <class P>
concept CudaParamArrays = requires(P& p, const P& cp) {
  { cp.layout() } -> std::convertible_to<const ParamArena<float>&>;
  { cp.size() } -> std::convertible_to<size_t>;
  { p.params() } -> std::same_as<float*>;
  { p.params_bf16() } -> std::same_as<bf16*>;
  { p.grads() } -> std::same_as<float*>;
};

class CudaAdamW {
 public:
  // Every entry of arrays.layout().
  template <CudaParamArrays P>
  CudaAdamW(CudaContext& ctx, const P& arrays, AdamWConfig cfg = {})
      : CudaAdamW(ctx, arrays, cfg, all_entries(arrays.layout())) {}

  // Only `entries` (indices into arrays.layout().infos()); m and v hold those alone.
  template <CudaParamArrays P>
  CudaAdamW(CudaContext& ctx, const P& arrays, AdamWConfig cfg, std::vector<size_t> entries)
      : ctx_(&ctx), cfg_(cfg), n_(arrays.size()) {
    validate(cfg_);
    const ParamArena<float>& layout = arrays.layout();
    check_entries(layout, entries, "CudaAdamW");
    std::sort(entries.begin(), entries.end(),
              [&](size_t a, size_t b) { return layout.info(a).offset < layout.info(b).offset; });
    size_t state = 0;
    for (size_t e : entries) {
      const ParamInfo& p = layout.info(e);
      const bool decay = decays(p.kind);
      const size_t len = (p.numel + 15) / 16 * 16;
      if (!runs_.empty() && runs_.back().decay == decay && runs_.back().end == p.offset) runs_.back().end += len;
      else runs_.push_back({p.offset, p.offset + len, decay, state});
      state += len;
    }
    m_.resize(state);
    v_.resize(state);
    m_.zero(ctx.stream);
    v_.zero(ctx.stream);
  }

  // grad_scale multiplies the gradients first (the clipping coefficient).
  template <CudaParamArrays P>
  void step(P& arrays, float lr_scale, float grad_scale = 1.0f) {
    RESBM_CHECK(arrays.size() == n_, cat("CudaAdamW made for ", n_, " parameters stepped with ", arrays.size()),
                "step the arrays the optimizer was made for");
    check_lr_scale(lr_scale);
    ++steps_;
    for (const Run& r : runs_) {
      const int64_t n = int64_t(r.end - r.begin);
      ops::CudaAdamWStep s{cfg_.lr * lr_scale, cfg_.beta1, cfg_.beta2, cfg_.eps, r.decay ? cfg_.weight_decay : 0.0f,
                           steps_, grad_scale};
      ops::adamw_update(*ctx_, CudaTensor<float>(arrays.params() + r.begin, {n}),
                        CudaTensor<bf16>(arrays.params_bf16() + r.begin, {n}),
                        CudaTensor<const float>(arrays.grads() + r.begin, {n}),
                        CudaTensor<float>(m_.data() + r.state, {n}), CudaTensor<float>(v_.data() + r.state, {n}), s);
    }
  }

  int64_t steps() const { return steps_; }

 private:
  struct Run {
    size_t begin, end;  // in the arrays
    bool decay;
    size_t state;  // where its m and v start
  };
  CudaContext* ctx_;
  AdamWConfig cfg_;
  size_t n_;
  DeviceBuffer<float> m_, v_;
  std::vector<Run> runs_;
  int64_t steps_ = 0;
};

}  // namespace resbm::optim
