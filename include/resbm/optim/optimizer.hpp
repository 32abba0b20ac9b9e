#pragma once
// What the trainer and the checkpoint code need from an optimizer, and nothing more: they
// are written once against the concept, so AdamW, Muon or a later optimizer drop in.
#include <concepts>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::optim {

// Named views of an optimizer's state buffers. The optimizer owns the memory; the views
// stay valid as long as the optimizer does.
using NamedState = std::vector<std::pair<std::string, Tensor<float>>>;

// A type O is an Optimizer when, for `o` an O, `ctx` a Context, `arena` the
// ParamArena<float> the optimizer was built for, `s` a float and `n` an int64_t:
//
//   o.step(ctx, arena, s)  takes one step: reads arena.grads(), updates arena.params() with
//                          the configured learning rate times `s` (the schedule's
//                          multiplier, so one config serves a whole run). Results must not
//                          depend on ctx.threads. Returns void; bad input is a resbm::Error.
//   o.steps()              (callable on a const O) the number of steps taken, as int64_t.
//                          Step-dependent terms (e.g. Adam's bias correction) derive from it.
//   o.set_steps(n)         sets that count, so a resumed run continues where it stopped.
//   o.state()              returns a NamedState viewing EVERY buffer the optimizer keeps
//                          across steps: saving these views plus steps() and later writing
//                          them back (and calling set_steps) must reproduce the optimizer
//                          exactly. Names are unique, depend only on the arena's entries
//                          (not on memory addresses or thread counts), and start with the
//                          algorithm ("adamw.m.<param name>", "muon.momentum.<param name>"),
//                          so a checkpoint can match them by name.
template <class O>
concept Optimizer = requires(O& o, const O& co, const Context& ctx, ParamArena<float>& arena,
                             float s, int64_t n) {
  { o.step(ctx, arena, s) } -> std::same_as<void>;
  { co.steps() } -> std::same_as<int64_t>;
  { o.set_steps(n) } -> std::same_as<void>;
  { o.state() } -> std::same_as<NamedState>;
};

}  // namespace resbm::optim
