#pragma once
// pipeline::LocalPipeline on one GPU: all S stages of a partitioned model in one process,
// run one after the other, every boundary message going through its codec's real wire
// payload in device memory (the bytes a link would carry, counted). With S = 1 it is plain
// training of the whole model.
//
// A stage is a CudaLlama slice plus the GPU halves of the codec at its boundaries (the
// decoder of the one it receives from, the encoder of the one it sends to), each with its
// own fp32 masters and optimizer (CudaAdamW or CudaMuon, as the config passed says: the
// CPU stage's one optimizer over its arena makes the same per-entry updates). One training
// step = M micro-batches (gradient accumulation, loss scaled by 1/M), one global gradient
// norm over every stage and codec half (one read-back), one clip factor, one optimizer step
// per parameter set: the CPU LocalPipeline's step, so the CPU and the GPU give the same
// losses to bf16 tolerance.
//
// Host syncs per micro-batch: one, the loss's read-back, which also brings back the wire
// statuses of every boundary (queued before it; a non-finite value at a boundary is reported
// with the CPU wire's message, before the loss is checked); per step: the gradient norm.
#include <cmath>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "resbm/codec/cuda/halves.cuh"
#include "resbm/nn/cuda/llama.cuh"
#include "resbm/optim/clip.hpp"
#include "resbm/optim/cuda/any.cuh"
#include "resbm/pipeline/local.hpp"
#include "resbm/pipeline/partition.hpp"

namespace resbm::pipeline {

template <class Codec>
  requires codec::HasCudaHalves<Codec>
class CudaStage {
 public:
  using Halves = codec::CudaHalves<Codec>;
  using Encoder = typename Halves::Encoder;
  using Decoder = typename Halves::Decoder;

  // What one micro-batch keeps on this stage between its forward and its backward.
  struct MicroBatch {
    nn::CudaLlamaActivations acts;
    std::optional<typename Encoder::Activations> enc;
    std::optional<typename Decoder::Activations> dec;
    DeviceBuffer<std::byte> wire;  // forward payload this stage sends (non-last)
    DeviceBuffer<std::byte> grad;  // backward payload this stage sends (non-first)
  };

  CudaStage(CudaContext& ctx, const nn::LlamaConfig& cfg, int stage, int n_stages,
            const optim::OptimizerConfig& oc)
      : cfg_(cfg),
        stage_(stage),
        model_(ctx, cfg, partition(cfg.n_layers, n_stages).at(size_t(stage))),
        model_opt_(ctx, model_, oc) {
    if (stage > 0) decoder_.emplace(ctx, boundary(stage - 1));
    if (stage + 1 < n_stages) encoder_.emplace(ctx, boundary(stage));
    if (decoder_) decoder_opt_.emplace(ctx, *decoder_, oc);
    if (encoder_) encoder_opt_.emplace(ctx, *encoder_, oc);
  }

  int stage() const { return stage_; }
  nn::CudaLlama& model() { return model_; }
  Encoder* encoder() { return encoder_ ? &*encoder_ : nullptr; }
  Decoder* decoder() { return decoder_ ? &*decoder_ : nullptr; }
  size_t params() const {
    return model_.count() + (decoder_ ? decoder_->layout().count() : 0) + (encoder_ ? encoder_->layout().count() : 0);
  }

  // Same seed, same weights as the unpartitioned model and the CPU stages.
  void init(uint64_t seed) {
    model_.init(seed);
    if (decoder_) decoder_->init(seed);
    if (encoder_) encoder_->init(seed);
  }

  MicroBatch make_micro_batch(int64_t batch) const {
    const int64_t N = batch * cfg_.seq_len;
    MicroBatch mb{model_.make_activations(batch), std::nullopt, std::nullopt, {}, {}};
    if (encoder_) {
      mb.enc.emplace(encoder_->make_activations(N));
      mb.wire.resize(encoder_->wire_bytes(N));
    }
    if (decoder_) {
      mb.dec.emplace(decoder_->make_activations(N));
      mb.grad.resize(decoder_->grad_bytes(N));
    }
    return mb;
  }

  // Stage 0 reads mb.acts.tokens; the others decode `wire_in` (the previous stage's
  // mb.wire). Non-last stages leave their payload in mb.wire.
  void forward(MicroBatch& mb, const DeviceBuffer<std::byte>* wire_in) {
    const int64_t N = mb.acts.batch * cfg_.seq_len;
    if (decoder_)
      decoder_->forward(*mb.dec, bytes(*wire_in), CudaTensor<const int32_t>(mb.acts.tokens.data(), {N}),
                        mb.acts.input.view({N, cfg_.d_model}));
    model_.forward(mb.acts);
    if (encoder_) encoder_->forward(*mb.enc, model_.output(mb.acts), mb.wire.view({int64_t(mb.wire.size())}));
  }

  // The last stage starts from its mean loss scaled by loss_scale; the others from
  // `grad_in` (the next stage's mb.grad). Parameter gradients accumulate.
  void backward(MicroBatch& mb, const DeviceBuffer<std::byte>* grad_in, float loss_scale) {
    if (encoder_) {
      auto dout = model_.output_grad(mb.acts);
      encoder_->backward(*mb.enc, bytes(*grad_in), dout);
      model_.backward(mb.acts, dout.data, loss_scale);
    } else {
      model_.backward(mb.acts, nullptr, loss_scale);
    }
    if (decoder_) decoder_->backward(*mb.dec, model_.input_grad(mb.acts), mb.grad.view({int64_t(mb.grad.size())}));
  }

  // The wire statuses of this micro-batch's boundary launches in one direction (decoder,
  // then encoder); the pipeline checks all of them with one synchronisation.
  std::vector<ops::CudaWireStatus*> statuses(MicroBatch& mb, bool forward) {
    std::vector<ops::CudaWireStatus*> out;
    if (decoder_) out.push_back(forward ? &mb.dec->fwd_status : &mb.dec->bwd_status);
    if (encoder_) out.push_back(forward ? &mb.enc->fwd_status : &mb.enc->bwd_status);
    return out;
  }

  void zero_grad() {
    model_.zero_grad();
    if (decoder_) decoder_->zero_grad();
    if (encoder_) encoder_->zero_grad();
  }

  // Every gradient array of the stage (model, then codec halves), for the global norm.
  void grad_arrays(std::vector<CudaTensor<const float>>& out) {
    auto add = [&](float* g, size_t n) {
      if (n > 0) out.push_back(CudaTensor<const float>(g, {int64_t(n)}));
    };
    add(model_.grads(), model_.size());
    if (decoder_) add(decoder_->grads(), decoder_->size());
    if (encoder_) add(encoder_->grads(), encoder_->size());
  }

  void step(float lr_scale, float grad_scale) {
    model_opt_.step(model_, lr_scale, grad_scale);
    if (decoder_) decoder_opt_->step(*decoder_, lr_scale, grad_scale);  // no launch for a half without parameters
    if (encoder_) encoder_opt_->step(*encoder_, lr_scale, grad_scale);
  }

 private:
  codec::Boundary boundary(int index) const { return {index, cfg_.d_model, cfg_.vocab}; }
  static CudaTensor<const std::byte> bytes(const DeviceBuffer<std::byte>& b) {
    return CudaTensor<const std::byte>(b.data(), {int64_t(b.size())});
  }

  nn::LlamaConfig cfg_;
  int stage_;
  nn::CudaLlama model_;
  std::optional<Decoder> decoder_;
  std::optional<Encoder> encoder_;
  optim::CudaAnyOptimizer model_opt_;
  std::optional<optim::CudaAnyOptimizer> decoder_opt_, encoder_opt_;
};

template <class Codec>
  requires codec::HasCudaHalves<Codec>
class CudaLocalPipeline {
 public:
  using Stage = CudaStage<Codec>;

  CudaLocalPipeline(CudaContext& ctx, const nn::LlamaConfig& cfg, int n_stages, int64_t micro_batch,
                    const optim::OptimizerConfig& oc = optim::AdamWConfig{})
      : ctx_(&ctx), cfg_(cfg), micro_batch_(micro_batch) {
    RESBM_CHECK(micro_batch > 0, cat("micro-batch of ", micro_batch, " sequences"), "pass --batch >= --micro-batches");
    for (int s = 0; s < n_stages; ++s) {
      stages_.push_back(std::make_unique<Stage>(ctx, cfg, s, n_stages, oc));
      mbs_.push_back(stages_.back()->make_micro_batch(micro_batch));
    }
    // What every step reads, gathered once (mbs_ no longer moves): the gradient arrays for
    // the global norm, and the wire statuses in the order the CPU pipeline would meet a
    // bad value (forwards by stage, then backwards from the last stage).
    for (auto& st : stages_) st->grad_arrays(grads_);
    for (size_t s = 0; s < stages_.size(); ++s)
      for (auto* st : stages_[s]->statuses(mbs_[s], true)) statuses_.push_back(st);
    for (size_t s = stages_.size(); s-- > 0;)
      for (auto* st : stages_[s]->statuses(mbs_[s], false)) statuses_.push_back(st);
  }

  std::vector<std::unique_ptr<Stage>>& stages() { return stages_; }
  const WireCount& wire() const { return wire_; }
  size_t params() const {
    size_t n = 0;
    for (const auto& s : stages_) n += s->params();
    return n;
  }

  void init(uint64_t seed) {
    for (auto& s : stages_) s->init(seed);
  }

  // One optimizer step on a batch of M micro-batches (host token ids and targets, M ·
  // micro_batch · seq each): forward and backward of each, global clip, step. Returns
  // {mean loss, gradient norm before clipping}.
  std::pair<double, double> train_step(const int32_t* tokens, const int32_t* targets, int64_t step,
                                       int micro_batches, float lr_scale, double clip) {
    for (auto& s : stages_) s->zero_grad();
    const int64_t N = micro_batch_ * cfg_.seq_len;
    const size_t S = stages_.size();
    double loss = 0;
    for (int m = 0; m < micro_batches; ++m) {
      load(tokens + m * N, targets + m * N);
      forward(true);
      for (size_t s = S; s-- > 0;) {
        const DeviceBuffer<std::byte>* grad_in = nullptr;
        if (s + 1 < S) {
          grad_in = &mbs_[s + 1].grad;
          wire_.add(false, double(grad_in->size()), N, cfg_.d_model);
        }
        stages_[s]->backward(mbs_[s], grad_in, 1.0f / float(micro_batches));
      }
      const double l = checked_loss();
      RESBM_CHECK(std::isfinite(l), cat("loss is ", l, " at step ", step, " (micro-batch ", m, ")"),
                  "lower --lr or raise --warmup");
      loss += l / micro_batches;
    }
    const double norm = std::sqrt(ops::sum_squares(*ctx_, grads_));
    RESBM_CHECK(std::isfinite(norm), cat("gradient norm is ", norm, " at step ", step), "lower --lr");
    const float coef = float(optim::clip_coefficient(norm, clip));
    for (auto& s : stages_) s->step(lr_scale, coef);
    return {loss, norm};
  }

  // Mean loss of a forward over one batch of M micro-batches (not counted as traffic).
  double evaluate(const int32_t* tokens, const int32_t* targets, int micro_batches) {
    const int64_t N = micro_batch_ * cfg_.seq_len;
    double sum = 0;
    for (int m = 0; m < micro_batches; ++m) {
      load(tokens + m * N, targets + m * N);
      forward(false);
      sum += checked_loss() / micro_batches;
    }
    return sum;
  }

 private:
  void load(const int32_t* tokens, const int32_t* targets) {
    for (size_t s = 0; s < stages_.size(); ++s)
      stages_[s]->model().set_batch(mbs_[s].acts, tokens, s + 1 == stages_.size() ? targets : nullptr);
  }

  void forward(bool counted) {
    for (size_t s = 0; s < stages_.size(); ++s) {
      const DeviceBuffer<std::byte>* wire_in = nullptr;
      if (s > 0) {
        wire_in = &mbs_[s - 1].wire;
        if (counted) wire_.add(true, double(wire_in->size()), micro_batch_ * cfg_.seq_len, cfg_.d_model);
      }
      stages_[s]->forward(mbs_[s], wire_in);
    }
  }

  // The last stage's mean loss of the micro-batch just run, after every boundary launch's
  // status: their read-backs are queued before the loss's, so its synchronisation brings
  // them back too, and the first bad one's Error is thrown before the loss is returned (a
  // non-finite value is named where it crossed a boundary, as on the CPU; statuses_ is in
  // the CPU pipeline's order).
  double checked_loss() {
    for (auto* st : statuses_) st->collect(*ctx_);
    const double l = stages_.back()->model().mean_loss(mbs_.back().acts);  // synchronises
    std::exception_ptr first;  // every status is reset, so the pipeline can go on after an error
    for (auto* st : statuses_) try {
        st->raise();
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    if (first) std::rethrow_exception(first);
    return l;
  }

  CudaContext* ctx_;
  nn::LlamaConfig cfg_;
  int64_t micro_batch_;
  std::vector<std::unique_ptr<Stage>> stages_;
  std::vector<typename Stage::MicroBatch> mbs_;
  std::vector<CudaTensor<const float>> grads_;
  std::vector<ops::CudaWireStatus*> statuses_;
  WireCount wire_;
};

}  // namespace resbm::pipeline
