#pragma once
// optim::Muon on the GPU over flat fp32 arrays in a ParamArena layout (a CudaLlama slice, a
// codec half): the same update as the CPU's, matrix by matrix (momentum, Newton–Schulz on
// cuBLASLt, the shape factor, decoupled decay), and CudaAdamW for every other entry
// (embedding, head, gains), with state for those alone. Refreshes the bf16 copy of the
// weights it changes. The Newton–Schulz iteration runs in bf16 (ops/cuda/newton_schulz.cuh),
// the CPU's in fp32: updates agree to ~1e-2 relative, so losses agree to bf16 tolerance.
// Matrices of one shape (q, k, v and o of every layer; gate and up; down) go through
// Newton–Schulz as one batch, in chunks of at most kChunkElements, so that its GEMMs are few
// and large rather than 15 small launches a matrix. Asynchronous on ctx.stream: no host sync
// in a step.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
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
      : ctx_(&ctx),
        cfg_(validated(cfg)),
        n_(arrays.size()),
        adamw_(ctx, arrays, cfg_.adamw, adamw_entries(arrays.layout())) {
    size_t total = 0;
    std::map<std::pair<int64_t, int64_t>, std::vector<Matrix>> by_shape;  // in layout order within a shape
    for (const ParamInfo& p : arrays.layout().infos()) {
      if (p.kind != ParamKind::matrix) continue;
      RESBM_CHECK(p.rank == 2,
                  cat("matrix parameter '", p.name, "' has shape ", shape_str(p.shape, p.rank), ", not 2 dimensions"),
                  "declare hidden weights as [out, in], or give the entry another ParamKind");
      by_shape[{p.shape[0], p.shape[1]}].push_back({total, p.offset});
      total += (p.numel + 15) / 16 * 16;
      ++matrices_;
    }
    int64_t largest = 0;
    for (auto& [shape, ms] : by_shape) {
      const auto [rows, cols] = shape;
      const int64_t per = std::clamp<int64_t>(kChunkElements / std::max<int64_t>(1, rows * cols), 1,
                                              ops::kMaxNewtonSchulzBatch);
      for (size_t i = 0; i < ms.size(); i += size_t(per)) {
        Batch b{rows, cols, {}};
        b.matrices.assign(ms.begin() + i, ms.begin() + std::min(ms.size(), i + size_t(per)));
        const int64_t count = int64_t(b.matrices.size());
        scratch_.reserve(rows, cols, count);
        largest = std::max(largest, count * rows * cols);
        batches_.push_back(std::move(b));
      }
    }
    momentum_.resize(total);
    momentum_.zero(ctx.stream);
    u_.resize(size_t(largest));
    o_.resize(size_t(largest));
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
    for (const Batch& b : batches_) {
      const int64_t n = b.rows * b.cols, count = int64_t(b.matrices.size());
      for (int64_t i = 0; i < count; ++i) {
        const Matrix& m = b.matrices[size_t(i)];
        ops::muon_momentum(ctx, CudaTensor<float>(momentum_.data() + m.state, {n}),
                           CudaTensor<float>(u_.data() + i * n, {n}), CudaTensor<const float>(grads + m.param, {n}),
                           cfg_.momentum, cfg_.nesterov, grad_scale);
      }
      ops::newton_schulz5(ctx, CudaTensor<bf16>(o_.data(), {count, b.rows, b.cols}),
                          CudaTensor<const float>(u_.data(), {count, b.rows, b.cols}), cfg_.ns_steps, scratch_);
      // The CPU's shape factor: tall matrices to the RMS of wide ones (see optim::Muon).
      const float alpha = lr * std::sqrt(std::max(1.0f, float(b.rows) / float(b.cols)));
      for (int64_t i = 0; i < count; ++i) {
        const Matrix& m = b.matrices[size_t(i)];
        ops::muon_apply(ctx, CudaTensor<float>(params + m.param, {n}), CudaTensor<bf16>(params16 + m.param, {n}),
                        CudaTensor<const bf16>(o_.data() + i * n, {n}), shrink, alpha);
      }
    }
    adamw_.step(arrays, lr_scale, grad_scale);
    ++steps_;
  }

  int64_t steps() const { return steps_; }
  const MuonConfig& config() const { return cfg_; }
  // Entries Newton–Schulz orthogonalises (the rest go to the AdamW half).
  size_t matrices() const { return matrices_; }
  // Newton–Schulz launches a step goes through: one batch per shape and chunk.
  size_t batches() const { return batches_.size(); }

  // A batch holds at most this many elements (at least one matrix): its iterates cost ~10
  // bytes an element of device memory (fp32 update, bf16 X, Y, output, A and B).
  static constexpr int64_t kChunkElements = int64_t(64) << 20;

 private:
  struct Matrix {
    size_t state, param;  // where its momentum and its weights start
  };
  struct Batch {
    int64_t rows, cols;
    std::vector<Matrix> matrices;
  };

  CudaContext* ctx_;
  MuonConfig cfg_;
  size_t n_;
  CudaAdamW adamw_;
  size_t matrices_ = 0;
  std::vector<Batch> batches_;
  DeviceBuffer<float> momentum_, u_;
  DeviceBuffer<bf16> o_;
  ops::CudaNewtonSchulzScratch scratch_;
  int64_t steps_ = 0;
};

}  // namespace resbm::optim
