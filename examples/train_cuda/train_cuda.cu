// The GPU training loop behind `resbm-train --device cuda` and `resbm-train-cuda`:
// resbm-train's model, Muon or AdamW, warmup + cosine schedule, global-norm clipping, evaluation
// and metrics on one GPU (bf16 compute, fp32 master weights, gradients and optimizer
// state), and with --stages S the partitioned model with a codec at every boundary, all
// stages in this process on this GPU (pipeline::CudaLocalPipeline: the wire payloads are
// real and counted, as the CPU's one-process pipeline). It parses resbm-train's whole flag
// set, so a run can switch devices by one flag, and refuses by name what it cannot do
// (checkpoints, links, codecs without GPU halves) instead of silently ignoring it.
// Ends with one machine-readable line `RESULT {json}`; tokens_per_s and step_ms leave out
// the first --skip-steps steps (cuBLASLt plan creation and allocations happen in the first).
#include <cuda_profiler_api.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "resbm/data/sampler.hpp"
#include "resbm/data/tokenizer.hpp"
#include "resbm/io/cli.hpp"
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"
#include "resbm/io/metrics.hpp"
#include "resbm/codec/presets.hpp"
#include "resbm/pipeline/cuda/local.cuh"
#include "../train/optimizer.hpp"
#include "../train/result_keys.hpp"
#include "resbm/optim/schedule.hpp"

using namespace resbm;

namespace {

struct Options {
  std::string data = RESBM_DEFAULT_DATA;
  std::string tokenizer = "char", device = "cuda", optimizer = "muon", metrics;
  int d_model = 128, layers = 4, heads = 4, seq = 128, batch = 16, ffn = 0, threads = 0;
  int64_t steps = 600, warmup = 30, skip_steps = 2, profile_step = -1;
  double lr = 0, adam_lr = 0, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  uint64_t seed = 1;
  int64_t eval_every = 0, eval_batches = 8;
  bool fuse_projections = true, autotune = true;
  std::string codec = "resbm";
  int stages = 1, micro_batches = 1, rank = 2;
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// "cuda", "cuda:N" or "N" -> N.
int device_id(const std::string& d) {
  std::string n = d.rfind("cuda", 0) == 0 ? d.substr(4) : d;
  if (!n.empty() && n[0] == ':') n = n.substr(1);
  if (n.empty()) return 0;
  RESBM_CHECK(n.find_first_not_of("0123456789") == std::string::npos && n.size() < 4,
              cat("--device '", d, "' is not cuda, cuda:N or N"), "pass --device cuda or --device cuda:1");
  return std::stoi(n);
}

// The training loop for one codec (the codec of every boundary; unused with one stage).
template <class Codec>
int train(const Options& o, const nn::LlamaConfig& cfg, const data::Split& split) {
  CudaContext ctx(device_id(o.device));
  ctx.autotune = o.autotune;
  const optim::OptimizerConfig oc = examples::optimizer_config(o.optimizer, o.lr, o.adam_lr, o.weight_decay);
  const int64_t micro = o.batch / o.micro_batches;
  pipeline::CudaLocalPipeline<Codec> pipe(ctx, cfg, o.stages, micro, oc);
  for (auto& st : pipe.stages()) st->model().fuse_projections = o.fuse_projections;
  pipe.init(o.seed);

  const data::BatchSampler train_data(split.train, o.batch, cfg.seq_len, o.seed);
  const data::BatchSampler val_data(split.val, o.batch, cfg.seq_len, o.seed);
  const int64_t tokens_per_step = int64_t(o.batch) * cfg.seq_len;
  std::vector<int32_t> tok(static_cast<size_t>(tokens_per_step)), tgt(static_cast<size_t>(tokens_per_step));
  auto evaluate = [&] {
    const int64_t n = std::min<int64_t>(o.eval_batches, val_data.eval_batches());
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      val_data.eval_batch(i, tok.data(), tgt.data());
      sum += pipe.evaluate(tok.data(), tgt.data(), o.micro_batches);
    }
    return sum / double(n);
  };
  std::unique_ptr<io::MetricsLog> metrics;
  if (!o.metrics.empty()) metrics = std::make_unique<io::MetricsLog>(o.metrics);

  std::fprintf(stderr,
               "resbm-train --device cuda: %zu parameters, vocab %d (%s), d_model %d, %d layers, %d heads, seq %d, "
               "batch %d (%d micro-batches), %d stage(s)%s%s on %s\n",
               pipe.params(), cfg.vocab, o.tokenizer.c_str(), cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.seq_len,
               o.batch, o.micro_batches, o.stages, o.stages > 1 ? ", codec " : "",
               o.stages > 1 ? cat(o.codec, " rank ", o.rank).c_str() : "", ctx.props.name);
  double timed_s = 0, all_s = 0, recent_loss = 0, val_loss = NAN, last_norm = 0;
  int64_t timed = 0, recent = 0;
  const double t_run = now_s();
  for (int64_t step = 0; step < o.steps; ++step) {
    const double t0 = now_s();
    train_data.batch(step, tok.data(), tgt.data());
    const float lr_scale = optim::lr_multiplier(step, std::min(o.warmup, o.steps), o.steps, float(o.min_lr_ratio));
    if (step == o.profile_step) RESBM_CUDA_CHECK(cudaProfilerStart());
    const auto [loss, norm] = pipe.train_step(tok.data(), tgt.data(), step, o.micro_batches, lr_scale, o.clip);
    ctx.synchronize();
    if (step == o.profile_step) RESBM_CUDA_CHECK(cudaProfilerStop());
    const double dt = now_s() - t0;
    all_s += dt;
    if (step >= o.skip_steps) {
      timed_s += dt;
      ++timed;
    }
    last_norm = norm;
    if (o.steps - step <= 20) {  // train_loss in RESULT: mean over the last 20 steps, as resbm-train
      recent_loss += loss;
      ++recent;
    }
    if (step < 3 || (step + 1) % 20 == 0 || step + 1 == o.steps)
      std::fprintf(stderr, "step %5lld loss %.4f norm %.3f lr_scale %.3f %.1f ms\n", (long long)(step + 1), loss,
                   norm, double(lr_scale), 1e3 * dt);
    io::Json rec = io::Json::object();
    rec.set("step", step + 1);
    rec.set("train_loss", loss);
    rec.set("lr_scale", double(lr_scale));
    rec.set("grad_norm", norm);
    rec.set("tokens_per_s", double((step + 1) * tokens_per_step) / all_s);
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
      val_loss = evaluate();
      rec.set("val_loss", val_loss);
      std::fprintf(stderr, "step %lld: val_loss %.4f\n", (long long)(step + 1), val_loss);
    }
    if (metrics) metrics->write(rec);
  }
  val_loss = evaluate();
  if (metrics) {
    io::Json rec = io::Json::object();
    rec.set("step", o.steps);
    rec.set("val_loss", val_loss);
    metrics->write(rec);
  }
  const double tps = timed ? double(timed * tokens_per_step) / timed_s : 0.0;

  io::Json result = io::Json::object();
  result.set("val_loss", val_loss);
  result.set("train_loss", recent ? recent_loss / double(recent) : NAN);
  result.set("grad_norm", last_norm);
  result.set("tokens_per_s", tps);
  result.set("step_ms", timed ? 1e3 * timed_s / double(timed) : 0.0);
  result.set("steps", o.steps);
  examples::set_model_keys(result, cfg, pipe.params(), o.batch, o.micro_batches);
  result.set("tokenizer", o.tokenizer);
  result.set("optimizer", o.optimizer);
  result.set("stages", o.stages);
  result.set("autotune", o.autotune);
  if (o.stages > 1) {
    result.set("codec", o.codec);
    result.set("rank", o.rank);
    examples::set_wire_keys(result, pipe.wire());
  }
  result.set("device", std::string(ctx.props.name));
  result.set("seed", double(o.seed));
  result.set("wall_s", now_s() - t_run);
  std::printf("RESULT %s\n", result.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int resbm_train_cuda(int argc, char** argv) {
  Options o;
  io::Cli cli("resbm-train --device cuda",
              "train a LLaMA-style model on one GPU (Muon or AdamW, char or byte tokenizer), whole or as --stages pipeline "
              "stages in one process with a --codec at every boundary; ends with RESULT {json}");
  cli.flag("data", &o.data, "text file to train on")
      .flag("tokenizer", &o.tokenizer, "char (vocabulary from the corpus) or byte (256)")
      .flag("device", &o.device, "cuda, cuda:N or N (the GPU)")
      .flag("d-model", &o.d_model, "residual width")
      .flag("layers", &o.layers, "number of decoder blocks")
      .flag("heads", &o.heads, "attention heads (d_model / heads in {32, 64, 128})")
      .flag("ffn", &o.ffn, "SwiGLU hidden width (0 = 8/3 d_model rounded up to 32)")
      .flag("seq", &o.seq, "sequence length")
      .flag("batch", &o.batch, "sequences per step")
      .flag("steps", &o.steps, "training steps")
      .flag("lr", &o.lr, "peak learning rate (0 = optimizer default: adamw 2e-3, muon 0.02)")
      .flag("adam-lr", &o.adam_lr, "muon only: AdamW learning rate of embeddings, head, gains (0 = 2e-3)")
      .flag("warmup", &o.warmup, "linear warmup steps")
      .flag("min-lr-ratio", &o.min_lr_ratio, "cosine decay floor as a fraction of --lr")
      .flag("weight-decay", &o.weight_decay, "decoupled weight decay (not on norm gains)")
      .flag("clip", &o.clip, "global gradient-norm clip (0 = off)")
      .flag("optimizer", &o.optimizer, "muon (Newton-Schulz on cuBLASLt; AdamW for embeddings, head, gains) or adamw")
      .flag("seed", &o.seed, "seed of weights and batch sampling")
      .flag("threads", &o.threads, "host threads for the weight init (0 = all)")
      .flag("eval-every", &o.eval_every, "validate every N steps (0 = only at the end)")
      .flag("eval-batches", &o.eval_batches, "validation batches per evaluation")
      .flag("metrics", &o.metrics, "write per-step metrics as JSONL to this file")
      .flag("skip-steps", &o.skip_steps, "first steps left out of tokens_per_s and step_ms (warm-up)")
      .flag("profile-step", &o.profile_step,
            "bracket this step (0-based) with cudaProfilerStart/Stop, for ncu --profile-from-start off (-1 = none)")
      .flag("fuse-projections", &o.fuse_projections, "one batched GEMM for q/k/v and one for gate/up")
      .flag("autotune", &o.autotune,
            "time cuBLASLt's candidate algorithms for each GEMM shape in the first step and keep the fastest")
      .flag("stages", &o.stages, "pipeline stages, all on this GPU in this process (1 = the whole model)")
      .flag("micro-batches", &o.micro_batches, "micro-batches per step (gradient accumulation; divides --batch)")
      .flag("codec", &o.codec, "boundary codec between stages: resbm, dense (bf16) or int8 on the GPU")
      .flag("rank", &o.rank, "bottleneck width r of resbm (1, 2, 4, 8, 16, 32, 64)");
  // resbm-train's flags that the GPU path does not take: named in the error, not "unknown flag".
  cli.refuse({"stage", "schedule", "lookahead", "listen", "next", "run-id", "timeout", "max-frame-mb", "link-mbps",
              "link-latency-ms", "link-jitter-ms", "tls-cert", "tls-key", "tls-ca", "save", "save-every",
              "resume", "resume-step", "skip-nonfinite", "stop-after"},
             "is not supported with --device cuda yet", "drop it, or train on the CPU (--device cpu)");
  if (!cli.parse(argc, argv)) return 0;
  examples::check_optimizer_name(o.optimizer);
  RESBM_CHECK(o.steps > 0 && o.batch > 0, "--steps and --batch must be positive", "pass positive values");
  RESBM_CHECK(o.warmup >= 0 && o.eval_every >= 0 && o.eval_batches > 0 && o.skip_steps >= 0,
              "--warmup, --eval-every, --skip-steps must be >= 0 and --eval-batches > 0", "fix the flag values");
  RESBM_CHECK(o.profile_step >= -1 && o.profile_step < o.steps,
              cat("--profile-step ", o.profile_step, " is not a step of this run (0 .. ", o.steps - 1, ")"),
              "pass a step below --steps, or -1");
  RESBM_CHECK(o.micro_batches >= 1 && o.batch % o.micro_batches == 0,
              cat("--micro-batches ", o.micro_batches, " does not divide --batch ", o.batch),
              "pick --micro-batches among the divisors of --batch");
  if (o.threads > 0) omp_set_num_threads(o.threads);

  const std::string corpus = io::read_file(o.data, "data file", uint64_t(1) << 34);
  std::vector<int32_t> ids;
  int vocab = 0;
  if (o.tokenizer == "byte") {
    ids = data::ByteTokenizer{}.encode(corpus);
    vocab = 256;
  } else {
    RESBM_CHECK(o.tokenizer == "char", cat("unknown tokenizer '", o.tokenizer, "'"), "pass --tokenizer char or byte");
    const data::CharTokenizer tok = data::CharTokenizer::build(corpus);
    ids = tok.encode(corpus);
    vocab = tok.vocab_size();
  }
  const data::Split split = data::split_train_val(ids);

  nn::LlamaConfig cfg;
  cfg.vocab = vocab;
  cfg.d_model = o.d_model;
  cfg.n_layers = o.layers;
  cfg.n_heads = o.heads;
  cfg.seq_len = o.seq;
  cfg.ffn = o.ffn;
  (void)pipeline::partition(cfg.n_layers, o.stages);  // names a bad --stages before the GPU starts

  if (o.stages == 1) return train<codec::presets::DenseBf16>(o, cfg, split);  // no boundary
  int rc = 0;
  codec::with_codec(o.codec, o.rank, [&]<class Codec>() {
    if constexpr (codec::HasCudaHalves<Codec>)
      rc = train<Codec>(o, cfg, split);
    else
      fail(cat("codec '", o.codec, "' has no GPU halves"),
           "pass --codec resbm, dense or int8 with --device cuda, or train on the CPU (--device cpu)");
  });
  return rc;
}
