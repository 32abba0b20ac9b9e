// A whole training step (forward, backward, clip, Muon or AdamW) of the default
// resbm-train model, and the same model split into 4 stages with the resbm codec.
#include <benchmark/benchmark.h>

#include <vector>

#include "resbm/resbm.hpp"

using namespace resbm;

namespace {

nn::LlamaConfig default_model() {
  nn::LlamaConfig c;  // resbm-train's defaults: d 128, 4 layers, 4 heads, seq 128, vocab 65
  return c;
}

template <class Codec>
void train_step(benchmark::State& state, int stages, bool muon) {
  const auto c = default_model();
  const int64_t batch = 16;
  Context ctx(int(state.range(0)));
  std::vector<int32_t> tokens(200000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(Philox::bits64(1, 0, i) % uint64_t(c.vocab));
  const data::BatchSampler sampler(tokens, batch, c.seq_len, 1);
  pipeline::LocalPipeline<Codec> pipe(c, stages, batch);
  pipe.init(1);
  std::vector<optim::AnyOptimizer> opts;
  for (auto& s : pipe.stages()) {
    if (muon)
      opts.emplace_back(optim::Muon(s->arena(), optim::MuonConfig{}));
    else
      opts.emplace_back(optim::AdamW(s->arena(), optim::AdamWConfig{}));
  }
  int64_t step = 0;
  for (auto _ : state) {
    auto r = pipe.train_step(ctx, sampler, step++, 1, opts, 1.0f, 1.0, 1);
    benchmark::DoNotOptimize(r);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations() * batch * c.seq_len), benchmark::Counter::kIsRate);
}

void BM_TrainStepMuon(benchmark::State& s) { train_step<codec::presets::DenseFp32>(s, 1, true); }
void BM_TrainStepAdamW(benchmark::State& s) { train_step<codec::presets::DenseFp32>(s, 1, false); }
void BM_TrainStep4StagesResbm(benchmark::State& s) { train_step<codec::presets::Resbm<2>>(s, 4, true); }

}  // namespace

BENCHMARK(BM_TrainStepMuon)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStepAdamW)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStep4StagesResbm)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
