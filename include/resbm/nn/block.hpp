#pragma once
// One decoder block: x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(·)). Written once over
// the ops; the residual gradient flows through a single buffer that each half adds into.
#include <cmath>
#include <string>

#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/nn/config.hpp"
#include "resbm/nn/init.hpp"
#include "resbm/ops/cpu/ops.hpp"

namespace resbm::nn {

// What one block keeps from forward for backward, for one micro-batch of N = B·T tokens.
template <class T>
struct BlockActivations {
  Buffer<T> ln1, rstd1, q, k, v, att, cache, mid, ln2, rstd2, gate, up, h;

  void resize(const LlamaConfig& c, int64_t B) {
    const int64_t N = B * c.seq_len, C = c.d_model, F = c.ffn_hidden();
    for (Buffer<T>* b : {&ln1, &q, &k, &v, &att, &mid, &ln2}) b->resize(size_t(N * C));
    for (Buffer<T>* b : {&rstd1, &rstd2}) b->resize(size_t(N));
    for (Buffer<T>* b : {&gate, &up, &h}) b->resize(size_t(N * F));
    cache.resize(size_t(ops::attention_cache_size(B, c.seq_len, c.n_heads)));
  }
};

// Gradient scratch shared by all blocks of a model (blocks run backward one at a time).
template <class T>
struct BlockScratch {
  Buffer<T> dln, datt, dq, dk, dv, dh, dgate, dup;
  int64_t batch = 0;

  // Grows to hold a micro-batch of B sequences; never shrinks.
  void reserve(const LlamaConfig& c, int64_t B) {
    if (B <= batch) return;
    batch = B;
    const int64_t N = B * c.seq_len, C = c.d_model, F = c.ffn_hidden();
    for (Buffer<T>* b : {&dln, &datt, &dq, &dk, &dv}) b->resize(size_t(N * C));
    for (Buffer<T>* b : {&dh, &dgate, &dup}) b->resize(size_t(N * F));
  }
};

template <class T>
class Block {
 public:
  Block(const LlamaConfig& c, int layer, ParamArena<T>& arena) : c_(c), layer_(layer) {
    const int64_t C = c.d_model, F = c.ffn_hidden();
    const std::string p = "blocks." + std::to_string(layer) + ".";
    ln1_ = arena.add(p + "attn_norm.weight", {C}, ParamKind::gain);
    wq_ = arena.add(p + "attn.wq.weight", {C, C}, ParamKind::matrix);
    wk_ = arena.add(p + "attn.wk.weight", {C, C}, ParamKind::matrix);
    wv_ = arena.add(p + "attn.wv.weight", {C, C}, ParamKind::matrix);
    wo_ = arena.add(p + "attn.wo.weight", {C, C}, ParamKind::matrix);
    ln2_ = arena.add(p + "mlp_norm.weight", {C}, ParamKind::gain);
    w1_ = arena.add(p + "mlp.w1.weight", {F, C}, ParamKind::matrix);
    w3_ = arena.add(p + "mlp.w3.weight", {F, C}, ParamKind::matrix);
    w2_ = arena.add(p + "mlp.w2.weight", {C, F}, ParamKind::matrix);
  }

  void init(ParamArena<T>& a, uint64_t seed) const {
    // Output projections write the residual stream: scaled down with depth (GPT-2).
    const T std = T(0.02), out_std = T(0.02 / std::sqrt(2.0 * c_.n_layers));
    for (size_t i : {ln1_, ln2_}) fill_constant(a.param(i), T(1));
    for (size_t i : {wq_, wk_, wv_, w1_, w3_}) init_normal(a, i, seed, std);
    for (size_t i : {wo_, w2_}) init_normal(a, i, seed, out_std);
  }

  // x [N, C] -> y [N, C]; y may not alias x.
  void forward(const Context& ctx, ParamArena<T>& a, BlockActivations<T>& s, const ops::RopeTable<T>& rope,
               Tensor<const T> x, Tensor<T> y, int64_t B) const {
    const int64_t T_ = c_.seq_len, H = c_.n_heads, D = c_.head_dim(), N = B * T_, C = c_.d_model,
                  F = c_.ffn_hidden();
    auto ln1 = s.ln1.view({N, C}), q = s.q.view({N, C}), k = s.k.view({N, C}), v = s.v.view({N, C});
    ops::rmsnorm_forward<T>(ctx, ln1, s.rstd1.view({N}), x, a.param(ln1_), T(c_.norm_eps));
    ops::matmul_forward<T>(ctx, q, ln1, a.param(wq_));
    ops::matmul_forward<T>(ctx, k, ln1, a.param(wk_));
    ops::matmul_forward<T>(ctx, v, ln1, a.param(wv_));
    auto q4 = q.reshape({B, T_, H, D}), k4 = k.reshape({B, T_, H, D}), v4 = v.reshape({B, T_, H, D});
    ops::rope_forward<T>(ctx, q4, rope);
    ops::rope_forward<T>(ctx, k4, rope);
    auto att4 = s.att.view({B, T_, H, D});
    ops::attention_forward<T>(ctx, att4, s.cache.view({int64_t(s.cache.size())}), q4, k4, v4);
    auto mid = s.mid.view({N, C});
    ops::matmul_forward<T>(ctx, mid, att4.reshape({N, C}), a.param(wo_));
    add_inplace(mid, x);
    auto ln2 = s.ln2.view({N, C}), gate = s.gate.view({N, F}), up = s.up.view({N, F}), h = s.h.view({N, F});
    ops::rmsnorm_forward<T>(ctx, ln2, s.rstd2.view({N}), mid, a.param(ln2_), T(c_.norm_eps));
    ops::matmul_forward<T>(ctx, gate, ln2, a.param(w1_));
    ops::matmul_forward<T>(ctx, up, ln2, a.param(w3_));
    ops::swiglu_forward<T>(ctx, h, gate, up);
    ops::matmul_forward<T>(ctx, y, h, a.param(w2_));
    add_inplace(y, Tensor<const T>(mid));
  }

  // dres [N, C] holds dL/dy on entry and dL/dx on exit. Parameter gradients accumulate.
  void backward(const Context& ctx, ParamArena<T>& a, BlockActivations<T>& s, BlockScratch<T>& g,
                const ops::RopeTable<T>& rope, Tensor<const T> x, Tensor<T> dres, int64_t B) const {
    const int64_t T_ = c_.seq_len, H = c_.n_heads, D = c_.head_dim(), N = B * T_, C = c_.d_model,
                  F = c_.ffn_hidden();
    // MLP half: y = mid + w2·swiglu(w1·ln2, w3·ln2)
    auto dh = g.dh.view({N, F}), dgate = g.dgate.view({N, F}), dup = g.dup.view({N, F});
    auto dln = g.dln.view({N, C});
    for (Buffer<T>* b : {&g.dh, &g.dgate, &g.dup, &g.dln}) b->zero();
    ops::matmul_backward<T>(ctx, dh, a.grad(w2_), dres, s.h.view({N, F}), a.param(w2_));
    ops::swiglu_backward<T>(ctx, dgate, dup, dh, s.gate.view({N, F}), s.up.view({N, F}));
    ops::matmul_backward<T>(ctx, dln, a.grad(w1_), dgate, s.ln2.view({N, C}), a.param(w1_));
    ops::matmul_backward<T>(ctx, dln, a.grad(w3_), dup, s.ln2.view({N, C}), a.param(w3_));
    ops::rmsnorm_backward<T>(ctx, dres, a.grad(ln2_), dln, s.mid.view({N, C}), a.param(ln2_),
                             s.rstd2.view({N}));
    // Attention half: mid = x + wo·attn(rope(wq·ln1), rope(wk·ln1), wv·ln1)
    auto datt = g.datt.view({N, C}), dq = g.dq.view({N, C}), dk = g.dk.view({N, C}), dv = g.dv.view({N, C});
    for (Buffer<T>* b : {&g.datt, &g.dq, &g.dk, &g.dv, &g.dln}) b->zero();
    auto att = s.att.view({N, C});
    ops::matmul_backward<T>(ctx, datt, a.grad(wo_), dres, att, a.param(wo_));
    auto q4 = s.q.view({B, T_, H, D}), k4 = s.k.view({B, T_, H, D}), v4 = s.v.view({B, T_, H, D});
    auto dq4 = dq.reshape({B, T_, H, D}), dk4 = dk.reshape({B, T_, H, D});
    ops::attention_backward<T>(ctx, dq4, dk4, dv.reshape({B, T_, H, D}), datt.reshape({B, T_, H, D}),
                               s.cache.view({int64_t(s.cache.size())}), q4, k4, v4, att.reshape({B, T_, H, D}));
    ops::rope_backward<T>(ctx, dq4, rope);
    ops::rope_backward<T>(ctx, dk4, rope);
    auto ln1 = s.ln1.view({N, C});
    ops::matmul_backward<T>(ctx, dln, a.grad(wq_), dq, ln1, a.param(wq_));
    ops::matmul_backward<T>(ctx, dln, a.grad(wk_), dk, ln1, a.param(wk_));
    ops::matmul_backward<T>(ctx, dln, a.grad(wv_), dv, ln1, a.param(wv_));
    ops::rmsnorm_backward<T>(ctx, dres, a.grad(ln1_), dln, x, a.param(ln1_), s.rstd1.view({N}));
  }

 private:
  static void add_inplace(Tensor<T> y, Tensor<const T> x) {
    const int64_t n = y.numel();
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  LlamaConfig c_;
  int layer_;
  size_t ln1_, wq_, wk_, wv_, wo_, ln2_, w1_, w3_, w2_;
};

}  // namespace resbm::nn
