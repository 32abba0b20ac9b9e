#pragma once
// The shape of a LLaMA-style decoder, validated before anything is allocated.
#include <cstdint>
#include <string>

#include "resbm/core/error.hpp"

namespace resbm::nn {

struct LlamaConfig {
  int vocab = 65;
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  int seq_len = 128;
  int ffn = 0;  // SwiGLU hidden width; 0 = 8/3·d_model rounded up to a multiple of 32
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;

  int head_dim() const { return d_model / n_heads; }
  int ffn_hidden() const { return ffn > 0 ? ffn : (8 * d_model / 3 + 31) / 32 * 32; }

  void validate() const {
    RESBM_CHECK(vocab >= 2, cat("vocab ", vocab, " is too small"), "use a tokenizer with at least 2 symbols");
    RESBM_CHECK(d_model > 0 && n_layers > 0 && n_heads > 0 && seq_len > 0,
                cat("d_model ", d_model, ", layers ", n_layers, ", heads ", n_heads, ", seq ", seq_len,
                    ": every size must be positive"),
                "pass positive --d-model, --layers, --heads and --seq");
    RESBM_CHECK(d_model % n_heads == 0,
                cat("d_model ", d_model, " is not divisible by n_heads ", n_heads),
                "choose --heads so that it divides --d-model (e.g. d_model 128 with 4 heads)");
    RESBM_CHECK(head_dim() % 2 == 0, cat("head dimension ", head_dim(), " is odd"),
                "RoPE rotates pairs: pick --d-model / --heads even");
    RESBM_CHECK(ffn >= 0, cat("ffn ", ffn, " is negative"), "pass --ffn 0 (auto) or a positive width");
    RESBM_CHECK(rope_theta > 0 && norm_eps > 0, "rope_theta and norm_eps must be positive",
                "leave them at their defaults (10000, 1e-5)");
  }
};

}  // namespace resbm::nn
