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
//               With lookahead k, (S-s-1)·(1+k) warm-up forwards. Plain 1F1B waits a full
//               round trip to the last stage before every backward, so on a link with
//               latency L stage s idles ~2·(S-s-1)·L per micro-batch; k more micro-batches
//               in flight per downstream stage keep it computing meanwhile, at the memory
//               cost of those activations. The backwards keep 1F1B's order (0..M-1), so the
//               results are bit for bit those of k = 0.
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
  int lookahead = 0;  // extra warm-up forwards per downstream stage (see above)
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

inline std::vector<Action> actions(OneFOneB sched, int stage, int stages, int micro_batches) {
  schedule_detail::check(stage, stages, micro_batches);
  RESBM_CHECK(sched.lookahead >= 0 && sched.lookahead <= 1024, cat("--lookahead ", sched.lookahead, " is out of range"),
              "pass --lookahead between 0 (plain 1f1b) and the micro-batch count");
  std::vector<Action> a;
  const int warmup = int(std::min<int64_t>(int64_t(stages - stage - 1) * (1 + sched.lookahead), micro_batches));
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

// Runtime choice by name (--schedule gpipe|1f1b, --lookahead).
inline std::vector<Action> actions(const std::string& schedule, int stage, int stages, int micro_batches,
                                   int lookahead = 0) {
  if (schedule == GPipe::name) {
    RESBM_CHECK(lookahead == 0, cat("--lookahead ", lookahead, " does not apply to the gpipe schedule"),
                "gpipe already runs every forward first; use --lookahead with --schedule 1f1b");
    return actions(GPipe{}, stage, stages, micro_batches);
  }
  if (schedule == OneFOneB::name) return actions(OneFOneB{lookahead}, stage, stages, micro_batches);
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
