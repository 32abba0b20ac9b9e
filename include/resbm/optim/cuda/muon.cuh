#pragma once
// optim::Muon on the GPU over flat fp32 arrays in a ParamArena layout (a CudaLlama slice, a
// codec half): the same update as the CPU's, matrix by matrix (momentum, Newton–Schulz on
// cuBLASLt, the shape factor, decoupled decay), and CudaAdamW for every other entry
// (embedding, head, gains), with state for those alone. Refreshes the bf16 copy of the
// weights it changes. The Newton–Schulz iteration runs in bf16 (ops/cuda/newton_schulz.cuh),
// the CPU's in fp32: updates agree to ~1e-2 relative, so losses agree to bf16 tolerance.
// Asynchronous on ctx.stream: no host sync in a step.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/ops/cuda/muon.cuh"
#include "resbm/ops/cuda/newton_schulz.cuh"
#include "resbm/optim/cuda/adamw.cuh"
#include "resbm/optim/muon.hpp"

namespace resbm::optim {

class CudaMuon {
 public:
  template <CudaParamArrays P>
  CudaMuon(CudaContext& ctx, const P& arrays, MuonConfig cfg = {})
      : ctx_(&ctx), cfg_(validated(cfg)), n_(arrays.size()), adamw_(ctx, arrays, cfg_.adamw, adamw_entries(arrays.layout())) {
    size_t total = 0, largest = 0;
    for (const ParamInfo& p : arrays.layout().infos()) {
      if (p.kind != ParamKind::matrix) continue;
      RESBM_CHECK(p.rank == 2,
                  cat("matrix parameter '", p.name, "' has shape ", shape_str(p.shape, p.rank), ", not 2 dimensions"),
                  "declare hidden weights as [out, in], or give the entry another ParamKind");
      matrices_.push_back({total, p.offset, p.shape[0], p.shape[1]});
      total += (p.numel + 15) / 16 * 16;
      largest = std::max(largest, p.numel);
      scratch_.reserve(p.shape[0], p.shape[1]);
    }
    momentum_.resize(total);
    momentum_.zero(ctx.stream);
    u_.resize(largest);
    o_.resize(largest);
  }

  // grad_scale multiplies the gradients first (the clipping coefficient), as CudaAdamW.
  template <CudaParamArrays P>
  void step(P& arrays, float lr_scale, float grad_scale = 1.0f) {
    RESBM_CHECK(arrays.size() == n_, cat("CudaMuon made for ", n_, " parameters stepped with ", arrays.size()),
                "step the arrays the optimizer was made for");
    check_lr_scale(lr_scale);
    CudaContext& ctx = *ctx_;
    const float lr = cfg_.lr * lr_scale;
    const float shrink = 1.0f - lr * cfg_.weight_decay;
    float* params = arrays.params();
    bf16* params16 = arrays.params_bf16();
    const float* grads = arrays.grads();
    for (const Matrix& m : matrices_) {
      const int64_t n = m.rows * m.cols;
      const CudaTensor<float> u(u_.data(), {m.rows, m.cols});
      const CudaTensor<bf16> o(o_.data(), {m.rows, m.cols});
      ops::muon_momentum(ctx, CudaTensor<float>(momentum_.data() + m.state, {n}), u.reshape({n}),
                         CudaTensor<const float>(grads + m.param, {n}), cfg_.momentum, cfg_.nesterov, grad_scale);
      ops::newton_schulz5(ctx, o, u, cfg_.ns_steps, scratch_);
      // The CPU's shape factor: tall matrices to the RMS of wide ones (see optim::Muon).
      const float alpha = lr * std::sqrt(std::max(1.0f, float(m.rows) / float(m.cols)));
      ops::muon_apply(ctx, CudaTensor<float>(params + m.param, {n}), CudaTensor<bf16>(params16 + m.param, {n}),
                      o.reshape({n}), shrink, alpha);
    }
    adamw_.step(arrays, lr_scale, grad_scale);
    ++steps_;
  }

  int64_t steps() const { return steps_; }
  const MuonConfig& config() const { return cfg_; }
  // Entries Newton–Schulz orthogonalises (the rest go to the AdamW half).
  size_t matrices() const { return matrices_.size(); }

 private:
  struct Matrix {
    size_t state, param;
    int64_t rows, cols;
  };

  CudaContext* ctx_;
  MuonConfig cfg_;
  size_t n_;
  CudaAdamW adamw_;
  std::vector<Matrix> matrices_;
  DeviceBuffer<float> momentum_, u_;
  DeviceBuffer<bf16> o_;
  ops::CudaNewtonSchulzScratch scratch_;
  int64_t steps_ = 0;
};

}  // namespace resbm::optim
