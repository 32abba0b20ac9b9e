#pragma once
// The optimizer of one parameter set on the GPU, picked by its config at run time (the
// trainer's --optimizer): CudaAdamW or CudaMuon, the GPU's optim::AnyOptimizer.
// CudaLocalPipeline gives one to every model slice and codec half.
#include <optional>
#include <variant>

#include "resbm/optim/any.hpp"
#include "resbm/optim/cuda/adamw.cuh"
#include "resbm/optim/cuda/muon.cuh"

namespace resbm::optim {

class CudaAnyOptimizer {
 public:
  template <CudaParamArrays P>
  CudaAnyOptimizer(CudaContext& ctx, const P& arrays, const OptimizerConfig& cfg) {
    if (const auto* a = std::get_if<AdamWConfig>(&cfg)) adamw_.emplace(ctx, arrays, *a);
    else muon_.emplace(ctx, arrays, std::get<MuonConfig>(cfg));
  }

  template <CudaParamArrays P>
  void step(P& arrays, float lr_scale, float grad_scale = 1.0f) {
    if (adamw_) adamw_->step(arrays, lr_scale, grad_scale);
    else muon_->step(arrays, lr_scale, grad_scale);
  }

  int64_t steps() const { return adamw_ ? adamw_->steps() : muon_->steps(); }
  bool is_muon() const { return muon_.has_value(); }

 private:
  std::optional<CudaAdamW> adamw_;
  std::optional<CudaMuon> muon_;
};

}  // namespace resbm::optim
