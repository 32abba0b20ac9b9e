#pragma once
// A schedule is data: for stage s of S with M micro-batches, the list of actions one
// training step performs, in order. The runner executes the list; communication actions
// name the micro-batch whose payload moves. Both schedules end with one optimizer step
// (gradient accumulation over the M micro-batches).
//
//   GPipe       all forwards, then all backwards (in reverse order, so the activations of
//               the last forward are the first freed).
//   OneFOneB    PipeDream-flush: S-s-1 warm-up forwards, then alternate one forward and
//               one backward, then the remaining backwards. At most S-s micro-batches are
//               in flight on stage s instead of M.
#include <algorithm>
#include <string>
#include <vector>

#include "resbm/core/error.hpp"

namespace resbm::pipeline {

enum class Op { recv_activation, forward, send_activation, recv_gradient, backward, send_gradient, optimizer_step };

inline const char* op_name(Op op) {
  switch (op) {
    case Op::recv_activation: return "recv_activation";
    case Op::forward: return "forward";
    case Op::send_activation: return "send_activation";
    case Op::recv_gradient: return "recv_gradient";
    case Op::backward: return "backward";
    case Op::send_gradient: return "send_gradient";
    case Op::optimizer_step: return "optimizer_step";
  }
  return "?";
}

struct Action {
  Op op;
  int micro_batch = -1;  // -1 for optimizer_step
  friend bool operator==(const Action&, const Action&) = default;
};

struct GPipe {
  static constexpr const char* name = "gpipe";
};
struct OneFOneB {
  static constexpr const char* name = "1f1b";
};

namespace schedule_detail {
inline void check(int stage, int stages, int micro_batches) {
  RESBM_CHECK(stages >= 1 && 0 <= stage && stage < stages,
              cat("stage ", stage, " is outside [0, ", stages, ")"), "pass --stage between 0 and --stages - 1");
  RESBM_CHECK(micro_batches >= 1, cat("--micro-batches ", micro_batches, " must be at least 1"),
              "pass --micro-batches 1 or more");
}
inline void forward(std::vector<Action>& a, int stage, int stages, int m) {
  if (stage > 0) a.push_back({Op::recv_activation, m});
  a.push_back({Op::forward, m});
  if (stage + 1 < stages) a.push_back({Op::send_activation, m});
}
inline void backward(std::vector<Action>& a, int stage, int stages, int m) {
  if (stage + 1 < stages) a.push_back({Op::recv_gradient, m});
  a.push_back({Op::backward, m});
  if (stage > 0) a.push_back({Op::send_gradient, m});
}
}  // namespace schedule_detail

inline std::vector<Action> actions(GPipe, int stage, int stages, int micro_batches) {
  schedule_detail::check(stage, stages, micro_batches);
  std::vector<Action> a;
  for (int m = 0; m < micro_batches; ++m) schedule_detail::forward(a, stage, stages, m);
  for (int m = micro_batches; m-- > 0;) schedule_detail::backward(a, stage, stages, m);
  a.push_back({Op::optimizer_step, -1});
  return a;
}

inline std::vector<Action> actions(OneFOneB, int stage, int stages, int micro_batches) {
  schedule_detail::check(stage, stages, micro_batches);
  std::vector<Action> a;
  const int warmup = std::min(stages - stage - 1, micro_batches);
  int f = 0, b = 0;
  for (; f < warmup; ++f) schedule_detail::forward(a, stage, stages, f);
  for (; f < micro_batches; ++f, ++b) {
    schedule_detail::forward(a, stage, stages, f);
    schedule_detail::backward(a, stage, stages, b);
  }
  for (; b < micro_batches; ++b) schedule_detail::backward(a, stage, stages, b);
  a.push_back({Op::optimizer_step, -1});
  return a;
}

// Runtime choice by name (--schedule gpipe|1f1b).
inline std::vector<Action> actions(const std::string& schedule, int stage, int stages, int micro_batches) {
  if (schedule == GPipe::name) return actions(GPipe{}, stage, stages, micro_batches);
  if (schedule == OneFOneB::name) return actions(OneFOneB{}, stage, stages, micro_batches);
  fail(cat("unknown schedule '", schedule, "'"), "pass --schedule gpipe or 1f1b");
}

// Most micro-batches whose activations a stage holds at once under this list.
inline int max_in_flight(const std::vector<Action>& list) {
  int live = 0, most = 0;
  for (const Action& x : list) {
    if (x.op == Op::forward) most = std::max(most, ++live);
    if (x.op == Op::backward) --live;
  }
  return most;
}

}  // namespace resbm::pipeline
