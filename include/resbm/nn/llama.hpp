#pragma once
// A LLaMA-style decoder, or a contiguous slice of one (a pipeline stage): optional token
// embedding, blocks [first, last), optional final RMSNorm + untied LM head + cross-entropy.
// Parameters are declared into an arena the caller owns, so a stage can put its codec's
// parameters beside the model's and step them all with one optimizer.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "resbm/nn/block.hpp"

namespace resbm::nn {

struct LayerRange {
  int first = 0;
  int last = -1;  // exclusive; -1 = n_layers
  bool embed = true;
  bool head = true;
};

// Everything one micro-batch keeps between forward and backward.
template <class T>
struct LlamaActivations {
  int64_t batch = 0;
  Buffer<int32_t> tokens, targets;
  Buffer<T> input;                            // x entering the first block [N, C]
  std::vector<Buffer<T>> outs;                // output of each block [N, C]
  std::vector<BlockActivations<T>> blocks;
  Buffer<T> norm, rstd, logits, losses;       // head only
  Buffer<T> dres;                             // residual gradient [N, C]
};

template <class T>
class Llama {
 public:
  Llama(const LlamaConfig& c, ParamArena<T>& arena, LayerRange r = {}) : c_(c), r_(r), arena_(&arena) {
    c.validate();
    if (r_.last < 0) r_.last = c.n_layers;
    RESBM_CHECK(0 <= r_.first && r_.first <= r_.last && r_.last <= c.n_layers,
                cat("layer range [", r_.first, ", ", r_.last, ") is outside the model's ", c.n_layers, " layers"),
                "pick a range within [0, n_layers]");
    if (r_.embed) emb_ = arena.add("tok_embeddings.weight", {c.vocab, c.d_model}, ParamKind::embedding);
    for (int l = r_.first; l < r_.last; ++l) blocks_.emplace_back(c, l, arena);
    if (r_.head) {
      norm_ = arena.add("norm.weight", {c.d_model}, ParamKind::gain);
      head_ = arena.add("output.weight", {c.vocab, c.d_model}, ParamKind::head);
    }
    rope_ = std::make_unique<ops::RopeTable<T>>(c.seq_len, c.head_dim(), T(c.rope_theta));
  }

  const LlamaConfig& config() const { return c_; }
  const LayerRange& range() const { return r_; }
  ParamArena<T>& arena() { return *arena_; }

  // Draws the initial weights (after the arena is allocated).
  void init(uint64_t seed) {
    ParamArena<T>& a = *arena_;
    if (r_.embed) init_normal(a, emb_, seed, T(0.02));
    for (const auto& b : blocks_) b.init(a, seed);
    if (r_.head) {
      fill_constant(a.param(norm_), T(1));
      init_normal(a, head_, seed, T(0.02));
    }
  }

  LlamaActivations<T> make_activations(int64_t batch) const {
    RESBM_CHECK(batch > 0, cat("batch ", batch, " must be positive"), "pass --batch 1 or more");
    const int64_t N = batch * c_.seq_len, C = c_.d_model;
    LlamaActivations<T> s;
    s.batch = batch;
    s.tokens.resize(size_t(N));
    s.targets.resize(size_t(N));
    s.input.resize(size_t(N * C));
    s.dres.resize(size_t(N * C));
    s.outs.resize(blocks_.size());
    s.blocks.resize(blocks_.size());
    for (size_t i = 0; i < blocks_.size(); ++i) {
      s.outs[i].resize(size_t(N * C));
      s.blocks[i].resize(c_, batch);
    }
    if (r_.head) {
      s.norm.resize(size_t(N * C));
      s.rstd.resize(size_t(N));
      s.logits.resize(size_t(N * c_.vocab));
      s.losses.resize(size_t(N));
    }
    return s;
  }

  // Embedding slices read s.tokens; other slices read s.input (the boundary's decoded x).
  // Head slices read s.targets and return the mean loss; others leave their output in
  // output(s) and return 0.
  T forward(const Context& ctx, LlamaActivations<T>& s) {
    ParamArena<T>& a = *arena_;
    const int64_t B = s.batch, N = B * c_.seq_len, C = c_.d_model;
    if (r_.embed)
      ops::embedding_forward<T>(ctx, s.input.view({N, C}), s.tokens.view({N}), a.param(emb_));
    Tensor<const T> x = s.input.view({N, C});
    for (size_t i = 0; i < blocks_.size(); ++i) {
      blocks_[i].forward(ctx, a, s.blocks[i], *rope_, x, s.outs[i].view({N, C}), B);
      x = s.outs[i].view({N, C});
    }
    if (!r_.head) return T(0);
    ops::rmsnorm_forward<T>(ctx, s.norm.view({N, C}), s.rstd.view({N}), x, a.param(norm_), T(c_.norm_eps));
    ops::matmul_forward<T>(ctx, s.logits.view({N, c_.vocab}), s.norm.view({N, C}), a.param(head_));
    return ops::cross_entropy_forward<T>(ctx, s.losses.view({N}), s.logits.view({N, c_.vocab}), s.targets.view({N}));
  }

  // The slice's output [N, C] (the residual stream at the boundary) for non-head slices.
  Tensor<T> output(LlamaActivations<T>& s) const {
    const int64_t N = s.batch * c_.seq_len;
    return blocks_.empty() ? s.input.view({N, c_.d_model}) : s.outs.back().view({N, c_.d_model});
  }

  // Head slices start from the loss scaled by `loss_scale` (1/M for M accumulated
  // micro-batches); others from dout = dL/d output(s). Leaves dL/d input in input_grad(s)
  // (non-embedding slices). Parameter gradients accumulate into the arena.
  void backward(const Context& ctx, LlamaActivations<T>& s, Tensor<const T> dout, T loss_scale = T(1)) {
    ParamArena<T>& a = *arena_;
    const int64_t B = s.batch, N = B * c_.seq_len, C = c_.d_model;
    auto dres = s.dres.view({N, C});
    scratch_.reserve(c_, B);
    if (r_.head) {
      Tensor<const T> x = output(s);
      if (dlogits_.size() < size_t(N * c_.vocab)) dlogits_.resize(size_t(N * c_.vocab));
      dlogits_.zero();
      auto dl = Tensor<T>(dlogits_.data(), {N, c_.vocab});
      ops::cross_entropy_backward<T>(ctx, dl, s.logits.view({N, c_.vocab}), s.targets.view({N}), loss_scale / T(N));
      auto dnorm = scratch_.dln.view({N, C});
      scratch_.dln.zero();
      ops::matmul_backward<T>(ctx, dnorm, a.grad(head_), dl, s.norm.view({N, C}), a.param(head_));
      s.dres.zero();
      ops::rmsnorm_backward<T>(ctx, dres, a.grad(norm_), dnorm, x, a.param(norm_), s.rstd.view({N}));
    } else {
      expect_shape(dout, {N, C}, "gradient of the stage output");
      std::copy(dout.begin(), dout.end(), dres.begin());
    }
    for (size_t i = blocks_.size(); i-- > 0;) {
      Tensor<const T> x = i == 0 ? s.input.view({N, C}) : s.outs[i - 1].view({N, C});
      blocks_[i].backward(ctx, a, s.blocks[i], scratch_, *rope_, x, dres, B);
    }
    if (r_.embed) ops::embedding_backward<T>(ctx, a.grad(emb_), s.tokens.view({N}), Tensor<const T>(dres));
  }

  // Where the forward first produced a non-finite value ("input", "blocks.3" output,
  // "logits"), or "" when everything is finite: names the layer when a loss goes NaN.
  std::string first_nonfinite(const LlamaActivations<T>& s) const {
    auto finite = [](const Buffer<T>& b) {
      for (const T& x : b)
        if (!std::isfinite(x)) return false;
      return true;
    };
    if (!finite(s.input)) return r_.embed ? "tok_embeddings" : "input (the decoded boundary)";
    for (size_t i = 0; i < s.outs.size(); ++i)
      if (!finite(s.outs[i])) return "blocks." + std::to_string(r_.first + int(i));
    if (r_.head && !finite(s.logits)) return "output (logits)";
    return "";
  }

  // dL/d input [N, C] after backward (non-embedding slices).
  Tensor<T> input_grad(LlamaActivations<T>& s) const { return s.dres.view({s.batch * c_.seq_len, c_.d_model}); }

 private:
  LlamaConfig c_;
  LayerRange r_;
  ParamArena<T>* arena_;
  std::vector<Block<T>> blocks_;
  size_t emb_ = 0, norm_ = 0, head_ = 0;
  std::unique_ptr<ops::RopeTable<T>> rope_;
  BlockScratch<T> scratch_;
  Buffer<T> dlogits_;
};

}  // namespace resbm::nn
