// The pipeline runner: S stages as threads talking through in-process links give the
// same losses and weights as the partitioned model run in one process.
#include <memory>
#include <vector>

#include "resbm/pipeline/local.hpp"
#include "resbm/pipeline/runner.hpp"
#include "resbm/pipeline/threads.hpp"
#include "resbm/transport/in_process.hpp"
#include "support/catch.hpp"
#include "support/pipeline_fixtures.hpp"

using namespace resbm;

namespace {

nn::LlamaConfig small() { return testing::small_model(19); }
std::vector<int32_t> corpus(int vocab) { return testing::random_corpus(vocab, 5000, 7); }

struct Run {
  std::vector<double> losses;
  std::vector<std::vector<float>> weights;  // per stage, the whole arena
};

template <class Codec>
Run reference(const nn::LlamaConfig& c, const data::BatchSampler& sampler, int S, int M, int steps, double clip) {
  pipeline::LocalPipeline<Codec> pipe(c, S, sampler.batch_size() / M);
  pipe.init(3);
  std::vector<optim::AnyOptimizer> opts;
  for (auto& s : pipe.stages()) opts.emplace_back(optim::AdamW(s->arena(), optim::AdamWConfig{}));
  Context ctx(1);
  Run r;
  for (int step = 0; step < steps; ++step)
    r.losses.push_back(pipe.train_step(ctx, sampler, step, M, opts, 0.7f, clip, 3).first);
  for (auto& s : pipe.stages()) r.weights.emplace_back(s->arena().params(), s->arena().params() + s->arena().size());
  return r;
}

template <class Codec>
Run threaded(const nn::LlamaConfig& c, const data::BatchSampler& sampler, int S, int M, int steps, double clip,
             const std::string& schedule, const data::BatchSampler* val = nullptr, double* val_loss = nullptr,
             int lookahead = 0) {
  std::vector<std::unique_ptr<pipeline::StageModel<Codec>>> stages;
  std::vector<optim::AnyOptimizer> opts;
  for (int s = 0; s < S; ++s) {
    stages.push_back(std::make_unique<pipeline::StageModel<Codec>>(c, s, S));
    stages.back()->init(3);
    opts.emplace_back(optim::AdamW(stages.back()->arena(), optim::AdamWConfig{}));
  }
  std::vector<transport::AnyLink> to_next(static_cast<size_t>(S)), to_prev(static_cast<size_t>(S));
  for (int s = 0; s + 1 < S; ++s) {
    auto [a, b] = transport::make_in_process_pair();
    to_next[size_t(s)] = transport::AnyLink(std::move(a));
    to_prev[size_t(s + 1)] = transport::AnyLink(std::move(b));
  }
  pipeline::RunnerOptions o;
  o.schedule = schedule;
  o.micro_batches = M;
  o.lookahead = lookahead;
  o.clip = clip;
  o.seed = 3;
  o.timeout = std::chrono::milliseconds(20000);
  Run r;
  pipeline::run_stage_threads(
      S,
      [&](int s) {
        Context ctx(1);
        pipeline::StageRunner<Codec> runner(*stages[size_t(s)], opts[size_t(s)], s > 0 ? &to_prev[size_t(s)] : nullptr,
                                            s + 1 < S ? &to_next[size_t(s)] : nullptr, ctx, o,
                                            sampler.batch_size() / M);
        for (int step = 0; step < steps; ++step) {
          auto [loss, norm] = runner.train_step(sampler, step, 0.7f);
          if (s == S - 1) r.losses.push_back(loss);
        }
        if (val) {
          double v = runner.evaluate(*val, 2);
          if (s == S - 1) *val_loss = v;
        }
        runner.flush();
      },
      [&](int s) {
        to_prev[size_t(s)].close();
        to_next[size_t(s)].close();
      });
  for (auto& s : stages) r.weights.emplace_back(s->arena().params(), s->arena().params() + s->arena().size());
  return r;
}

void require_close(const Run& a, const Run& b, double tol) {
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t i = 0; i < a.losses.size(); ++i) {
    INFO("step " << i);
    if (tol == 0)
      REQUIRE(a.losses[i] == b.losses[i]);
    else
      REQUIRE(a.losses[i] == Approx(b.losses[i]).epsilon(tol));
  }
  REQUIRE(a.weights.size() == b.weights.size());
  for (size_t s = 0; s < a.weights.size(); ++s)
    for (size_t i = 0; i < a.weights[s].size(); ++i) {
      INFO("stage " << s << " element " << i);
      REQUIRE(std::abs(a.weights[s][i] - b.weights[s][i]) <= tol);
    }
}

}  // namespace

TEST_CASE("threads + in-process links = one process, every schedule, S in {2,4}, M in {1,4}") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 2);
  using Fp32 = codec::presets::DenseFp32;
  for (int S : {2, 4})
    for (int M : {1, 4})
      for (const char* sched : {"gpipe", "1f1b"}) {
        INFO(sched << " S=" << S << " M=" << M);
        const Run ref = reference<Fp32>(c, sampler, S, M, 3, 0.5);
        const Run got = threaded<Fp32>(c, sampler, S, M, 3, 0.5, sched);
        // GPipe runs the backwards in reverse order: the same gradients summed in another
        // order, equal to rounding. 1F1B (and M = 1) follow one process's order exactly.
        const bool exact = M == 1 || std::string(sched) == "1f1b";
        require_close(ref, got, exact ? 0.0 : 2e-5);
      }
}

TEST_CASE("1f1b with lookahead gives exactly the results of plain 1f1b") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 2);
  using Codec = codec::presets::Resbm<2>;
  const Run ref = reference<Codec>(c, sampler, 4, 8, 3, 1.0);
  for (int k : {1, 3}) {
    INFO("lookahead " << k);
    require_close(ref, threaded<Codec>(c, sampler, 4, 8, 3, 1.0, "1f1b", nullptr, nullptr, k), 0.0);
  }
}

TEST_CASE("the resbm codec through the threaded runner matches the sequential pipeline") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 2), val(tokens, 8, c.seq_len, 2);
  using Codec = codec::presets::Resbm<2>;
  const Run ref = reference<Codec>(c, sampler, 4, 2, 3, 1.0);
  double v = 0;
  const Run got = threaded<Codec>(c, sampler, 4, 2, 3, 1.0, "1f1b", &val, &v);
  require_close(ref, got, 0.0);
  CHECK(std::isfinite(v));
}

TEST_CASE("a stage that fails stops its neighbours at once with the cause, not a hang") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 2);
  using Codec = codec::presets::DenseFp32;
  std::vector<std::unique_ptr<pipeline::StageModel<Codec>>> stages;
  std::vector<optim::AnyOptimizer> opts;
  for (int s = 0; s < 3; ++s) {
    stages.push_back(std::make_unique<pipeline::StageModel<Codec>>(c, s, 3));
    stages.back()->init(3);
    opts.emplace_back(optim::AdamW(stages.back()->arena(), optim::AdamWConfig{}));
  }
  std::vector<transport::AnyLink> to_next(3), to_prev(3);
  for (int s = 0; s + 1 < 3; ++s) {
    auto [a, b] = transport::make_in_process_pair();
    to_next[size_t(s)] = transport::AnyLink(std::move(a));
    to_prev[size_t(s + 1)] = transport::AnyLink(std::move(b));
  }
  pipeline::RunnerOptions o;
  o.timeout = std::chrono::milliseconds(60000);  // the test must not need it
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(pipeline::run_stage_threads(
                        3,
                        [&](int s) {
                          Context ctx(1);
                          pipeline::StageRunner<Codec> runner(*stages[size_t(s)], opts[size_t(s)],
                                                              s > 0 ? &to_prev[size_t(s)] : nullptr,
                                                              s + 1 < 3 ? &to_next[size_t(s)] : nullptr, ctx, o, 8);
                          for (int step = 0; step < 5; ++step) {
                            if (s == 1 && step == 2) throw Error("stage 1 lost its GPU", "");
                            runner.train_step(sampler, step, 1.0f);
                          }
                        },
                        [&](int s) {
                          to_prev[size_t(s)].close();
                          to_next[size_t(s)].close();
                        }),
                    Catch::Matchers::Contains("stage 1 lost its GPU"));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30));
}

TEST_CASE("a non-finite loss stops with stage, step and layer named; --skip-nonfinite skips the step") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 2);
  using Codec = codec::presets::DenseFp32;
  for (bool skip : {false, true}) {
    std::vector<std::unique_ptr<pipeline::StageModel<Codec>>> stages;
    std::vector<optim::AnyOptimizer> opts;
    for (int s = 0; s < 2; ++s) {
      stages.push_back(std::make_unique<pipeline::StageModel<Codec>>(c, s, 2));
      stages.back()->init(3);
      opts.emplace_back(optim::AdamW(stages.back()->arena(), optim::AdamWConfig{}));
    }
    auto& a1 = stages[1]->arena();
    a1.param(a1.find("blocks.3.attn.wv.weight"))[5] = NAN;
    std::vector<float> before(stages[0]->arena().params(), stages[0]->arena().params() + stages[0]->arena().size());
    auto [x, y] = transport::make_in_process_pair();
    std::vector<transport::AnyLink> links;
    links.emplace_back(std::move(x));
    links.emplace_back(std::move(y));
    pipeline::RunnerOptions o;
    o.skip_nonfinite = skip;
    std::vector<int64_t> skipped(2);
    auto body = [&](int s) {
      Context ctx(1);
      pipeline::StageRunner<Codec> runner(*stages[size_t(s)], opts[size_t(s)], s == 1 ? &links[1] : nullptr,
                                          s == 0 ? &links[0] : nullptr, ctx, o, 8);
      runner.train_step(sampler, 0, 1.0f);
      runner.flush();
      skipped[size_t(s)] = runner.skipped();
    };
    auto stop = [&](int s) { links[size_t(s)].close(); };
    if (!skip) {
      CHECK_THROWS_WITH(pipeline::run_stage_threads(2, body, stop),
                        Catch::Matchers::Contains("at step 0 (stage 1, micro-batch 0): first non-finite values in "
                                                  "blocks.3"));
    } else {
      pipeline::run_stage_threads(2, body, stop);
      CHECK(skipped == std::vector<int64_t>{1, 1});  // both stages agree, through the global norm
      for (size_t i = 0; i < before.size(); ++i) REQUIRE(stages[0]->arena().params()[i] == before[i]);
    }
  }
}
