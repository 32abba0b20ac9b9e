#pragma once
// All S stages of a partitioned model in one process, run one after the other: every
// boundary message still goes through its codec's real wire payload, and the bytes are
// counted. With S = 1 it is plain training of the whole model.
//
// One training step = M micro-batches (gradient accumulation, loss scaled by 1/M), then one
// global gradient-norm clip over all stages and one optimizer step per stage.
#include <cmath>
#include <memory>
#include <vector>

#include "resbm/data/sampler.hpp"
#include "resbm/optim/any.hpp"
#include "resbm/optim/clip.hpp"
#include "resbm/pipeline/stage.hpp"

namespace resbm::pipeline {

// Bytes that crossed the boundaries, both directions, and the tokens they carried.
struct WireCount {
  double forward_bytes = 0, backward_bytes = 0, tokens = 0, messages = 0;
  double dense_bytes = 0;  // what the same messages would cost as dense bf16 (2·d per token)
  double bytes_per_token() const { return tokens > 0 ? (forward_bytes + backward_bytes) / tokens : 0; }

  // One message of `bytes` for `n_tokens` tokens of width d_model; a boundary's tokens are
  // counted once, with its forward message.
  void add(bool forward, double bytes, int64_t n_tokens, int64_t d_model) {
    (forward ? forward_bytes : backward_bytes) += bytes;
    dense_bytes += 2.0 * double(d_model) * double(n_tokens);
    messages += 1;
    if (forward) tokens += double(n_tokens);
  }
};

// Dense bf16 sends 2·d bytes per token in each direction; the ratio is against that.
inline double compression_ratio(const WireCount& w) {
  const double sent = w.forward_bytes + w.backward_bytes;
  return sent > 0 ? w.dense_bytes / sent : 0;
}

// Scales every gradient of every stage so that their joint norm is at most max_norm;
// returns the norm before. One norm for the whole model, as in the unpartitioned run.
template <class Stages>
double clip_global_norm(const Context& ctx, Stages& stages, double max_norm) {
  double sq = 0;  // from the last stage to the first, as the pipeline runner sums it
  for (auto it = stages.rbegin(); it != stages.rend(); ++it) {
    const double n = optim::clip_grad_norm(ctx, (*it)->arena(), 0.0);
    sq += n * n;
  }
  const double norm = std::sqrt(sq);
  for (auto& s : stages) optim::scale_grads(ctx, s->arena(), optim::clip_coefficient(norm, max_norm));
  return norm;
}

template <class Codec>
class LocalPipeline {
 public:
  using Stage = StageModel<Codec>;

  LocalPipeline(const nn::LlamaConfig& cfg, int n_stages, int64_t micro_batch)
      : cfg_(cfg), micro_batch_(micro_batch) {
    for (int s = 0; s < n_stages; ++s) {
      stages_.push_back(std::make_unique<Stage>(cfg, s, n_stages));
      mbs_.push_back(stages_.back()->make_micro_batch(micro_batch));
    }
  }

  std::vector<std::unique_ptr<Stage>>& stages() { return stages_; }
  const WireCount& wire() const { return wire_; }
  size_t params() const {
    size_t n = 0;
    for (const auto& s : stages_) n += s->arena().count();
    return n;
  }

  void init(uint64_t seed) {
    for (auto& s : stages_) s->init(seed);
  }

  // Forward and backward of micro-batch `m` of `micro_batches`, whose token ids are
  // already in every stage's activations. Returns its loss.
  float forward_backward(const Context& ctx, int micro_batches) {
    const float loss = forward(ctx, true);
    const int64_t N = micro_batch_ * cfg_.seq_len;
    for (size_t s = stages_.size(); s-- > 0;) {
      std::span<const std::byte> grad_in;
      if (s + 1 < stages_.size()) {
        grad_in = mbs_[s + 1].grad;
        wire_.add(false, double(grad_in.size()), N, cfg_.d_model);
      }
      stages_[s]->backward(ctx, mbs_[s], grad_in, 1.0f / float(micro_batches));
    }
    return loss;
  }

  // One optimizer step: M micro-batches of the step's batch, global clip, step, constrain.
  // Returns {mean loss, gradient norm before clipping}.
  std::pair<double, double> train_step(const Context& ctx, const data::BatchSampler& sampler, int64_t step,
                                       int micro_batches, std::vector<optim::AnyOptimizer>& opts,
                                       float lr_scale, double clip, uint64_t seed) {
    for (auto& s : stages_) s->arena().zero_grad();
    batch_tokens_.resize(size_t(sampler.batch_size() * cfg_.seq_len));
    batch_targets_.resize(batch_tokens_.size());
    sampler.batch(step, batch_tokens_.data(), batch_targets_.data());
    double loss = 0;
    for (int m = 0; m < micro_batches; ++m) {
      load_micro_batch(m);
      const float l = forward_backward(ctx, micro_batches);
      RESBM_CHECK(std::isfinite(l), cat("loss is ", l, " at step ", step, " (micro-batch ", m, ")"),
                  "lower --lr or raise --warmup; resume from the last checkpoint with --resume");
      loss += double(l) / micro_batches;
    }
    const double norm = clip_global_norm(ctx, stages_, clip);
    RESBM_CHECK(std::isfinite(norm), cat("gradient norm is ", norm, " at step ", step),
                "lower --lr; resume from the last checkpoint with --resume");
    for (size_t s = 0; s < stages_.size(); ++s) {
      opts[s].step(ctx, stages_[s]->arena(), lr_scale);
      stages_[s]->constrain(seed);
    }
    return {loss, norm};
  }

  // Mean loss over the first `batches` evaluation batches (forward only, not counted as
  // wire traffic of training).
  double evaluate(const Context& ctx, const data::BatchSampler& sampler, int64_t batches) {
    const int64_t n = std::min<int64_t>(batches, sampler.eval_batches());
    batch_tokens_.resize(size_t(sampler.batch_size() * cfg_.seq_len));
    batch_targets_.resize(batch_tokens_.size());
    const int per_batch = int(sampler.batch_size() / micro_batch_);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      sampler.eval_batch(i, batch_tokens_.data(), batch_targets_.data());
      for (int m = 0; m < per_batch; ++m) {
        load_micro_batch(m);
        sum += double(forward(ctx, false)) / per_batch;
      }
    }
    return sum / double(n);
  }

 private:
  void load_micro_batch(int m) {
    const size_t N = size_t(micro_batch_ * cfg_.seq_len), off = size_t(m) * N;
    for (auto& mb : mbs_) {
      std::copy_n(batch_tokens_.begin() + off, N, mb.acts.tokens.begin());
      std::copy_n(batch_targets_.begin() + off, N, mb.acts.targets.begin());
    }
  }

  float forward(const Context& ctx, bool count) {
    float loss = 0;
    for (size_t s = 0; s < stages_.size(); ++s) {
      std::span<const std::byte> wire_in;
      if (s > 0) {
        wire_in = mbs_[s - 1].wire;
        if (count) wire_.add(true, double(wire_in.size()), micro_batch_ * cfg_.seq_len, cfg_.d_model);
      }
      loss = stages_[s]->forward(ctx, mbs_[s], wire_in);
    }
    return loss;
  }

  nn::LlamaConfig cfg_;
  int64_t micro_batch_;
  std::vector<std::unique_ptr<Stage>> stages_;
  std::vector<typename Stage::MicroBatch> mbs_;
  std::vector<int32_t> batch_tokens_, batch_targets_;
  WireCount wire_;
};

}  // namespace resbm::pipeline
