#pragma once
// One pipeline stage's model: a slice of the LLaMA stack plus the codec halves at its
// boundaries — the decoder of the boundary it receives from, the encoder of the one it
// sends to — all in one arena, so one optimizer steps them together.
//
// Messages between stages are wire payloads (bytes) only: forward, the encoder's code of
// the residual stream; backward, the decoder's code of dL/dz. Where the bytes travel (a
// buffer, a thread's queue, a socket) is the runner's business, not the stage's.
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "resbm/codec/codec.hpp"
#include "resbm/nn/llama.hpp"
#include "resbm/pipeline/partition.hpp"

namespace resbm::pipeline {

template <class Codec>
  requires codec::BoundaryCodec<Codec>
class StageModel {
 public:
  using Encoder = typename Codec::template Encoder<float>;
  using Decoder = typename Codec::template Decoder<float>;

  // What one micro-batch keeps on this stage between its forward and its backward.
  struct MicroBatch {
    nn::LlamaActivations<float> acts;
    std::optional<typename Encoder::Activations> enc;
    std::optional<typename Decoder::Activations> dec;
    std::vector<std::byte> wire;  // forward payload this stage sends (non-last)
    std::vector<std::byte> grad;  // backward payload this stage sends (non-first)
    Buffer<float> dout;           // dL/d(stage output) rebuilt from the gradient wire
  };

  StageModel(const nn::LlamaConfig& cfg, int stage, int n_stages)
      : cfg_(cfg), stage_(stage), n_stages_(n_stages),
        model_(cfg, arena_, partition(cfg.n_layers, n_stages).at(size_t(stage))) {
    if (stage > 0) decoder_.emplace(boundary(stage - 1), arena_);
    if (stage + 1 < n_stages) encoder_.emplace(boundary(stage), arena_);
    arena_.allocate();
  }
  StageModel(const StageModel&) = delete;  // the model keeps a pointer to arena_
  StageModel& operator=(const StageModel&) = delete;

  int stage() const { return stage_; }
  int n_stages() const { return n_stages_; }
  bool first() const { return stage_ == 0; }
  bool last() const { return stage_ + 1 == n_stages_; }
  ParamArena<float>& arena() { return arena_; }
  nn::Llama<float>& model() { return model_; }

  // Same seed, same weights as the unpartitioned model (init draws by parameter name).
  void init(uint64_t seed) {
    model_.init(seed);
    if (decoder_) decoder_->init(seed);
    if (encoder_) encoder_->init(seed);
    constrain(seed);
  }

  // Codecs that keep the model in a subspace re-project this stage's residual writers;
  // called after init and after every optimizer step.
  void constrain(uint64_t seed) {
    if (decoder_) codec::constrain_model<Codec, float>(arena_, boundary(stage_ - 1), seed);
    if (encoder_) codec::constrain_model<Codec, float>(arena_, boundary(stage_), seed);
  }

  MicroBatch make_micro_batch(int64_t batch) const {
    const int64_t N = batch * cfg_.seq_len;
    MicroBatch mb{model_.make_activations(batch), std::nullopt, std::nullopt, {}, {}, {}};
    if (encoder_) {
      mb.enc.emplace(encoder_->make_activations(N));
      mb.wire.resize(encoder_->wire_bytes(N));
      mb.dout.resize(size_t(N * cfg_.d_model));
    }
    if (decoder_) {
      mb.dec.emplace(decoder_->make_activations(N));
      mb.grad.resize(decoder_->grad_bytes(N));
    }
    return mb;
  }

  // Bytes this stage receives per micro-batch of N tokens (forward / backward).
  size_t wire_in_bytes(int64_t N) const { return decoder_ ? decoder_->wire_bytes(N) : 0; }
  size_t grad_in_bytes(int64_t N) const { return encoder_ ? encoder_->grad_bytes(N) : 0; }

  // Stage 0 reads mb.acts.tokens; the others decode `wire_in` (the previous stage's
  // mb.wire). Every stage has the token ids from its own sampler (re-embedding uses them).
  // Non-last stages leave their payload in mb.wire; the last returns the mean loss.
  float forward(const Context& ctx, MicroBatch& mb, std::span<const std::byte> wire_in) {
    const int64_t N = mb.acts.batch * cfg_.seq_len;
    std::span<const int32_t> tokens(mb.acts.tokens.data(), size_t(N));
    if (decoder_) {
      RESBM_CHECK(wire_in.size() == decoder_->wire_bytes(N),
                  cat("stage ", stage_, " received ", wire_in.size(), " bytes but expects ", decoder_->wire_bytes(N)),
                  "run every stage with the same model, codec, --rank and --batch");
      decoder_->forward(ctx, *mb.dec, wire_in, tokens, mb.acts.input.view({N, cfg_.d_model}));
    }
    const float loss = model_.forward(ctx, mb.acts);
    if (encoder_) encoder_->forward(ctx, *mb.enc, model_.output(mb.acts), tokens, mb.wire);
    return loss;
  }

  // The last stage starts from its loss scaled by `loss_scale` (1/M for M micro-batches);
  // the others from `grad_in` (the next stage's mb.grad). Non-first stages leave their
  // payload in mb.grad. Parameter gradients accumulate into the arena.
  void backward(const Context& ctx, MicroBatch& mb, std::span<const std::byte> grad_in, float loss_scale) {
    const int64_t N = mb.acts.batch * cfg_.seq_len;
    Tensor<const float> dout;
    if (encoder_) {
      RESBM_CHECK(grad_in.size() == encoder_->grad_bytes(N),
                  cat("stage ", stage_, " received a gradient of ", grad_in.size(), " bytes but expects ",
                      encoder_->grad_bytes(N)),
                  "run every stage with the same model, codec, --rank and --batch");
      mb.dout.zero();
      auto d = mb.dout.view({N, cfg_.d_model});
      encoder_->backward(ctx, *mb.enc, grad_in, d);
      dout = d;
    }
    model_.backward(ctx, mb.acts, dout, loss_scale);
    if (decoder_) decoder_->backward(ctx, *mb.dec, model_.input_grad(mb.acts), mb.grad);
  }

  // Valid payloads standing for "nothing": the code of a zero residual (forward) and of a
  // zero gradient (backward). A step being skipped for non-finite values still has to
  // answer every message its neighbours wait for, and NaN is never sent.
  void send_zero_forward(const Context& ctx, MicroBatch& mb) {
    if (!encoder_) return;
    const int64_t N = mb.acts.batch * cfg_.seq_len;
    mb.dout.zero();
    encoder_->forward(ctx, *mb.enc, mb.dout.view({N, cfg_.d_model}),
                      std::span<const int32_t>(mb.acts.tokens.data(), size_t(N)), mb.wire);
  }
  void send_zero_backward(const Context& ctx, MicroBatch& mb) {
    if (!decoder_) return;
    const int64_t N = mb.acts.batch * cfg_.seq_len;
    mb.acts.dres.zero();
    decoder_->backward(ctx, *mb.dec, mb.acts.dres.view({N, cfg_.d_model}), mb.grad);
  }

 private:
  codec::Boundary boundary(int index) const { return {index, cfg_.d_model, cfg_.vocab}; }

  nn::LlamaConfig cfg_;
  int stage_, n_stages_;
  ParamArena<float> arena_;
  nn::Llama<float> model_;
  std::optional<Decoder> decoder_;
  std::optional<Encoder> encoder_;
};

}  // namespace resbm::pipeline
