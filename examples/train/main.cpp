// resbm-train: the main job. Trains a LLaMA-style model on a text file (TinyShakespeare by
// default), prints progress, and ends with one machine-readable line `RESULT {json}`.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "resbm/resbm.hpp"

namespace fs = std::filesystem;
using namespace resbm;

namespace {

struct Options {
  std::string data = RESBM_DEFAULT_DATA;
  std::string tokenizer = "char";
  int d_model = 128, layers = 4, heads = 4, seq = 128, batch = 16, ffn = 0;
  int64_t steps = 600, warmup = 30;
  double lr = 0, adam_lr = 0, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  std::string optimizer = "muon";
  uint64_t seed = 1;
  int threads = 0;
  int64_t eval_every = 0, eval_batches = 8, save_every = 0, stop_after = 0;
  std::string metrics, save, resume;
  int stages = 1, micro_batches = 1, rank = 2;
  std::string codec = "resbm";
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

optim::AnyOptimizer make_optimizer(const Options& o, const ParamArena<float>& arena) {
  optim::AdamWConfig adam;
  adam.weight_decay = float(o.weight_decay);
  if (o.optimizer == "adamw") {
    adam.lr = o.lr > 0 ? float(o.lr) : 2e-3f;
    return optim::AnyOptimizer(optim::AdamW(arena, adam));
  }
  adam.lr = o.adam_lr > 0 ? float(o.adam_lr) : 2e-3f;
  optim::MuonConfig muon;
  muon.lr = o.lr > 0 ? float(o.lr) : 0.02f;
  muon.adamw = adam;
  return optim::AnyOptimizer(optim::Muon(arena, muon));
}

// The fields of a run that a checkpoint must agree with to be resumed.
io::Json config_record(const Options& o, const nn::LlamaConfig& c) {
  io::Json j = io::Json::object();
  j.set("tokenizer", o.tokenizer);
  j.set("vocab", c.vocab);
  j.set("d_model", c.d_model);
  j.set("layers", c.n_layers);
  j.set("heads", c.n_heads);
  j.set("seq", c.seq_len);
  j.set("ffn", c.ffn_hidden());
  j.set("batch", o.batch);
  j.set("optimizer", o.optimizer);
  j.set("seed", double(o.seed));
  j.set("stages", o.stages);
  j.set("codec", o.stages > 1 ? o.codec : std::string("none"));
  j.set("rank", o.stages > 1 ? o.rank : 0);
  j.set("micro_batches", o.micro_batches);
  return j;
}

struct Tokens {
  std::vector<int32_t> ids;
  int vocab = 0;
};

// Builds (or, on resume, reloads) the tokenizer, saves it with the run, encodes the corpus.
Tokens tokenize(const Options& o, const std::string& corpus) {
  const fs::path saved = fs::path(o.resume.empty() ? o.save : o.resume) / "tokenizer.json";
  auto run = [&](auto tok) {
    if (!o.save.empty()) {
      fs::create_directories(o.save);
      tok.save((fs::path(o.save) / "tokenizer.json").string());
    }
    return Tokens{tok.encode(corpus), tok.vocab_size()};
  };
  if (o.tokenizer == "byte") return run(data::ByteTokenizer{});
  RESBM_CHECK(o.tokenizer == "char", cat("unknown tokenizer '", o.tokenizer, "'"), "pass --tokenizer char or byte");
  if (!o.resume.empty()) return run(data::CharTokenizer::load(saved.string()));
  return run(data::CharTokenizer::build(corpus));
}

// The run's configuration as one JSON object: checked on resume, printed in RESULT.
template <class Codec>
int train(const Options& o, const nn::LlamaConfig& cfg, Context& ctx, const data::Split& split) {
  const data::BatchSampler train_data(split.train, o.batch, cfg.seq_len, o.seed);
  const data::BatchSampler val_data(split.val, o.batch, cfg.seq_len, o.seed);
  const int64_t tokens_per_step = int64_t(o.batch) * cfg.seq_len;
  const io::Json config = config_record(o, cfg);

  pipeline::LocalPipeline<Codec> pipe(cfg, o.stages, o.batch / o.micro_batches);
  pipe.init(o.seed);
  std::vector<optim::AnyOptimizer> opts;
  for (auto& stage : pipe.stages()) opts.push_back(make_optimizer(o, stage->arena()));

  auto stem = [](size_t s) { return "stage-" + std::to_string(s); };
  int64_t start = 0;
  if (!o.resume.empty()) {
    for (size_t s = 0; s < opts.size(); ++s) {
      io::Json record = io::load_checkpoint(o.resume, stem(s), pipe.stages()[s]->arena(), opts[s].state(), config);
      const int64_t at = record.at("step").as_int64();
      RESBM_CHECK(s == 0 || at == start, cat("checkpoint stages disagree: stage 0 is at step ", start,
                                             " but stage ", s, " at step ", at),
                  "resume from a directory written by one run");
      start = at;
      opts[s].set_steps(record.at("optimizer_steps").as_int64());
    }
    RESBM_CHECK(start <= o.steps, cat("checkpoint is at step ", start, " but --steps is ", o.steps),
                "pass --steps larger than the checkpoint's step to continue training");
    std::fprintf(stderr, "resumed from %s at step %lld\n", o.resume.c_str(), (long long)start);
  }
  auto save = [&](int64_t step) {
    for (size_t s = 0; s < opts.size(); ++s) {
      io::Json record = io::Json::object();
      record.set("step", step);
      record.set("optimizer_steps", opts[s].steps());
      record.set("config", config);
      io::save_checkpoint(o.save, stem(s), pipe.stages()[s]->arena(), opts[s].state(), record);
    }
  };

  std::unique_ptr<io::MetricsLog> metrics;
  if (!o.metrics.empty()) metrics = std::make_unique<io::MetricsLog>(o.metrics, start > 0);

  std::fprintf(stderr,
               "resbm-train: %zu parameters, d_model %d, %d layers, %d heads, seq %d, batch %d (%d micro-batches), "
               "%s, %d stage(s)%s, %d threads\n",
               pipe.params(), cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.seq_len, o.batch, o.micro_batches,
               o.optimizer.c_str(), o.stages, o.stages > 1 ? (", codec " + o.codec).c_str() : "", ctx.threads);
  io::Progress progress(o.steps);
  double train_time = 0, recent_loss = 0, val_loss = NAN;
  int64_t recent = 0, trained = 0;
  const double t_run = now_s();
  for (int64_t step = start; step < o.steps; ++step) {
    const double t0 = now_s();
    const float lr_scale = optim::lr_multiplier(step, std::min(o.warmup, o.steps), o.steps, float(o.min_lr_ratio));
    const auto [loss, norm] = pipe.train_step(ctx, train_data, step, o.micro_batches, opts, lr_scale, o.clip, o.seed);
    train_time += now_s() - t0;
    ++trained;

    if (o.steps - step <= 20) {  // train_loss in RESULT: mean over the last 20 steps
      recent_loss += loss;
      ++recent;
    }
    const double tps = double(trained * tokens_per_step) / train_time;
    progress.update(step + 1, loss, tps, now_s() - t_run);
    io::Json rec = io::Json::object();
    rec.set("step", step + 1);
    rec.set("train_loss", loss);
    rec.set("lr_scale", double(lr_scale));
    rec.set("grad_norm", norm);
    rec.set("tokens_per_s", tps);
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
      val_loss = pipe.evaluate(ctx, val_data, o.eval_batches);
      rec.set("val_loss", val_loss);
      std::fprintf(stderr, "\nstep %lld: val_loss %.4f\n", (long long)(step + 1), val_loss);
    }
    if (metrics) metrics->write(rec);
    if (!o.save.empty() && o.save_every > 0 && (step + 1) % o.save_every == 0) save(step + 1);
    if (o.stop_after > 0 && step + 1 == o.stop_after) {
      std::fprintf(stderr, "\nstopped after step %lld (--stop-after)\n", (long long)(step + 1));
      return 0;
    }
  }
  progress.finish();
  val_loss = pipe.evaluate(ctx, val_data, o.eval_batches);
  if (metrics) {
    io::Json rec = io::Json::object();
    rec.set("step", o.steps);
    rec.set("val_loss", val_loss);
    metrics->write(rec);
  }
  if (!o.save.empty()) save(o.steps);

  const pipeline::WireCount& wire = pipe.wire();
  io::Json result = io::Json::object();
  result.set("val_loss", val_loss);
  result.set("train_loss", recent ? recent_loss / double(recent) : NAN);
  result.set("tokens_per_s", trained ? double(trained * tokens_per_step) / train_time : 0.0);
  result.set("steps", o.steps);
  result.set("params", pipe.params());
  result.set("d_model", cfg.d_model);
  result.set("n_layers", cfg.n_layers);
  result.set("n_heads", cfg.n_heads);
  result.set("seq_len", cfg.seq_len);
  result.set("batch", o.batch);
  result.set("micro_batches", o.micro_batches);
  result.set("ffn", cfg.ffn_hidden());
  result.set("vocab", cfg.vocab);
  result.set("optimizer", o.optimizer);
  result.set("stages", o.stages);
  if (o.stages > 1) {
    result.set("codec", o.codec);
    result.set("rank", o.rank);
    result.set("wire_bytes_per_token", wire.bytes_per_token());
    result.set("wire_bytes_forward", wire.forward_bytes);
    result.set("wire_bytes_backward", wire.backward_bytes);
    result.set("compression_ratio", pipeline::compression_ratio(wire, cfg.d_model));
  }
  result.set("threads", ctx.threads);
  result.set("seed", double(o.seed));
  result.set("wall_s", now_s() - t_run);
  std::printf("RESULT %s\n", result.dump().c_str());
  std::fflush(stdout);
  return 0;
}

int run(int argc, char** argv) {
  Options o;
  io::Cli cli("resbm-train", "train a LLaMA-style model on a text file; ends with a line RESULT {json}");
  cli.flag("data", &o.data, "text file to train on")
      .flag("tokenizer", &o.tokenizer, "char (vocabulary from the corpus) or byte (256)")
      .flag("d-model", &o.d_model, "residual width")
      .flag("layers", &o.layers, "number of decoder blocks")
      .flag("heads", &o.heads, "attention heads (must divide --d-model)")
      .flag("ffn", &o.ffn, "SwiGLU hidden width (0 = 8/3 d_model rounded up to 32)")
      .flag("seq", &o.seq, "sequence length")
      .flag("batch", &o.batch, "sequences per step")
      .flag("steps", &o.steps, "training steps")
      .flag("lr", &o.lr, "peak learning rate (0 = optimizer default: adamw 2e-3, muon 0.02)")
      .flag("adam-lr", &o.adam_lr, "muon only: AdamW learning rate of embeddings, head, gains (0 = 2e-3)")
      .flag("warmup", &o.warmup, "linear warmup steps")
      .flag("min-lr-ratio", &o.min_lr_ratio, "cosine decay floor as a fraction of --lr")
      .flag("weight-decay", &o.weight_decay, "decoupled weight decay (AdamW entries)")
      .flag("clip", &o.clip, "global gradient-norm clip (0 = off)")
      .flag("optimizer", &o.optimizer, "adamw or muon")
      .flag("stages", &o.stages, "pipeline stages the layers are split into")
      .flag("codec", &o.codec, "boundary codec between stages: dense, fp32, int8, resbm-linear, resbm, subspace")
      .flag("rank", &o.rank, "bottleneck width r of resbm, resbm-linear, subspace (1, 2, 4, 8, 16, 32, 64)")
      .flag("micro-batches", &o.micro_batches, "micro-batches per step (gradient accumulation); divides --batch")
      .flag("seed", &o.seed, "seed of weights and batch sampling")
      .flag("threads", &o.threads, "CPU threads (0 = all)")
      .flag("eval-every", &o.eval_every, "validate every N steps (0 = only at the end)")
      .flag("eval-batches", &o.eval_batches, "validation batches per evaluation")
      .flag("metrics", &o.metrics, "write per-step metrics as JSONL to this file")
      .flag("save", &o.save, "write checkpoints (params, optimizer, tokenizer) to this directory")
      .flag("save-every", &o.save_every, "also checkpoint every N steps (needs --save)")
      .flag("resume", &o.resume, "continue from the checkpoint in this directory")
      .flag("stop-after", &o.stop_after, "stop after this step as if interrupted, no final eval (0 = run to --steps)");
  if (!cli.parse(argc, argv)) return 0;
  RESBM_CHECK(o.steps > 0, cat("--steps ", o.steps, " must be positive"), "pass --steps 1 or more");
  RESBM_CHECK(o.warmup >= 0 && o.eval_every >= 0 && o.save_every >= 0 && o.eval_batches > 0,
              "--warmup, --eval-every and --save-every must be >= 0, --eval-batches > 0", "fix the flag values");
  RESBM_CHECK(o.save_every == 0 || !o.save.empty(), "--save-every needs --save DIR", "pass --save DIR");
  RESBM_CHECK(o.optimizer == "adamw" || o.optimizer == "muon", cat("unknown optimizer '", o.optimizer, "'"),
              "pass --optimizer adamw or muon");

  RESBM_CHECK(o.resume.empty() || fs::is_directory(o.resume),
              cat("checkpoint directory '", o.resume, "' does not exist"),
              "pass --resume the directory that an earlier run wrote with --save");
  Context ctx(o.threads);
  const std::string corpus = io::read_file(o.data, "data file", uint64_t(1) << 34);
  const Tokens tokens = tokenize(o, corpus);
  const data::Split split = data::split_train_val(tokens.ids);

  nn::LlamaConfig cfg;
  cfg.vocab = tokens.vocab;
  cfg.d_model = o.d_model;
  cfg.n_layers = o.layers;
  cfg.n_heads = o.heads;
  cfg.seq_len = o.seq;
  cfg.ffn = o.ffn;
  RESBM_CHECK(o.micro_batches >= 1 && o.batch % o.micro_batches == 0,
              cat("--micro-batches ", o.micro_batches, " does not divide --batch ", o.batch),
              "pick --micro-batches among the divisors of --batch");
  if (o.stages == 1) return train<codec::presets::DenseFp32>(o, cfg, ctx, split);  // no boundary
  int rc = 0;
  codec::with_codec(o.codec, o.rank, [&]<class Codec>() { rc = train<Codec>(o, cfg, ctx, split); });
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resbm-train: error: %s\n", e.what());
    return 1;
  }
}
