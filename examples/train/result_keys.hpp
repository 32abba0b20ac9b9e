#pragma once
// The RESULT keys that resbm-train (CPU) and its GPU loop share, so a script reading one
// reads the other: the model's shape and a pipeline's traffic.
#include <cstdint>

#include "resbm/io/json.hpp"
#include "resbm/nn/config.hpp"
#include "resbm/pipeline/local.hpp"

namespace resbm::examples {

inline void set_model_keys(io::Json& r, const nn::LlamaConfig& cfg, size_t params, int batch, int micro_batches) {
  r.set("params", params);
  r.set("d_model", cfg.d_model);
  r.set("n_layers", cfg.n_layers);
  r.set("n_heads", cfg.n_heads);
  r.set("seq_len", cfg.seq_len);
  r.set("batch", batch);
  r.set("micro_batches", micro_batches);
  r.set("ffn", cfg.ffn_hidden());
  r.set("vocab", cfg.vocab);
}

// Bytes that crossed the boundaries, both directions, and the ratio against dense bf16.
inline void set_wire_keys(io::Json& r, const pipeline::WireCount& wire) {
  r.set("wire_bytes_per_token", wire.bytes_per_token());
  r.set("wire_bytes_forward", wire.forward_bytes);
  r.set("wire_bytes_backward", wire.backward_bytes);
  r.set("wire_dense_bytes", wire.dense_bytes);
  r.set("compression_ratio", pipeline::compression_ratio(wire));
}

}  // namespace resbm::examples
