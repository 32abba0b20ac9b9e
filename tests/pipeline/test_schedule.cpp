// Schedules are data: check the lists themselves, and that every stage's list is
// consistent with its neighbours' (every send has its receive, nothing deadlocks).
#include <algorithm>
#include <deque>
#include <map>
#include <vector>

#include "resbm/pipeline/schedule.hpp"
#include "support/catch.hpp"

using namespace resbm::pipeline;

namespace {

// Simulates S stages executing their lists with unbounded mailboxes: a receive waits for
// the matching send. Returns false on deadlock.
bool runs_to_completion(const std::string& sched, int S, int M, int lookahead = 0) {
  std::vector<std::vector<Action>> lists;
  for (int s = 0; s < S; ++s) lists.push_back(actions(sched, s, S, M, lookahead));
  std::vector<size_t> pc(size_t(S), 0);
  std::map<std::tuple<int, int, int>, int> mail;  // (to stage, kind, mb) -> count
  bool progress = true;
  while (progress) {
    progress = false;
    for (int s = 0; s < S; ++s) {
      while (pc[size_t(s)] < lists[size_t(s)].size()) {
        const Action a = lists[size_t(s)][pc[size_t(s)]];
        if (a.op == Op::recv_activation || a.op == Op::recv_gradient) {
          auto key = std::make_tuple(s, int(a.op), a.micro_batch);
          if (mail[key] == 0) break;
          --mail[key];
        } else if (a.op == Op::send_activation) {
          ++mail[std::make_tuple(s + 1, int(Op::recv_activation), a.micro_batch)];
        } else if (a.op == Op::send_gradient) {
          ++mail[std::make_tuple(s - 1, int(Op::recv_gradient), a.micro_batch)];
        }
        ++pc[size_t(s)];
        progress = true;
      }
    }
  }
  for (int s = 0; s < S; ++s)
    if (pc[size_t(s)] != lists[size_t(s)].size()) return false;
  for (auto& [k, n] : mail)
    if (n != 0) return false;
  return true;
}

}  // namespace

TEST_CASE("GPipe: all forwards, then all backwards in reverse, then one step") {
  auto a = actions(GPipe{}, 1, 3, 2);
  std::vector<Action> want{{Op::recv_activation, 0}, {Op::forward, 0},   {Op::send_activation, 0},
                           {Op::recv_activation, 1}, {Op::forward, 1},   {Op::send_activation, 1},
                           {Op::recv_gradient, 1},   {Op::backward, 1},  {Op::send_gradient, 1},
                           {Op::recv_gradient, 0},   {Op::backward, 0},  {Op::send_gradient, 0},
                           {Op::optimizer_step, -1}};
  CHECK(a == want);
  CHECK(max_in_flight(a) == 2);
}

TEST_CASE("1F1B: warm-up forwards, alternation, cool-down; bounded in-flight micro-batches") {
  auto last = actions(OneFOneB{}, 3, 4, 4);  // last stage: no warm-up, strict alternation
  std::vector<Action> want{{Op::recv_activation, 0}, {Op::forward, 0}, {Op::backward, 0}, {Op::send_gradient, 0},
                           {Op::recv_activation, 1}, {Op::forward, 1}, {Op::backward, 1}, {Op::send_gradient, 1},
                           {Op::recv_activation, 2}, {Op::forward, 2}, {Op::backward, 2}, {Op::send_gradient, 2},
                           {Op::recv_activation, 3}, {Op::forward, 3}, {Op::backward, 3}, {Op::send_gradient, 3},
                           {Op::optimizer_step, -1}};
  CHECK(last == want);
  for (int s = 0; s < 4; ++s) CHECK(max_in_flight(actions(OneFOneB{}, s, 4, 8)) == 4 - s);
  CHECK(max_in_flight(actions(GPipe{}, 0, 4, 8)) == 8);
}

TEST_CASE("1F1B lookahead: more warm-up forwards, the same backward order") {
  // Stage 1 of 4, lookahead 1: (4-1-1)·2 = 4 warm-up forwards, then alternation.
  auto a = actions(OneFOneB{1}, 1, 4, 6);
  std::vector<int> forwards, backwards;
  for (const Action& x : a) {
    if (x.op == Op::forward) forwards.push_back(x.micro_batch);
    if (x.op == Op::backward) backwards.push_back(x.micro_batch);
  }
  CHECK(forwards == std::vector<int>{0, 1, 2, 3, 4, 5});
  CHECK(backwards == std::vector<int>{0, 1, 2, 3, 4, 5});
  // The first backward comes after the 4 warm-up forwards and the 5th forward.
  const auto first_b = std::find_if(a.begin(), a.end(), [](const Action& x) { return x.op == Op::backward; });
  CHECK(std::count_if(a.begin(), first_b, [](const Action& x) { return x.op == Op::forward; }) == 5);
  for (int k : {0, 1, 2, 3})
    for (int s = 0; s < 4; ++s) {
      INFO("lookahead " << k << " stage " << s);
      CHECK(max_in_flight(actions(OneFOneB{k}, s, 4, 16)) == std::min(16, (4 - s - 1) * (1 + k) + 1));
    }
  // Backward order (and so the summed gradients) is independent of the lookahead.
  for (int s = 0; s < 4; ++s) {
    std::vector<int> b0, b2;
    for (const Action& x : actions(OneFOneB{0}, s, 4, 8))
      if (x.op == Op::backward) b0.push_back(x.micro_batch);
    for (const Action& x : actions(OneFOneB{2}, s, 4, 8))
      if (x.op == Op::backward) b2.push_back(x.micro_batch);
    CHECK(b0 == b2);
  }
}

TEST_CASE("every schedule, stage count and micro-batch count runs to completion") {
  for (int k : {1, 2, 5})
    for (int S : {2, 3, 4, 6})
      for (int M : {1, 4, 5, 8, 16}) {
        INFO("1f1b lookahead " << k << " S=" << S << " M=" << M);
        CHECK(runs_to_completion("1f1b", S, M, k));
      }
  for (const char* sched : {"gpipe", "1f1b"})
    for (int S : {1, 2, 3, 4, 6})
      for (int M : {1, 2, 4, 5, 8}) {
        INFO(sched << " S=" << S << " M=" << M);
        CHECK(runs_to_completion(sched, S, M));
        for (int s = 0; s < S; ++s) {
          auto a = actions(sched, s, S, M);
          int f = 0, b = 0;
          for (auto& x : a) {
            f += x.op == Op::forward;
            b += x.op == Op::backward;
          }
          CHECK((f == M && b == M && a.back().op == Op::optimizer_step));
        }
      }
}

TEST_CASE("bad schedule arguments are clear errors") {
  CHECK_THROWS_WITH(actions("zigzag", 0, 2, 2), Catch::Matchers::Contains("unknown schedule 'zigzag'"));
  CHECK_THROWS_WITH(actions(GPipe{}, 2, 2, 2), Catch::Matchers::Contains("stage 2 is outside [0, 2)"));
  CHECK_THROWS_WITH(actions(OneFOneB{}, 0, 2, 0), Catch::Matchers::Contains("--micro-batches 0"));
  CHECK_THROWS_WITH(actions(OneFOneB{-1}, 0, 2, 2), Catch::Matchers::Contains("--lookahead -1 is out of range"));
  CHECK_THROWS_WITH(actions("gpipe", 0, 2, 2, 1), Catch::Matchers::Contains("does not apply to the gpipe schedule"));
}
