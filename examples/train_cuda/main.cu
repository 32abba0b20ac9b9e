// resbm-train-cuda: resbm-train's model and AdamW on one GPU (bf16 compute, fp32 master
// weights, gradients and optimizer state). Byte tokenizer (vocabulary 256) over a text
// file; warmup + cosine schedule and global-norm clipping as resbm-train. Ends with one
// machine-readable line `RESULT {json}`; tokens_per_s counts the steps after the first
// --skip-steps (cuBLASLt plan creation and allocations happen in the first one).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "resbm/data/sampler.hpp"
#include "resbm/data/tokenizer.hpp"
#include "resbm/io/cli.hpp"
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"
#include "resbm/nn/cuda/llama.cuh"
#include "resbm/optim/schedule.hpp"

using namespace resbm;

namespace {

struct Options {
  std::string data = RESBM_DEFAULT_DATA;
  int d_model = 128, layers = 4, heads = 4, seq = 128, batch = 16, ffn = 0, device = 0;
  int64_t steps = 600, warmup = 30, skip_steps = 2;
  double lr = 2e-3, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  uint64_t seed = 1;
  int64_t eval_every = 0, eval_batches = 8;
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

int run(int argc, char** argv) {
  Options o;
  io::Cli cli("resbm-train-cuda", "train a LLaMA-style model on one GPU (bytes of a text file); ends with RESULT {json}");
  cli.flag("data", &o.data, "text file to train on (byte tokenizer, vocabulary 256)")
      .flag("d-model", &o.d_model, "residual width")
      .flag("layers", &o.layers, "number of decoder blocks")
      .flag("heads", &o.heads, "attention heads (d_model / heads in {32, 64, 128})")
      .flag("ffn", &o.ffn, "SwiGLU hidden width (0 = 8/3 d_model rounded up to 32)")
      .flag("seq", &o.seq, "sequence length")
      .flag("batch", &o.batch, "sequences per step")
      .flag("steps", &o.steps, "training steps")
      .flag("lr", &o.lr, "peak AdamW learning rate")
      .flag("warmup", &o.warmup, "linear warmup steps")
      .flag("min-lr-ratio", &o.min_lr_ratio, "cosine decay floor as a fraction of --lr")
      .flag("weight-decay", &o.weight_decay, "decoupled weight decay (not on norm gains)")
      .flag("clip", &o.clip, "global gradient-norm clip (0 = off)")
      .flag("seed", &o.seed, "seed of weights and batch sampling")
      .flag("device", &o.device, "CUDA device id")
      .flag("skip-steps", &o.skip_steps, "first steps left out of tokens_per_s (warm-up)")
      .flag("eval-every", &o.eval_every, "validate every N steps (0 = only at the end)")
      .flag("eval-batches", &o.eval_batches, "validation batches per evaluation");
  if (!cli.parse(argc, argv)) return 0;
  RESBM_CHECK(o.steps > 0 && o.batch > 0, "--steps and --batch must be positive", "pass positive values");
  RESBM_CHECK(o.warmup >= 0 && o.eval_every >= 0 && o.eval_batches > 0 && o.skip_steps >= 0,
              "--warmup, --eval-every, --skip-steps must be >= 0 and --eval-batches > 0", "fix the flag values");

  const std::string corpus = io::read_file(o.data, "data file", uint64_t(1) << 34);
  const std::vector<int32_t> ids = data::ByteTokenizer{}.encode(corpus);
  const data::Split split = data::split_train_val(ids);

  nn::LlamaConfig cfg;
  cfg.vocab = 256;
  cfg.d_model = o.d_model;
  cfg.n_layers = o.layers;
  cfg.n_heads = o.heads;
  cfg.seq_len = o.seq;
  cfg.ffn = o.ffn;

  CudaContext ctx(o.device);
  nn::CudaLlama model(ctx, cfg);
  model.init(o.seed);
  optim::AdamWConfig oc;
  oc.lr = float(o.lr);
  oc.weight_decay = float(o.weight_decay);
  nn::CudaAdamW opt(ctx, model, oc);
  auto acts = model.make_activations(o.batch);

  const data::BatchSampler train_data(split.train, o.batch, cfg.seq_len, o.seed);
  const data::BatchSampler val_data(split.val, o.batch, cfg.seq_len, o.seed);
  const int64_t tokens_per_step = int64_t(o.batch) * cfg.seq_len;
  std::vector<int32_t> tok(static_cast<size_t>(tokens_per_step)), tgt(static_cast<size_t>(tokens_per_step));
  auto evaluate = [&] {
    const int64_t n = std::min<int64_t>(o.eval_batches, val_data.eval_batches());
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      val_data.eval_batch(i, tok.data(), tgt.data());
      model.set_batch(acts, tok.data(), tgt.data());
      model.forward(acts);
      sum += model.mean_loss(acts);
    }
    return sum / double(n);
  };

  std::fprintf(stderr, "resbm-train-cuda: %zu parameters, d_model %d, %d layers, %d heads, seq %d, batch %d on %s\n",
               model.count(), cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.seq_len, o.batch, ctx.props.name);
  double timed_s = 0, recent_loss = 0, val_loss = NAN, last_norm = 0;
  int64_t timed = 0, recent = 0;
  const double t_run = now_s();
  for (int64_t step = 0; step < o.steps; ++step) {
    const double t0 = now_s();
    train_data.batch(step, tok.data(), tgt.data());
    model.set_batch(acts, tok.data(), tgt.data());
    model.zero_grad();
    model.forward(acts);
    model.backward(acts);
    const double norm = model.grad_norm();
    const double loss = model.mean_loss(acts);
    RESBM_CHECK(std::isfinite(loss) && std::isfinite(norm),
                cat("loss ", loss, ", gradient norm ", norm, " at step ", step), "lower --lr or raise --warmup");
    const float lr_scale = optim::lr_multiplier(step, std::min(o.warmup, o.steps), o.steps, float(o.min_lr_ratio));
    opt.step(model, lr_scale, nn::clip_coefficient(norm, o.clip));
    ctx.synchronize();
    const double dt = now_s() - t0;
    if (step >= o.skip_steps) {
      timed_s += dt;
      ++timed;
    }
    last_norm = norm;
    if (o.steps - step <= 20) {
      recent_loss += loss;
      ++recent;
    }
    if (step < 3 || (step + 1) % 20 == 0 || step + 1 == o.steps)
      std::fprintf(stderr, "step %5lld loss %.4f norm %.3f lr_scale %.3f %.1f ms\n", (long long)(step + 1), loss,
                   norm, double(lr_scale), 1e3 * dt);
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
      val_loss = evaluate();
      std::fprintf(stderr, "step %lld: val_loss %.4f\n", (long long)(step + 1), val_loss);
    }
  }
  val_loss = evaluate();
  const double tps = timed ? double(timed * tokens_per_step) / timed_s : 0.0;

  io::Json result = io::Json::object();
  result.set("val_loss", val_loss);
  result.set("train_loss", recent ? recent_loss / double(recent) : NAN);
  result.set("grad_norm", last_norm);
  result.set("tokens_per_s", tps);
  result.set("step_ms", timed ? 1e3 * timed_s / double(timed) : 0.0);
  result.set("steps", o.steps);
  result.set("params", model.count());
  result.set("d_model", cfg.d_model);
  result.set("n_layers", cfg.n_layers);
  result.set("n_heads", cfg.n_heads);
  result.set("seq_len", cfg.seq_len);
  result.set("batch", o.batch);
  result.set("ffn", cfg.ffn_hidden());
  result.set("vocab", cfg.vocab);
  result.set("optimizer", "adamw");
  result.set("device", std::string(ctx.props.name));
  result.set("seed", double(o.seed));
  result.set("wall_s", now_s() - t_run);
  std::printf("RESULT %s\n", result.dump().c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resbm-train-cuda: error: %s\n", e.what());
    return 1;
  }
}
