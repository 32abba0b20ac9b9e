#pragma once
// An optimizer chosen at run time (--optimizer adamw|muon) without instantiating the
// trainer once per optimizer.
#include <variant>

#include "resbm/optim/adamw.hpp"
#include "resbm/optim/muon.hpp"
#include "resbm/optim/optimizer.hpp"

namespace resbm::optim {

// What --optimizer picks, as data: AdamW's config or Muon's (the GPU's CudaAnyOptimizer is
// built from one as well).
using OptimizerConfig = std::variant<AdamWConfig, MuonConfig>;

class AnyOptimizer {
 public:
  explicit AnyOptimizer(AdamW o) : o_(std::move(o)) {}
  explicit AnyOptimizer(Muon o) : o_(std::move(o)) {}

  void step(const Context& ctx, ParamArena<float>& arena, float lr_scale) {
    std::visit([&](auto& o) { o.step(ctx, arena, lr_scale); }, o_);
  }
  int64_t steps() const {
    return std::visit([](const auto& o) { return o.steps(); }, o_);
  }
  void set_steps(int64_t n) {
    std::visit([&](auto& o) { o.set_steps(n); }, o_);
  }
  NamedState state() {
    return std::visit([](auto& o) { return o.state(); }, o_);
  }

 private:
  std::variant<AdamW, Muon> o_;
};
static_assert(Optimizer<AnyOptimizer>);

}  // namespace resbm::optim
