#pragma once
// --optimizer, --lr, --adam-lr and --weight-decay as an optimizer config with resbm-train's
// defaults (AdamW at 2e-3; Muon at 0.02 with its AdamW half at 2e-3), shared by the CPU
// trainer and its GPU loop so that a run switches devices by one flag.
#include <string>

#include "resbm/optim/any.hpp"

namespace resbm::examples {

// --optimizer's values; the trainers call it with the other flag checks, before any work.
inline void check_optimizer_name(const std::string& name) {
  RESBM_CHECK(name == "adamw" || name == "muon", cat("unknown optimizer '", name, "'"),
              "pass --optimizer adamw or muon");
}

inline optim::OptimizerConfig optimizer_config(const std::string& name, double lr, double adam_lr,
                                               double weight_decay) {
  check_optimizer_name(name);
  optim::AdamWConfig adam;
  adam.weight_decay = float(weight_decay);
  if (name == "adamw") {
    adam.lr = lr > 0 ? float(lr) : 2e-3f;
    return adam;
  }
  adam.lr = adam_lr > 0 ? float(adam_lr) : 2e-3f;
  optim::MuonConfig muon;
  muon.lr = lr > 0 ? float(lr) : 0.02f;
  muon.adamw = adam;
  return muon;
}

}  // namespace resbm::examples
