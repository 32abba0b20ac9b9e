// resbm-train: the main job. Trains a LLaMA-style model on a text file (TinyShakespeare by
// default), prints progress, and ends with one machine-readable line `RESULT {json}`.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "resbm/resbm.hpp"
#include "optimizer.hpp"
#include "result_keys.hpp"

namespace fs = std::filesystem;
using namespace resbm;

#ifdef RESBM_HAS_CUDA_TRAIN
int resbm_train_cuda(int argc, char** argv);  // examples/train_cuda/train_cuda.cu
#endif

namespace {

struct Options {
  std::string data = RESBM_DEFAULT_DATA;
  std::string tokenizer = "char";
  std::string device = "cpu";
  int d_model = 128, layers = 4, heads = 4, seq = 128, batch = 16, ffn = 0;
  int64_t steps = 600, warmup = 30;
  double lr = 0, adam_lr = 0, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  std::string optimizer = "muon";
  uint64_t seed = 1;
  int threads = 0;
  int64_t eval_every = 0, eval_batches = 8, save_every = 0, stop_after = 0;
  std::string metrics, save, resume;
  int64_t resume_step = 0;
  bool skip_nonfinite = false;
  int stages = 1, micro_batches = 1, rank = 2, lookahead = 0;
  std::string codec = "resbm", schedule = "1f1b";
  // One process per stage (--stage k): where to listen for stage k-1, where stage k+1 is.
  int stage = -1;
  std::string listen, next, run_id = "resbm";
  std::string tls_ca, tls_cert, tls_key;
  double timeout_s = 120, link_mbps = 0, link_latency_ms = 0, link_jitter_ms = 0, max_frame_mb = 256;
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

optim::AnyOptimizer make_optimizer(const Options& o, const ParamArena<float>& arena) {
  const optim::OptimizerConfig cfg = examples::optimizer_config(o.optimizer, o.lr, o.adam_lr, o.weight_decay);
  if (const auto* adam = std::get_if<optim::AdamWConfig>(&cfg)) return optim::AnyOptimizer(optim::AdamW(arena, *adam));
  return optim::AnyOptimizer(optim::Muon(arena, std::get<optim::MuonConfig>(cfg)));
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
  j.set("schedule", o.schedule);
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

// "host:port" -> {host, port}, with errors that name the flag.
std::pair<std::string, uint16_t> host_port(const std::string& flag, const std::string& text) {
  const auto colon = text.rfind(':');
  RESBM_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < text.size(),
              cat("--", flag, " '", text, "' is not HOST:PORT"), cat("pass e.g. --", flag, " 127.0.0.1:29500"));
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(text.substr(colon + 1), &used);
    if (used != text.size() - colon - 1) port = -1;
  } catch (const std::logic_error&) {
  }
  RESBM_CHECK(port >= 0 && port <= 65535, cat("--", flag, " '", text, "' has no valid port"),
              "pass a port between 0 and 65535");
  return {text.substr(0, colon), uint16_t(port)};
}

// Wraps a link in the shaper when --link-mbps / --link-latency-ms ask for one.
template <class L>
transport::AnyLink shape(const Options& o, L link, int stage) {
  if (o.link_mbps <= 0 && o.link_latency_ms <= 0 && o.link_jitter_ms <= 0) return transport::AnyLink(std::move(link));
  transport::ShapeOptions so;
  so.bytes_per_second = o.link_mbps * 1e6 / 8;
  so.latency = std::chrono::microseconds(int64_t(o.link_latency_ms * 1000));
  so.jitter = std::chrono::microseconds(int64_t(o.link_jitter_ms * 1000));
  so.seed = o.seed * 1000 + uint64_t(stage);
  return transport::AnyLink::make<transport::Shaped<L>>(std::move(link), so);
}

// The step a resumed run starts from (0 for a fresh run): --resume-step, or the newest
// step that every stage's manifest in the directory holds, so that all stages, threads or
// processes, pick the same one even when a stage died before its last save.
int64_t resume_step(const Options& o) {
  if (o.resume.empty()) return 0;
  if (o.resume_step > 0) return o.resume_step;
  std::vector<int64_t> common;
  for (int k = 0; k < o.stages; ++k) {
    const auto steps = io::checkpoint_steps(o.resume, "stage-" + std::to_string(k));
    RESBM_CHECK(!steps.empty(), cat("checkpoint directory '", o.resume, "' has no manifest for stage ", k),
                "pass --resume the directory every stage saved into with --save (or --resume-step N)");
    if (k == 0) {
      common = steps;
      continue;
    }
    std::vector<int64_t> keep;
    for (int64_t s : common)
      if (std::find(steps.begin(), steps.end(), s) != steps.end()) keep.push_back(s);
    common = keep;
  }
  RESBM_CHECK(!common.empty(), cat("the stages in '", o.resume, "' share no saved step"),
              "resume from a directory written by one run, or pass --resume-step N");
  return *std::max_element(common.begin(), common.end());
}

// What one stage reports at the end of the run.
struct StageResult {
  int stage = 0;
  double train_s = 0, wait_s = 0, val_loss = NAN, train_loss = NAN;
  int64_t skipped = 0;
  pipeline::WireCount sent;
  transport::LinkStats prev, next;
  size_t params = 0;
};

io::Json stage_json(const StageResult& r) {
  io::Json j = io::Json::object();
  j.set("stage", r.stage);
  j.set("params", r.params);
  j.set("bytes_sent", double(r.prev.bytes_sent + r.next.bytes_sent));
  j.set("bytes_received", double(r.prev.bytes_received + r.next.bytes_received));
  j.set("train_wire_bytes_sent", r.sent.forward_bytes + r.sent.backward_bytes);
  j.set("wait_share", r.train_s > 0 ? r.wait_s / r.train_s : 0.0);
  return j;
}

// One stage's whole run: resume, the step loop, evaluation, checkpoints. Every stage
// runs it, as a thread (--stages S) or as a process (--stage k); the last stage reports
// losses.
template <class Codec>
StageResult run_stage(const Options& o, const nn::LlamaConfig& cfg, const Context& ctx, const data::Split& split,
                      pipeline::StageModel<Codec>& stage, transport::AnyLink* prev, transport::AnyLink* next,
                      const std::atomic<bool>* stop) {
  const data::BatchSampler train_data(split.train, o.batch, cfg.seq_len, o.seed);
  const data::BatchSampler val_data(split.val, o.batch, cfg.seq_len, o.seed);
  const int64_t tokens_per_step = int64_t(o.batch) * cfg.seq_len;
  const io::Json config = config_record(o, cfg);
  const std::string stem = "stage-" + std::to_string(stage.stage());
  const bool reporter = stage.last();

  optim::AnyOptimizer opt = make_optimizer(o, stage.arena());
  int64_t start = 0;
  if (!o.resume.empty()) {
    const auto loaded = io::load_checkpoint(o.resume, stem, stage.arena(), opt.state(), config, resume_step(o));
    start = loaded.step;
    opt.set_steps(loaded.optimizer_steps);
    RESBM_CHECK(start <= o.steps, cat("checkpoint is at step ", start, " but --steps is ", o.steps),
                "pass --steps larger than the checkpoint's step to continue training");
    if (reporter) std::fprintf(stderr, "resumed from %s at step %lld\n", o.resume.c_str(), (long long)start);
  }
  auto save = [&](int64_t step) {
    io::save_checkpoint(o.save, stem, step, opt.steps(), stage.arena(), opt.state(), config);
  };

  pipeline::RunnerOptions ro;
  ro.schedule = o.schedule;
  ro.micro_batches = o.micro_batches;
  ro.lookahead = o.lookahead;
  ro.clip = o.clip;
  ro.seed = o.seed;
  ro.timeout = std::chrono::milliseconds(int64_t(o.timeout_s * 1000));
  ro.skip_nonfinite = o.skip_nonfinite;
  pipeline::StageRunner<Codec> runner(stage, opt, prev, next, ctx, ro, o.batch / o.micro_batches);

  std::unique_ptr<io::MetricsLog> metrics;
  if (reporter && !o.metrics.empty()) metrics = std::make_unique<io::MetricsLog>(o.metrics, start > 0);
  std::unique_ptr<io::Progress> progress;
  if (reporter) progress = std::make_unique<io::Progress>(o.steps);

  StageResult res;
  res.stage = stage.stage();
  res.params = stage.arena().count();
  double recent_loss = 0;
  int64_t recent = 0, trained = 0;
  const double t_run = now_s();
  for (int64_t step = start; step < o.steps; ++step) {
    if (stop && stop->load()) fail("stopped because another stage failed", "");
    const double t0 = now_s();
    const float lr_scale = optim::lr_multiplier(step, std::min(o.warmup, o.steps), o.steps, float(o.min_lr_ratio));
    const auto [loss, norm] = runner.train_step(train_data, step, lr_scale);
    res.train_s += now_s() - t0;
    ++trained;
    if (!reporter) {
      if (!o.save.empty() && o.save_every > 0 && (step + 1) % o.save_every == 0) save(step + 1);
      if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps)
        runner.evaluate(val_data, o.eval_batches);
      if (o.stop_after > 0 && step + 1 == o.stop_after) break;
      continue;
    }
    if (o.steps - step <= 20) {  // train_loss in RESULT: mean over the last 20 steps
      recent_loss += loss;
      ++recent;
    }
    const double tps = double(trained * tokens_per_step) / res.train_s;
    progress->update(step + 1, loss, tps, now_s() - t_run);
    io::Json rec = io::Json::object();
    rec.set("step", step + 1);
    rec.set("train_loss", loss);
    rec.set("lr_scale", double(lr_scale));
    rec.set("grad_norm", norm);
    rec.set("tokens_per_s", tps);
    if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < o.steps) {
      const double v = runner.evaluate(val_data, o.eval_batches);
      rec.set("val_loss", v);
      std::fprintf(stderr, "\nstep %lld: val_loss %.4f\n", (long long)(step + 1), v);
    }
    if (metrics) metrics->write(rec);
    if (!o.save.empty() && o.save_every > 0 && (step + 1) % o.save_every == 0) save(step + 1);
    if (o.stop_after > 0 && step + 1 == o.stop_after) {
      std::fprintf(stderr, "\nstopped after step %lld (--stop-after)\n", (long long)(step + 1));
      break;
    }
  }
  const bool stopped = o.stop_after > 0 && o.stop_after < o.steps && start < o.stop_after;
  if (!stopped) {
    if (progress) progress->finish();
    res.val_loss = runner.evaluate(val_data, o.eval_batches);
    if (metrics) {
      io::Json rec = io::Json::object();
      rec.set("step", o.steps);
      rec.set("val_loss", res.val_loss);
      metrics->write(rec);
    }
    if (!o.save.empty()) save(o.steps);
  }
  runner.flush();
  res.train_loss = recent ? recent_loss / double(recent) : NAN;
  res.wait_s = runner.wait_seconds();
  res.skipped = runner.skipped();
  if (res.skipped && reporter) std::fprintf(stderr, "skipped %lld non-finite step(s)\n", (long long)res.skipped);
  res.sent = runner.sent();
  if (prev) res.prev = prev->stats();
  if (next) res.next = next->stats();
  return res;
}

// Prints the run's RESULT line: losses from the last stage, traffic summed over stages.
void print_result(const Options& o, const nn::LlamaConfig& cfg, const Context& ctx,
                  const std::vector<StageResult>& stages, double wall_s, int64_t trained_steps) {
  const StageResult& last = stages.back();
  pipeline::WireCount wire;
  size_t params = 0;
  double train_s = 0;
  io::Json per_stage = io::Json::array();
  for (const auto& r : stages) {
    wire.forward_bytes += r.sent.forward_bytes;
    wire.backward_bytes += r.sent.backward_bytes;
    wire.tokens += r.sent.tokens;
    wire.messages += r.sent.messages;
    wire.dense_bytes += r.sent.dense_bytes;
    params += r.params;
    train_s = std::max(train_s, r.train_s);
    per_stage.push_back(stage_json(r));
  }
  io::Json result = io::Json::object();
  // JSON has no NaN: a stage that holds no loss (not the last) reports null.
  auto number = [](double x) { return std::isfinite(x) ? io::Json(x) : io::Json(nullptr); };
  result.set("val_loss", number(last.val_loss));
  result.set("train_loss", number(last.train_loss));
  result.set("tokens_per_s", train_s > 0 ? double(trained_steps) * o.batch * cfg.seq_len / train_s : 0.0);
  result.set("steps", o.steps);
  result.set("skipped_steps", last.skipped);
  examples::set_model_keys(result, cfg, params, o.batch, o.micro_batches);
  result.set("optimizer", o.optimizer);
  result.set("stages", o.stages);
  if (o.stages > 1) {
    result.set("stage", o.stage);
    result.set("schedule", o.schedule);
    result.set("lookahead", o.lookahead);
    result.set("codec", o.codec);
    result.set("rank", o.rank);
    examples::set_wire_keys(result, wire);
    result.set("per_stage", per_stage);
  }
  result.set("threads", ctx.threads);
  result.set("seed", double(o.seed));
  result.set("wall_s", wall_s);
  std::string text = result.dump();
  std::printf("RESULT %s\n", text.c_str());
  std::fflush(stdout);
}

void print_stage_table(const std::vector<StageResult>& stages) {
  std::fprintf(stderr, "\n%-6s %14s %14s %10s %10s\n", "stage", "bytes sent", "bytes recv", "ratio", "link wait");
  for (const auto& r : stages) {
    pipeline::WireCount w = r.sent;
    std::fprintf(stderr, "%-6d %14llu %14llu %9.1fx %9.1f%%\n", r.stage,
                 (unsigned long long)(r.prev.bytes_sent + r.next.bytes_sent),
                 (unsigned long long)(r.prev.bytes_received + r.next.bytes_received),
                 pipeline::compression_ratio(w),
                 r.train_s > 0 ? 100.0 * r.wait_s / r.train_s : 0.0);
  }
}

// All stages as threads of this process, neighbours joined by in-process links.
template <class Codec>
int train_threads(const Options& o, const nn::LlamaConfig& cfg, Context& ctx, const data::Split& split) {
  const int S = o.stages;
  std::vector<std::unique_ptr<pipeline::StageModel<Codec>>> stages;
  for (int s = 0; s < S; ++s) {
    stages.push_back(std::make_unique<pipeline::StageModel<Codec>>(cfg, s, S));
    stages.back()->init(o.seed);
  }
  std::vector<transport::AnyLink> to_next(static_cast<size_t>(S)), to_prev(static_cast<size_t>(S));
  transport::Limits limits;
  limits.max_payload = uint64_t(o.max_frame_mb * (1 << 20));
  for (int s = 0; s + 1 < S; ++s) {
    auto [a, b] = transport::make_in_process_pair(limits, cat("stage ", s), cat("stage ", s + 1));
    to_next[size_t(s)] = shape(o, std::move(a), s);
    to_prev[size_t(s + 1)] = shape(o, std::move(b), s + 1);
  }
  // Threads split between the stages; each stage's ops use its share.
  std::vector<std::unique_ptr<Context>> ctxs;
  for (int s = 0; s < S; ++s) ctxs.push_back(std::make_unique<Context>(std::max(1, ctx.threads / S)));
  std::fprintf(stderr, "resbm-train: %d stage thread(s), %s schedule, %d micro-batches, codec %s, %d threads each\n", S,
               o.schedule.c_str(), o.micro_batches, S > 1 ? o.codec.c_str() : "none", ctxs[0]->threads);
  std::vector<StageResult> results(static_cast<size_t>(S));
  std::atomic<bool> stop{false};
  const double t0 = now_s();
  pipeline::run_stage_threads(
      S,
      [&](int s) {
        results[size_t(s)] = run_stage<Codec>(o, cfg, *ctxs[size_t(s)], split, *stages[size_t(s)],
                                               s > 0 ? &to_prev[size_t(s)] : nullptr,
                                               s + 1 < S ? &to_next[size_t(s)] : nullptr, &stop);
      },
      [&](int s) {
        stop = true;
        to_prev[size_t(s)].close();
        to_next[size_t(s)].close();
      });
  const int64_t trained = (o.stop_after > 0 ? std::min(o.stop_after, o.steps) : o.steps);
  if (o.stop_after > 0 && o.stop_after < o.steps) return 0;
  if (S > 1) print_stage_table(results);
  print_result(o, cfg, ctx, results, now_s() - t0, trained - std::min<int64_t>(trained, resume_step(o)));
  return 0;
}

// One stage in this process; its neighbours are other processes reached over TCP.
template <class Codec>
int train_process(const Options& o, const nn::LlamaConfig& cfg, Context& ctx, const data::Split& split) {
  const int S = o.stages, k = o.stage;
  pipeline::StageModel<Codec> stage(cfg, k, S);
  stage.init(o.seed);
  transport::Handshake hs;
  hs.run_id = o.run_id;
  hs.stage = k;
  hs.n_stages = S;
  hs.config_hash = nn::name_stream(config_record(o, cfg).dump());
  transport::TcpOptions to;
  to.limits.max_payload = uint64_t(o.max_frame_mb * (1 << 20));
  to.stall_timeout = std::chrono::milliseconds(int64_t(o.timeout_s * 1000));
  to.connect_timeout = std::chrono::milliseconds(int64_t(o.timeout_s * 1000));
  to.accept_timeout = std::chrono::milliseconds(int64_t(o.timeout_s * 1000));
  // Bind first, so that the previous stage's connect finds a listener; then connect to the
  // next stage (its handshake completes once it accepts); then accept the previous one.
  const bool tls = !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty();
  RESBM_CHECK(!tls || (!o.tls_ca.empty() && !o.tls_cert.empty() && !o.tls_key.empty()),
              "TLS needs all of --tls-ca, --tls-cert and --tls-key",
              "pass the run's CA and this stage's certificate and key (examples/make_certs.sh makes them)");
  const transport::TlsOptions tls_files{o.tls_ca, o.tls_cert, o.tls_key};
  std::unique_ptr<transport::TcpListener> plain_listener;
  std::unique_ptr<transport::TlsListener> tls_listener;
  std::string listen_host;
  if (k > 0) {
    auto [host, port] = host_port("listen", o.listen);
    listen_host = host;
    if (tls)
      tls_listener = std::make_unique<transport::TlsListener>(host, port, tls_files);
    else
      plain_listener = std::make_unique<transport::TcpListener>(host, port);
  }
  transport::AnyLink prev, next;
  if (k + 1 < S) {
    auto [host, port] = host_port("next", o.next);
    transport::Handshake h = hs;
    h.expect_peer = k + 1;
    if (!tls)
      next = shape(o, transport::TcpLink::connect(host, port, h, to), k);
    else if (tls_listener)
      next = shape(o, tls_listener->connect(host, port, h, to), k);
    else
      next = shape(o, transport::TlsLink::connect(host, port, h, to, tls_files), k);
    if (!tls) transport::warn_if_plain_on_public(host);
  }
  if (k > 0) {
    transport::Handshake h = hs;
    h.expect_peer = k - 1;
    prev = tls ? shape(o, tls_listener->accept(h, to), k) : shape(o, plain_listener->accept(h, to), k);
    if (!tls) transport::warn_if_plain_on_public(listen_host);
  }
  std::fprintf(stderr, "resbm-train: stage %d of %d up (%s%s%s)\n", k, S, prev ? ("prev " + prev.peer()).c_str() : "",
               prev && next ? ", " : "", next ? ("next " + next.peer()).c_str() : "");
  const double t0 = now_s();
  StageResult r;
  try {
    r = run_stage<Codec>(o, cfg, ctx, split, stage, prev ? &prev : nullptr, next ? &next : nullptr, nullptr);
  } catch (...) {
    prev.close();
    next.close();
    throw;
  }
  prev.close();
  next.close();
  if (o.stop_after > 0 && o.stop_after < o.steps) return 0;
  const int64_t trained = o.steps - resume_step(o);
  print_result(o, cfg, ctx, {r}, now_s() - t0, trained);
  return 0;
}

int run(int argc, char** argv) {
  Options o;
  io::Cli cli("resbm-train", "train a LLaMA-style model on a text file; ends with a line RESULT {json}");
  cli.flag("data", &o.data, "text file to train on")
      .flag("tokenizer", &o.tokenizer, "char (vocabulary from the corpus) or byte (256)")
      .flag("device", &o.device, "cpu, or cuda (one GPU; see --device cuda --help)")
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
      .flag("schedule", &o.schedule, "pipeline schedule: gpipe or 1f1b")
      .flag("lookahead", &o.lookahead,
            "1f1b: extra in-flight micro-batches per downstream stage; hides link latency (1-2 over the "
            "internet) at the memory cost of their activations")
      .flag("stage", &o.stage, "run only this stage, as one process over TCP (-1 = all stages as threads here)")
      .flag("listen", &o.listen, "with --stage k > 0: HOST:PORT to accept stage k-1 on")
      .flag("next", &o.next, "with --stage k < S-1: HOST:PORT of stage k+1")
      .flag("run-id", &o.run_id, "name of the run; stages of another run are refused at the handshake")
      .flag("tls-ca", &o.tls_ca, "with --stage: the run's CA certificate; with --tls-cert/--tls-key, links use mutual TLS 1.3")
      .flag("tls-cert", &o.tls_cert, "with --stage: this stage's certificate (CN=resbm-stage-K)")
      .flag("tls-key", &o.tls_key, "with --stage: this stage's private key")
      .flag("timeout", &o.timeout_s, "seconds to wait for a neighbour before failing")
      .flag("max-frame-mb", &o.max_frame_mb, "largest frame payload accepted, in MiB")
      .flag("link-mbps", &o.link_mbps, "shape every link to this bandwidth in Mbit/s (0 = unshaped)")
      .flag("link-latency-ms", &o.link_latency_ms, "add this one-way latency to every link")
      .flag("link-jitter-ms", &o.link_jitter_ms, "add uniform jitter of +- this to the latency")
      .flag("seed", &o.seed, "seed of weights and batch sampling")
      .flag("threads", &o.threads, "CPU threads (0 = all)")
      .flag("eval-every", &o.eval_every, "validate every N steps (0 = only at the end)")
      .flag("eval-batches", &o.eval_batches, "validation batches per evaluation")
      .flag("metrics", &o.metrics, "write per-step metrics as JSONL to this file")
      .flag("save", &o.save, "write checkpoints (params, optimizer, tokenizer) to this directory")
      .flag("save-every", &o.save_every, "also checkpoint every N steps (needs --save)")
      .flag("resume", &o.resume, "continue from the checkpoint in this directory")
      .flag("resume-step", &o.resume_step, "resume from this saved step (0 = newest step every stage saved)")
      .flag("skip-nonfinite", &o.skip_nonfinite, "skip steps whose loss or gradients are not finite instead of stopping")
      .flag("stop-after", &o.stop_after, "stop after this step as if interrupted, no final eval (0 = run to --steps)");
  if (!cli.parse(argc, argv)) return 0;
  if (o.device.rfind("cuda", 0) == 0) {
#ifdef RESBM_HAS_CUDA_TRAIN
    return resbm_train_cuda(argc, argv);
#else
    fail("this resbm-train was built without CUDA", "install the CUDA toolkit and rebuild (RESBM_CUDA=ON)");
#endif
  }
  RESBM_CHECK(o.device == "cpu", cat("unknown --device '", o.device, "'"), "pass --device cpu or cuda");
  RESBM_CHECK(o.steps > 0, cat("--steps ", o.steps, " must be positive"), "pass --steps 1 or more");
  RESBM_CHECK(o.warmup >= 0 && o.eval_every >= 0 && o.save_every >= 0 && o.eval_batches > 0,
              "--warmup, --eval-every and --save-every must be >= 0, --eval-batches > 0", "fix the flag values");
  RESBM_CHECK(o.save_every == 0 || !o.save.empty(), "--save-every needs --save DIR", "pass --save DIR");
  examples::check_optimizer_name(o.optimizer);

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
  (void)pipeline::actions(o.schedule, 0, std::max(o.stages, 1), o.micro_batches, o.lookahead);  // names a bad schedule now
  RESBM_CHECK(o.stage < o.stages, cat("--stage ", o.stage, " but --stages is ", o.stages),
              "pass --stage between 0 and --stages - 1");
  RESBM_CHECK(o.timeout_s > 0 && o.max_frame_mb > 0, "--timeout and --max-frame-mb must be positive",
              "pass positive values");
  auto go = [&]<class Codec>() {
    return o.stage >= 0 ? train_process<Codec>(o, cfg, ctx, split) : train_threads<Codec>(o, cfg, ctx, split);
  };
  if (o.stages == 1) return go.template operator()<codec::presets::DenseFp32>();  // no boundary
  int rc = 0;
  codec::with_codec(o.codec, o.rank, [&]<class Codec>() { rc = go.template operator()<Codec>(); });
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
