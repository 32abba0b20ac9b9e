#pragma once
// Runs one pipeline stage: executes its schedule's action list every step, talking to its
// neighbours only through links (in-process queues between threads, or sockets between
// processes — the same code). Sends go through a thread of their own so compute never
// waits for the wire; receives block only when the schedule needs the data, while the
// OS (or the in-process queue) keeps receiving in the background.
//
// The gradient-norm clip is global, as in one process: the last stage starts a running sum
// of squared norms that each stage extends and passes back; stage 0 takes the root and
// sends it forward. The sum runs in reverse stage order, the same float operations as
// LocalPipeline, so a pipeline with fp32 wire matches it bit for bit.
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "resbm/data/sampler.hpp"
#include "resbm/optim/any.hpp"
#include "resbm/optim/clip.hpp"
#include "resbm/pipeline/local.hpp"
#include "resbm/pipeline/schedule.hpp"
#include "resbm/pipeline/stage.hpp"
#include "resbm/transport/any_link.hpp"

namespace resbm::pipeline {

struct RunnerOptions {
  std::string schedule = "1f1b";
  int micro_batches = 1;
  int lookahead = 0;  // 1f1b only: extra in-flight micro-batches per downstream stage (schedule.hpp)
  double clip = 1.0;
  uint64_t seed = 1;
  std::chrono::milliseconds timeout{120'000};
  bool skip_nonfinite = false;  // skip a step whose loss or gradients are not finite, instead of stopping
};

// Posts frames to links from a thread of its own, in order. An error there is rethrown
// to the stage at its next post() or flush().
class Sender {
 public:
  Sender() : thread_([this] { loop(); }) {}
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;
  ~Sender() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void post(transport::AnyLink& link, const transport::FrameHeader& h, std::span<const std::byte> payload) {
    std::lock_guard lk(mu_);
    rethrow_locked();
    queue_.push_back({&link, h, std::vector<std::byte>(payload.begin(), payload.end())});
    cv_.notify_all();
  }

  // Waits until every posted frame has been handed to its link.
  void flush() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return (queue_.empty() && !busy_) || error_; });
    rethrow_locked();
  }

 private:
  struct Item {
    transport::AnyLink* link;
    transport::FrameHeader header;
    std::vector<std::byte> payload;
  };

  void rethrow_locked() {
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

  void loop() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      Item item = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lk.unlock();
      std::exception_ptr err;
      try {
        item.link->send(item.header, item.payload);
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      busy_ = false;
      if (err && !error_) error_ = err;
      if (err) queue_.clear();
      idle_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<Item> queue_;
  bool stop_ = false, busy_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts after the members it uses exist
};

template <class Codec>
class StageRunner {
 public:
  StageRunner(StageModel<Codec>& stage, optim::AnyOptimizer& opt, transport::AnyLink* prev, transport::AnyLink* next,
              const Context& ctx, RunnerOptions o, int64_t micro_batch)
      : stage_(stage), opt_(opt), prev_(prev), next_(next), ctx_(ctx), o_(std::move(o)), micro_batch_(micro_batch),
        actions_(actions(o_.schedule, stage.stage(), stage.n_stages(), o_.micro_batches, o_.lookahead)) {
    RESBM_CHECK(stage.first() == (prev == nullptr) && stage.last() == (next == nullptr),
                cat("stage ", stage.stage(), " of ", stage.n_stages(), " needs ", stage.first() ? "no" : "a",
                    " previous and ", stage.last() ? "no" : "a", " next link"),
                "connect each stage to its neighbours only");
    for (int m = 0; m < o_.micro_batches; ++m) mbs_.push_back(stage.make_micro_batch(micro_batch));
    act_in_.resize(size_t(o_.micro_batches));
    grad_in_.resize(size_t(o_.micro_batches));
  }

  // One optimizer step over the step's batch. Returns the mean loss (last stage; NaN on
  // the others) and the global gradient norm before clipping.
  std::pair<double, double> train_step(const data::BatchSampler& sampler, int64_t step, float lr_scale) {
    const int stage = stage_.stage();
    poisoned_ = false;
    sample(sampler, step);
    double loss = 0;
    for (const Action& a : actions_) {
      const size_t m = size_t(a.micro_batch);
      switch (a.op) {
        case Op::recv_activation:
          receive(*prev_, transport::Kind::activation, step, a.micro_batch, act_in_[m]);
          break;
        case Op::forward: {
          load(a.micro_batch);
          float l = 0;
          try {
            l = stage_.forward(ctx_, mbs_[m], act_in_[m]);
          } catch (const transport::LinkClosed&) {
            throw;
          } catch (const Error& e) {  // e.g. a non-finite activation refused by the wire
            const std::string where = stage_.model().first_nonfinite(mbs_[m].acts);
            if (o_.skip_nonfinite && !where.empty()) {
              poisoned_ = true;
              stage_.send_zero_forward(ctx_, mbs_[m]);
              break;
            }
            throw Error(cat("stage ", stage, ", step ", step, ", micro-batch ", m,
                            where.empty() ? std::string() : ", non-finite values from " + where, ": ", e.problem()),
                        e.fix());
          }
          if (stage_.last()) {
            if (!std::isfinite(l) && !o_.skip_nonfinite) {
              const std::string where = stage_.model().first_nonfinite(mbs_[m].acts);
              fail(cat("loss is ", l, " at step ", step, " (stage ", stage, ", micro-batch ", m, ")",
                       where.empty() ? std::string() : ": first non-finite values in " + where),
                   "lower --lr or raise --warmup and resume from the last checkpoint, or pass --skip-nonfinite");
            }
            poisoned_ = poisoned_ || !std::isfinite(l);
            loss += double(l) / o_.micro_batches;
          }
          break;
        }
        case Op::send_activation:
          sender_.post(*next_, header(transport::Kind::activation, step, a.micro_batch), mbs_[m].wire);
          count(mbs_[m].wire.size(), true);
          break;
        case Op::recv_gradient:
          receive(*next_, transport::Kind::gradient, step, a.micro_batch, grad_in_[m]);
          break;
        case Op::backward:
          if (!poisoned_) {
            try {
              stage_.backward(ctx_, mbs_[m], grad_in_[m], 1.0f / float(o_.micro_batches));
              break;
            } catch (const Error& e) {  // a non-finite gradient refused by the wire
              if (!o_.skip_nonfinite) throw Error(cat("stage ", stage, ", step ", step, ", micro-batch ", m,
                                                      " backward: ", e.problem()), e.fix());
              poisoned_ = true;
            }
          }
          stage_.send_zero_backward(ctx_, mbs_[m]);
          break;
        case Op::send_gradient:
          sender_.post(*prev_, header(transport::Kind::gradient, step, a.micro_batch), mbs_[m].grad);
          count(mbs_[m].grad.size(), false);
          break;
        case Op::optimizer_step: {
          const double norm = global_norm(step);
          if (!std::isfinite(norm)) {
            // Every stage sees the same global norm, so all of them skip or stop together.
            if (o_.skip_nonfinite) {
              ++skipped_;
              stage_.arena().zero_grad();
              return {stage_.last() ? loss : NAN, norm};
            }
            const std::string param = first_nonfinite_grad();
            fail(cat("gradient norm is ", norm, " at step ", step, " (stage ", stage, "): ",
                     param.empty() ? std::string("this stage's gradients are finite, another stage's are not")
                                   : "the gradient of " + param + " is not finite"),
                 "lower --lr or raise --warmup and resume from the last checkpoint, or pass --skip-nonfinite");
          }
          optim::scale_grads(ctx_, stage_.arena(), optim::clip_coefficient(norm, o_.clip));
          opt_.step(ctx_, stage_.arena(), lr_scale);
          stage_.constrain(o_.seed);
          stage_.arena().zero_grad();
          return {stage_.last() ? loss : NAN, norm};
        }
      }
    }
    fail("schedule without an optimizer step", "report this: every schedule ends with one");
  }

  // Mean validation loss over the first `batches` evaluation batches: forward only, in
  // order (last stage; NaN on the others).
  double evaluate(const data::BatchSampler& sampler, int64_t batches) {
    const int64_t n = std::min<int64_t>(batches, sampler.eval_batches());
    const int per_batch = int(sampler.batch_size() / micro_batch_);
    double sum = 0;
    std::vector<std::byte> in;
    for (int64_t i = 0; i < n; ++i) {
      tokens_.resize(size_t(sampler.batch_size() * stage_.model().config().seq_len));
      targets_.resize(tokens_.size());
      sampler.eval_batch(i, tokens_.data(), targets_.data());
      for (int m = 0; m < per_batch; ++m) {
        load(m, 0);
        if (prev_) receive(*prev_, transport::Kind::eval_activation, i, m, in);
        const float l = stage_.forward(ctx_, mbs_[0], in);
        if (next_) sender_.post(*next_, header(transport::Kind::eval_activation, i, m), mbs_[0].wire);
        sum += double(l) / per_batch;
      }
    }
    sender_.flush();
    return stage_.last() ? sum / double(n) : NAN;
  }

  // Steps skipped because their loss or gradients were not finite (--skip-nonfinite).
  int64_t skipped() const { return skipped_; }
  // Every posted frame handed to its link (call before closing links or reading stats).
  void flush() { sender_.flush(); }
  // Wall seconds the compute thread spent blocked waiting for a neighbour.
  double wait_seconds() const { return wait_s_; }
  // Training traffic this stage sent (activations forward, gradients backward), frame
  // headers included: what the boundary really cost on the wire.
  const WireCount& sent() const { return sent_; }

 private:
  transport::FrameHeader header(transport::Kind kind, int64_t step, int micro_batch) const {
    transport::FrameHeader h;
    h.kind = kind;
    h.step = uint64_t(step);
    h.micro_batch = uint32_t(micro_batch);
    h.stream = uint32_t(stage_.stage());
    return h;
  }

  // The payload lands in `into`, a buffer kept from step to step (no allocation per frame).
  void receive(transport::AnyLink& link, transport::Kind kind, int64_t step, int micro_batch,
               std::vector<std::byte>& into) {
    const auto t0 = std::chrono::steady_clock::now();
    transport::FrameHeader h;
    const int peer = &link == prev_ ? stage_.stage() - 1 : stage_.stage() + 1;
    auto lost = [&](const Error& e) {
      return cat("stage ", stage_.stage(), " lost stage ", peer, " at step ", step, " while waiting for ",
                 transport::kind_name(kind), " of micro-batch ", micro_batch, ": ", e.problem());
    };
    try {
      h = link.recv_into(kind, o_.timeout, into);
    } catch (const transport::LinkClosed& e) {
      throw transport::LinkClosed(lost(e), e.fix());
    } catch (const Error& e) {
      throw Error(lost(e), e.fix().empty() ? "check that stage is alive; resume every stage from the last checkpoint"
                                           : e.fix());
    }
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    RESBM_CHECK(h.step == uint64_t(step) && h.micro_batch == uint32_t(micro_batch),
                cat("stage ", stage_.stage(), " expected ", transport::kind_name(kind), " of step ", step,
                    ", micro-batch ", micro_batch, " from ", link.peer(), " but got step ", h.step,
                    ", micro-batch ", h.micro_batch),
                "run every stage with the same --schedule, --micro-batches and --batch, resumed from the same step");
  }

  void sample(const data::BatchSampler& sampler, int64_t step) {
    tokens_.resize(size_t(sampler.batch_size() * stage_.model().config().seq_len));
    targets_.resize(tokens_.size());
    sampler.batch(step, tokens_.data(), targets_.data());
  }

  // Copies micro-batch m's token ids and targets into micro-batch slot `slot` (m by default).
  void load(int m, int slot = -1) {
    auto& acts = mbs_[size_t(slot < 0 ? m : slot)].acts;
    const size_t N = size_t(micro_batch_) * size_t(stage_.model().config().seq_len), off = size_t(m) * N;
    std::memcpy(acts.tokens.data(), tokens_.data() + off, N * sizeof(int32_t));
    std::memcpy(acts.targets.data(), targets_.data() + off, N * sizeof(int32_t));
  }

  std::string first_nonfinite_grad() const {
    const ParamArena<float>& a = stage_.arena();
    for (size_t i = 0; i < a.infos().size(); ++i)
      for (const float g : a.grad(i))
        if (!std::isfinite(g)) return a.info(i).name;
    return "";
  }

  void count(size_t payload, bool forward) {
    const nn::LlamaConfig& c = stage_.model().config();
    sent_.add(forward, double(payload + transport::kHeaderSize), micro_batch_ * c.seq_len, c.d_model);
  }

  static std::span<const std::byte> bytes_of(const double& x) {
    return {reinterpret_cast<const std::byte*>(&x), sizeof(double)};
  }
  double receive_double(transport::AnyLink& link, int64_t step) {
    std::vector<std::byte> p;
    receive(link, transport::Kind::control, step, 0, p);
    RESBM_CHECK(p.size() == sizeof(double), cat("control frame of ", p.size(), " bytes from ", link.peer()),
                "run the same resbm version on every stage");
    double x;
    std::memcpy(&x, p.data(), sizeof x);
    return x;
  }

  // The sum of squared norms runs from the last stage to the first, riding behind the
  // gradients: stage 0 finishes its backward last, so the sum is complete the moment it
  // is, with no round trip. The root travels forward ahead of the next step's activations,
  // which each stage waits for anyway: on a high-latency link the reduction costs nothing
  // extra.
  double global_norm(int64_t step) {
    // A poisoned stage makes the global norm NaN: every stage then skips the step together.
    const double n = poisoned_ ? NAN : optim::clip_grad_norm(ctx_, stage_.arena(), 0.0);
    double sq = next_ ? receive_double(*next_, step) : 0.0;
    sq += n * n;
    double norm;
    if (prev_) {
      sender_.post(*prev_, header(transport::Kind::control, step, 0), bytes_of(sq));
      norm = receive_double(*prev_, step);
    } else {
      norm = std::sqrt(sq);
    }
    if (next_) sender_.post(*next_, header(transport::Kind::control, step, 0), bytes_of(norm));
    return norm;
  }

  StageModel<Codec>& stage_;
  optim::AnyOptimizer& opt_;
  transport::AnyLink* prev_;
  transport::AnyLink* next_;
  const Context& ctx_;
  RunnerOptions o_;
  int64_t micro_batch_;
  std::vector<Action> actions_;
  std::vector<typename StageModel<Codec>::MicroBatch> mbs_;
  std::vector<std::vector<std::byte>> act_in_, grad_in_;
  std::vector<int32_t> tokens_, targets_;
  double wait_s_ = 0;
  int64_t skipped_ = 0;
  bool poisoned_ = false;  // this step met non-finite values here (--skip-nonfinite)
  WireCount sent_;
  Sender sender_;  // last: its thread stops before the buffers it reads go away
};

}  // namespace resbm::pipeline
