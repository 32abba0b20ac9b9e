#pragma once
// The LLaMA-style decoder of resbm/nn/llama.hpp on the GPU, or a contiguous slice of it
// (a pipeline stage): optional token embedding, blocks [first, last), optional final
// RMSNorm + untied head + cross-entropy.
//
// Same parameters as nn::Llama<float>: the layout (names, shapes, kinds, offsets, 16-element
// padding) is declared by an nn::Llama<float> over a host ParamArena that is never
// allocated, so names and offsets cannot drift apart, and the initial weights are the same
// Philox draws (bitwise: tests/cuda/test_cuda_model.cu checks it).
//
// Precision: fp32 master weights, fp32 gradients (accumulated by cuBLASLt with beta = 1)
// and fp32 AdamW state, all in the arena layout; a bf16 copy of the weights that the
// forward and backward read (AdamW refreshes it); bf16 activations, residual stream and
// activation gradients; fp32 accumulation in every matmul, norm, softmax and the loss.
//
// Everything is asynchronous on ctx.stream except mean_loss() and grad_norm(), which read
// one number back.
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/cuda.cuh"
#include "resbm/nn/llama.hpp"

namespace resbm::nn {

// What one block keeps between forward and backward (bf16 unless noted). q, k, v are one
// buffer [3, N, C] and gate, up one [2, N, F], so each group is one batched GEMM's output.
// (Their gradients are laid out [N, 3C] and [N, 2F] instead: see project_backward.)
struct CudaBlockActivations {
  DeviceBuffer<bf16> ln1, qkv, att, mid, ln2, gu, h;
  DeviceBuffer<float> rstd1, rstd2, cache;
};

// Everything one micro-batch keeps between forward and backward.
struct CudaLlamaActivations {
  int64_t batch = 0;
  DeviceBuffer<int32_t> tokens, targets;  // [N]
  DeviceBuffer<bf16> input;               // x entering the first block [N, C]
  std::vector<DeviceBuffer<bf16>> outs;   // output of each block [N, C]
  std::vector<CudaBlockActivations> blocks;
  DeviceBuffer<bf16> norm, logits;  // head only: [N, C], [N, V] with rows V rounded up to 8 apart
  DeviceBuffer<float> rstd, losses;  // head only: [N], [N]
  DeviceBuffer<bf16> dres;           // residual gradient [N, C]
};

namespace cuda_detail_llama {

// How nn::Block::init and nn::Llama::init draw an entry, from its name and kind: gains are
// 1, the two projections that write the residual stream use 0.02/sqrt(2·layers), the rest
// 0.02. Kept as a rule here (not a call) so the draw can run on all host cores.
inline float init_std(const ParamInfo& p, int n_layers) {
  auto ends_with = [&](std::string_view suffix) {
    return p.name.size() >= suffix.size() && p.name.compare(p.name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("attn.wo.weight") || ends_with("mlp.w2.weight")) return float(0.02 / std::sqrt(2.0 * n_layers));
  return 0.02f;
}

}  // namespace cuda_detail_llama

class CudaLlama {
 public:
  CudaLlama(CudaContext& ctx, const LlamaConfig& c, LayerRange r = {})
      : ctx_(&ctx), c_(c), r_(r), decl_(c, layout_, r), rope_(c.seq_len, c.head_dim(), double(c.rope_theta)) {
    r_ = decl_.range();
    const int64_t hd = c.head_dim();
    RESBM_CHECK(hd == 32 || hd == 64 || hd == 128,
                cat("head dimension ", hd, " (d_model ", c.d_model, " / heads ", c.n_heads, ") is not 32, 64 or 128"),
                "choose --d-model / --heads in {32, 64, 128} for the CUDA model");
    RESBM_CHECK(c.d_model % 8 == 0 && c.ffn_hidden() % 8 == 0,
                cat("d_model ", c.d_model, ", ffn ", c.ffn_hidden(),
                    ": the CUDA model needs multiples of 8 (16-byte rows for cuBLASLt)"),
                "choose --d-model and --ffn divisible by 8");
    const auto& infos = layout_.infos();
    auto idx = [&](const std::string& name) { return layout_.find(name); };
    if (r_.embed) emb_ = idx("tok_embeddings.weight");
    for (int l = r_.first; l < r_.last; ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      BlockParams b{idx(p + "attn_norm.weight"), idx(p + "attn.wq.weight"), idx(p + "attn.wk.weight"),
                    idx(p + "attn.wv.weight"), idx(p + "attn.wo.weight"), idx(p + "mlp_norm.weight"),
                    idx(p + "mlp.w1.weight"), idx(p + "mlp.w3.weight"), idx(p + "mlp.w2.weight"), 0, 0};
      // The batched projections need the weights of a group at equal, positive distances.
      auto off = [&](size_t i) { return int64_t(layout_.info(i).offset); };
      if (off(b.wk) > off(b.wq) && off(b.wv) - off(b.wk) == off(b.wk) - off(b.wq)) b.qkv_stride = off(b.wk) - off(b.wq);
      if (off(b.w3) > off(b.w1)) b.gu_stride = off(b.w3) - off(b.w1);
      blocks_.push_back(b);
    }
    if (r_.head) {
      norm_ = idx("norm.weight");
      head_ = idx("output.weight");
    }
    n_ = layout_.size();
    (void)infos;
    params_.resize(n_);
    params16_.resize(n_);
    grads_.resize(n_);
    params_.zero(ctx.stream);
    params16_.zero(ctx.stream);
    grads_.zero(ctx.stream);
  }
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;

  // One batched GEMM for q, k, v and one for gate, up (forward and weight gradients), or
  // a GEMM per weight when off (the same sums; kept to measure and test the fusion).
  bool fuse_projections = true;

  const LlamaConfig& config() const { return c_; }
  const LayerRange& range() const { return r_; }
  // Names, shapes, kinds and offsets of the parameters (the arena is not allocated).
  const ParamArena<float>& layout() const { return layout_; }
  size_t size() const { return n_; }  // elements of the flat arrays, padding included
  size_t count() const { return layout_.count(); }

  float* params() { return params_.data(); }
  float* grads() { return grads_.data(); }
  bf16* params_bf16() { return params16_.data(); }
  const float* grads() const { return grads_.data(); }

  // The initial weights of nn::Llama<float>::init(seed), drawn on the host cores.
  void init(uint64_t seed) {
    std::vector<float> host(n_, 0.0f);
    for (const ParamInfo& p : layout_.infos()) {
      float* dst = host.data() + p.offset;
      const int64_t n = int64_t(p.numel);
      if (p.kind == ParamKind::gain) {
        for (int64_t i = 0; i < n; ++i) dst[i] = 1.0f;
        continue;
      }
      const float std = cuda_detail_llama::init_std(p, c_.n_layers);
      const uint64_t stream = name_stream(p.name);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) dst[i] = float(Philox::normal(seed, stream, uint64_t(i))) * std;
    }
    upload_params(host);
  }

  // Replaces the fp32 weights (arena layout, size() elements) and refreshes the bf16 copy.
  void upload_params(const std::vector<float>& host) {
    RESBM_CHECK(host.size() == n_, cat("upload of ", host.size(), " parameters into a model of ", n_),
                "pass an array in the model's arena layout (layout().size() elements)");
    params_.from_host(host.data(), n_);
    ops::cast_to_bf16(*ctx_, params16_.view({int64_t(n_)}), CudaTensor<const float>(params_.data(), {int64_t(n_)}));
  }
  std::vector<float> download_params() const { return params_.to_host(); }
  std::vector<float> download_grads() const { return grads_.to_host(); }

  void zero_grad() { grads_.zero(ctx_->stream); }

  CudaLlamaActivations make_activations(int64_t batch) const {
    RESBM_CHECK(batch > 0, cat("batch ", batch, " must be positive"), "pass --batch 1 or more");
    const size_t N = size_t(batch * c_.seq_len), C = size_t(c_.d_model), F = size_t(c_.ffn_hidden());
    CudaLlamaActivations s;
    s.batch = batch;
    s.tokens.resize(N);
    s.targets.resize(N);
    s.input.resize(N * C);
    s.dres.resize(N * C);
    s.outs.resize(blocks_.size());
    s.blocks.resize(blocks_.size());
    for (size_t i = 0; i < blocks_.size(); ++i) {
      s.outs[i].resize(N * C);
      CudaBlockActivations& b = s.blocks[i];
      for (DeviceBuffer<bf16>* x : {&b.ln1, &b.att, &b.mid, &b.ln2}) x->resize(N * C);
      b.qkv.resize(3 * N * C);
      b.gu.resize(2 * N * F);
      b.h.resize(N * F);
      b.rstd1.resize(N);
      b.rstd2.resize(N);
      b.cache.resize(size_t(ops::cuda_attention_cache_size(batch, c_.seq_len, c_.n_heads)));
    }
    if (r_.head) {
      s.norm.resize(N * C);
      s.rstd.resize(N);
      s.logits.resize(N * size_t(vocab_ld()));
      s.losses.resize(N);
    }
    return s;
  }

  // Copies a batch of token ids (and targets, for head slices) from the host.
  void set_batch(CudaLlamaActivations& s, const int32_t* tokens, const int32_t* targets) const {
    const size_t N = size_t(s.batch * c_.seq_len);
    if (tokens)
      RESBM_CUDA_CHECK(cudaMemcpyAsync(s.tokens.data(), tokens, N * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       ctx_->stream));
    if (targets)
      RESBM_CUDA_CHECK(cudaMemcpyAsync(s.targets.data(), targets, N * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       ctx_->stream));
  }

  // Embedding slices read s.tokens; others s.input. Head slices leave per-token losses in
  // s.losses (mean_loss reads them); others their output in output(s).
  void forward(CudaLlamaActivations& s) {
    CudaContext& ctx = *ctx_;
    const int64_t B = s.batch, N = B * c_.seq_len, C = c_.d_model;
    if (r_.embed) ops::embedding_forward(ctx, s.input.view({N, C}), s.tokens.view({N}), p16(emb_));
    const bf16* x = s.input.data();
    for (size_t i = 0; i < blocks_.size(); ++i) {
      block_forward(blocks_[i], s.blocks[i], x, s.outs[i].data(), B);
      x = s.outs[i].data();
    }
    if (!r_.head) return;
    ops::rmsnorm_forward(ctx, s.norm.view({N, C}), s.rstd.view({N}), cview(x, {N, C}), p16(norm_), c_.norm_eps);
    const int64_t V = c_.vocab, ldv = vocab_ld();
    ops::gemm<bf16>(ctx, false, true, N, V, C, 1.0f, s.norm.data(), C, p16(head_).data, C, 0.0f, s.logits.data(), ldv);
    ops::cross_entropy_forward(ctx, s.losses.view({N}), cview(s.logits.data(), {N, V}),
                               CudaTensor<const int32_t>(s.targets.data(), {N}), ldv);
  }

  // The mean loss of the last forward (head slices; synchronises).
  double mean_loss(CudaLlamaActivations& s) const {
    const int64_t N = s.batch * c_.seq_len;
    return ops::cross_entropy_mean(*ctx_, CudaTensor<const float>(s.losses.data(), {N}));
  }

  CudaTensor<bf16> output(CudaLlamaActivations& s) const {
    const int64_t N = s.batch * c_.seq_len;
    return blocks_.empty() ? s.input.view({N, c_.d_model}) : s.outs.back().view({N, c_.d_model});
  }
  CudaTensor<bf16> input_grad(CudaLlamaActivations& s) const {
    return s.dres.view({s.batch * c_.seq_len, c_.d_model});
  }
  // Where a caller may write dL/d output(s) for backward(s, output_grad(s).data) without a
  // copy: the residual gradient buffer that the backward starts from.
  CudaTensor<bf16> output_grad(CudaLlamaActivations& s) const { return input_grad(s); }

  // Head slices start from the mean loss scaled by loss_scale; others from dout = dL/d
  // output(s) (device, bf16 [N, C]). Parameter gradients accumulate (+=) into grads().
  void backward(CudaLlamaActivations& s, const bf16* dout = nullptr, float loss_scale = 1.0f) {
    CudaContext& ctx = *ctx_;
    const int64_t B = s.batch, N = B * c_.seq_len, C = c_.d_model, V = c_.vocab;
    reserve_scratch(B);
    auto dres = s.dres.view({N, C});
    if (r_.head) {
      const bf16* x = output(s).data;
      const int64_t ldv = vocab_ld();
      auto dl = dlogits_.view({N, V});
      ops::cross_entropy_backward(ctx, dl, cview(s.logits.data(), {N, V}), CudaTensor<const int32_t>(s.targets.data(), {N}),
                                  loss_scale / float(N), ldv);
      auto dnorm = dln_.view({N, C});
      ops::gemm<bf16>(ctx, false, false, N, C, V, 1.0f, dl.data, ldv, p16(head_).data, C, 0.0f, dnorm.data, C);
      ops::gemm<float>(ctx, true, false, V, C, N, 1.0f, dl.data, ldv, s.norm.data(), C, 1.0f, g32(head_).data, C);
      s.dres.zero(ctx.stream);
      ops::rmsnorm_backward(ctx, dres, g32(norm_), cview(dnorm.data, {N, C}), cview(x, {N, C}), p16(norm_),
                            CudaTensor<const float>(s.rstd.data(), {N}));
    } else {
      RESBM_CHECK(dout != nullptr, "backward of a slice without the head needs dout", "pass dL/d output(s)");
      if (dout != s.dres.data())  // a codec may have written it in place (output_grad)
        RESBM_CUDA_CHECK(cudaMemcpyAsync(s.dres.data(), dout, size_t(N * C) * sizeof(bf16), cudaMemcpyDeviceToDevice,
                                         ctx.stream));
    }
    for (size_t i = blocks_.size(); i-- > 0;) {
      const bf16* x = i == 0 ? s.input.data() : s.outs[i - 1].data();
      block_backward(blocks_[i], s.blocks[i], x, dres.data, B);
    }
    if (r_.embed)
      ops::embedding_backward(ctx, g32(emb_), CudaTensor<const int32_t>(s.tokens.data(), {N}), cview(dres.data, {N, C}));
  }

  // ‖grads‖₂ over the whole arena (deterministic; synchronises).
  double grad_norm() {
    const CudaTensor<const float> g(grads_.data(), {int64_t(n_)});
    return std::sqrt(ops::sum_squares(*ctx_, std::span(&g, 1)));
  }

 private:
  struct BlockParams {
    size_t ln1, wq, wk, wv, wo, ln2, w1, w3, w2;
    int64_t qkv_stride, gu_stride;  // arena distance wq→wk→wv and w1→w3 (0: not batchable)
  };

  // Row stride of the logits: the vocabulary rounded up to 8 (16-byte rows for cuBLASLt),
  // so a character vocabulary (65 for TinyShakespeare) needs no change to the model.
  int64_t vocab_ld() const { return (int64_t(c_.vocab) + 7) / 8 * 8; }

  static CudaTensor<const bf16> cview(const bf16* p, std::initializer_list<int64_t> dims) {
    return CudaTensor<const bf16>(p, dims);
  }
  CudaTensor<const bf16> p16(size_t i) const { return entry_view<cuda>(params16_.data(), layout_.info(i)); }
  CudaTensor<float> g32(size_t i) { return entry_view<cuda>(grads_.data(), layout_.info(i)); }

  void reserve_scratch(int64_t B) {
    if (B <= scratch_batch_) return;
    scratch_batch_ = B;
    const size_t N = size_t(B * c_.seq_len), C = size_t(c_.d_model), F = size_t(c_.ffn_hidden());
    for (DeviceBuffer<bf16>* x : {&dln_, &datt_}) x->resize(N * C);
    dqkv_.resize(3 * N * C);
    dh_.resize(N * F);
    dgu_.resize(2 * N * F);
    if (r_.head) dlogits_.resize(N * size_t(vocab_ld()));
  }

  // The q, k, v projections (or gate, up) of weights w[0..count): one batched GEMM from the
  // shared input when the weights are evenly spaced (w_stride > 0) and fuse_projections is
  // on, else one GEMM each. Outputs are adjacent [count, N, OC].
  void project(const bf16* in, int64_t N, int64_t K, const size_t* w, int count, int64_t w_stride, int64_t OC,
               bf16* out) {
    if (fuse_projections && w_stride > 0) {
      ops::gemm_batched<bf16>(*ctx_, false, true, N, OC, K, 1.0f, in, K, 0, p16(w[0]).data, K, w_stride, 0.0f, out,
                              OC, N * OC, count);
      return;
    }
    for (int i = 0; i < count; ++i)
      ops::gemm<bf16>(*ctx_, false, true, N, OC, K, 1.0f, in, K, p16(w[i]).data, K, 0.0f, out + i * N * OC, OC);
  }
  // Backward of project(). dout is [N, count·OC]: the gradients of the count outputs side by
  // side in each row. Weight gradients += doutᵢᵀ · in and din = Σᵢ doutᵢ · Wᵢ (written):
  // with the weights adjacent in the arena (w_stride = OC·K) they are one [count·OC, K]
  // matrix and each sum is one GEMM (K = count·OC for din, which per weight took count
  // GEMMs adding into din); else a GEMM per weight on dout's column blocks.
  void project_backward(const bf16* in, const bf16* dout, int64_t N, int64_t K, const size_t* w, int count,
                        int64_t w_stride, int64_t OC, bf16* din) {
    const int64_t ld = count * OC;
    if (fuse_projections && w_stride == OC * K) {
      ops::gemm<float>(*ctx_, true, false, ld, K, N, 1.0f, dout, ld, in, K, 1.0f, g32(w[0]).data, K);
      ops::gemm<bf16>(*ctx_, false, false, N, K, ld, 1.0f, dout, ld, p16(w[0]).data, K, 0.0f, din, K);
      return;
    }
    for (int i = 0; i < count; ++i) {
      ops::gemm<float>(*ctx_, true, false, OC, K, N, 1.0f, dout + i * OC, ld, in, K, 1.0f, g32(w[i]).data, K);
      ops::gemm<bf16>(*ctx_, false, false, N, K, OC, 1.0f, dout + i * OC, ld, p16(w[i]).data, K,
                      i == 0 ? 0.0f : 1.0f, din, K);
    }
  }

  // x [N, C] -> y [N, C]. The residual adds ride on the output projections: the GEMM
  // reads the residual as its C operand (beta = 1) and writes the sum, rounded once to bf16.
  void block_forward(const BlockParams& P, CudaBlockActivations& s, const bf16* x, bf16* y, int64_t B) {
    CudaContext& ctx = *ctx_;
    const int64_t T = c_.seq_len, H = c_.n_heads, D = c_.head_dim(), N = B * T, C = c_.d_model, F = c_.ffn_hidden();
    ops::rmsnorm_forward(ctx, s.ln1.view({N, C}), s.rstd1.view({N}), cview(x, {N, C}), p16(P.ln1), c_.norm_eps);
    bf16* q = s.qkv.data();
    bf16 *k = q + N * C, *v = k + N * C;
    const size_t wqkv[3] = {P.wq, P.wk, P.wv};
    project(s.ln1.data(), N, C, wqkv, 3, P.qkv_stride, C, q);
    ops::rope_forward(ctx, CudaTensor<bf16>(q, {2 * B, T, H, D}), rope_);  // q and k are adjacent: one launch
    ops::attention_forward(ctx, s.att.view({B, T, H, D}), s.cache.view({int64_t(s.cache.size())}),
                           cview(q, {B, T, H, D}), cview(k, {B, T, H, D}), cview(v, {B, T, H, D}));
    ops::gemm_add<bf16>(ctx, false, true, N, C, C, 1.0f, s.att.data(), C, p16(P.wo).data, C, x, s.mid.data(), C);
    ops::rmsnorm_forward(ctx, s.ln2.view({N, C}), s.rstd2.view({N}), cview(s.mid.data(), {N, C}), p16(P.ln2),
                         c_.norm_eps);
    bf16* gate = s.gu.data();
    bf16* up = gate + N * F;
    const size_t wgu[2] = {P.w1, P.w3};
    project(s.ln2.data(), N, C, wgu, 2, P.gu_stride, F, gate);
    ops::swiglu_forward(ctx, s.h.view({N, F}), cview(gate, {N, F}), cview(up, {N, F}));
    ops::gemm_add<bf16>(ctx, false, true, N, C, F, 1.0f, s.h.data(), F, p16(P.w2).data, F, s.mid.data(), y, C);
  }

  // dres [N, C] holds dL/dy on entry and dL/dx on exit (the norms' backward adds into it).
  void block_backward(const BlockParams& P, CudaBlockActivations& s, const bf16* x, bf16* dres_p, int64_t B) {
    CudaContext& ctx = *ctx_;
    const int64_t T = c_.seq_len, H = c_.n_heads, D = c_.head_dim(), N = B * T, C = c_.d_model, F = c_.ffn_hidden();
    const auto dres = cview(dres_p, {N, C});
    // MLP half: y = mid + w2·swiglu(w1·ln2, w3·ln2)
    ops::matmul_backward(ctx, dh_.view({N, F}), g32(P.w2), dres, cview(s.h.data(), {N, F}), p16(P.w2), false);
    const bf16* gate = s.gu.data();
    bf16* dgate = dgu_.data();  // [N, 2F]: dgate | dup
    ops::swiglu_backward(ctx, CudaTensor<bf16>(dgate, {N, F}), CudaTensor<bf16>(dgate + F, {N, F}),
                         cview(dh_.data(), {N, F}), cview(gate, {N, F}), cview(gate + N * F, {N, F}), 2 * F);
    const size_t wgu[2] = {P.w1, P.w3};
    project_backward(s.ln2.data(), dgate, N, C, wgu, 2, P.gu_stride, F, dln_.data());
    ops::rmsnorm_backward(ctx, CudaTensor<bf16>(dres_p, {N, C}), g32(P.ln2), cview(dln_.data(), {N, C}),
                          cview(s.mid.data(), {N, C}), p16(P.ln2), CudaTensor<const float>(s.rstd2.data(), {N}));
    // Attention half: mid = x + wo·attn(rope(wq·ln1), rope(wk·ln1), wv·ln1)
    ops::matmul_backward(ctx, datt_.view({N, C}), g32(P.wo), dres, cview(s.att.data(), {N, C}), p16(P.wo), false);
    const bf16* q = s.qkv.data();
    bf16* dq = dqkv_.data();  // [N, 3C]: dq | dk | dv
    bf16 *dk = dq + C, *dv = dq + 2 * C;
    ops::attention_backward(ctx, CudaTensor<bf16>(dq, {B, T, H, D}), CudaTensor<bf16>(dk, {B, T, H, D}),
                            CudaTensor<bf16>(dv, {B, T, H, D}), cview(datt_.data(), {B, T, H, D}),
                            s.cache.view({int64_t(s.cache.size())}), cview(q, {B, T, H, D}),
                            cview(q + N * C, {B, T, H, D}), cview(q + 2 * N * C, {B, T, H, D}),
                            cview(s.att.data(), {B, T, H, D}), &rope_, 3 * C);  // dq, dk rotated back
    const size_t wqkv[3] = {P.wq, P.wk, P.wv};
    project_backward(s.ln1.data(), dq, N, C, wqkv, 3, P.qkv_stride, C, dln_.data());
    ops::rmsnorm_backward(ctx, CudaTensor<bf16>(dres_p, {N, C}), g32(P.ln1), cview(dln_.data(), {N, C}),
                          cview(x, {N, C}), p16(P.ln1), CudaTensor<const float>(s.rstd1.data(), {N}));
  }

  CudaContext* ctx_;
  LlamaConfig c_;
  LayerRange r_;
  ParamArena<float> layout_;  // declared, never allocated: names, shapes, offsets
  Llama<float> decl_;         // declares layout_ exactly as the CPU model does
  ops::CudaRopeTable rope_;
  std::vector<BlockParams> blocks_;
  size_t emb_ = 0, norm_ = 0, head_ = 0, n_ = 0;
  DeviceBuffer<float> params_, grads_;
  DeviceBuffer<bf16> params16_;
  DeviceBuffer<bf16> dln_, datt_, dqkv_, dh_, dgu_, dlogits_;
  int64_t scratch_batch_ = 0;
};

}  // namespace resbm::nn
