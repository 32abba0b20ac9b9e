// Causal attention on the CPU at the shapes we train: B=16, T=128/256, (H=4, hd=32) for
// d=128 and (H=6, hd=64) for d=384, two threads. Tokens/s = B*T per iteration.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/ops/cpu/attention.hpp"

namespace {

using namespace resbm;

struct Inputs {
  int64_t B, T, H, hd;
  Buffer<float> q, k, v, out, cache, dout, dq, dk, dv;

  Inputs(int64_t B_, int64_t T_, int64_t H_, int64_t hd_) : B(B_), T(T_), H(H_), hd(hd_) {
    const size_t n = size_t(B * T * H * hd);
    for (Buffer<float>* b : {&q, &k, &v, &out, &dout, &dq, &dk, &dv}) b->resize(n);
    cache.resize(size_t(ops::attention_cache_size(B, T, H)));
    for (size_t i = 0; i < n; ++i) {
      q[i] = Philox::normal(1, 0, i);
      k[i] = Philox::normal(1, 1, i);
      v[i] = Philox::normal(1, 2, i);
      dout[i] = Philox::normal(1, 3, i);
    }
  }
  Tensor<float> t(Buffer<float>& b) { return b.view({B, T, H, hd}); }
};

void BM_attention_forward(benchmark::State& state) {
  Context ctx(2);
  Inputs in(16, state.range(0), state.range(1), state.range(2));
  Tensor<float> cache = in.cache.view({int64_t(in.cache.size())});
  for (auto _ : state) {
    ops::attention_forward<float>(ctx, in.t(in.out), cache, in.t(in.q), in.t(in.k), in.t(in.v));
    benchmark::DoNotOptimize(in.out.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(in.B * in.T) * double(state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

void BM_attention_forward_backward(benchmark::State& state) {
  Context ctx(2);
  Inputs in(16, state.range(0), state.range(1), state.range(2));
  Tensor<float> cache = in.cache.view({int64_t(in.cache.size())});
  for (auto _ : state) {
    ops::attention_forward<float>(ctx, in.t(in.out), cache, in.t(in.q), in.t(in.k), in.t(in.v));
    // Accumulating into the same gradients every iteration is fine for timing.
    ops::attention_backward<float>(ctx, in.t(in.dq), in.t(in.dk), in.t(in.dv), in.t(in.dout), cache,
                                   in.t(in.q), in.t(in.k), in.t(in.v), in.t(in.out));
    benchmark::DoNotOptimize(in.dq.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(in.B * in.T) * double(state.iterations()),
                                                  benchmark::Counter::kIsRate);
}

// Args: T, H, hd.
void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "H", "hd"});
  for (int64_t T : {128, 256}) {
    b->Args({T, 4, 32});
    b->Args({T, 6, 64});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_attention_forward)->Apply(shapes);
BENCHMARK(BM_attention_forward_backward)->Apply(shapes);

BENCHMARK_MAIN();
