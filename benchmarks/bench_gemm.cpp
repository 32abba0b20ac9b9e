// The CPU GEMM at the shapes of one training micro-batch (N = 2048 tokens): the attention
// projections (OC = C or 3C fused qkv) and the MLP (OC = 4C), forward and backward.
// FLOPS counts 2·N·C·OC per product: one for forward, two (dinp, dweight) for backward.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/ops/cpu/gemm.hpp"

namespace {

constexpr int64_t kTokens = 2048;
constexpr int kThreads = 2;

void fill(resbm::Buffer<float>& b, uint64_t stream) {
  for (size_t i = 0; i < b.size(); ++i) b[i] = resbm::Philox::normal(1, stream, i);
}

void set_flops(benchmark::State& state, double flops_per_iter) {
  const double total = flops_per_iter * double(state.iterations());
  state.SetItemsProcessed(int64_t(total));
  state.counters["FLOPS"] = benchmark::Counter(total, benchmark::Counter::kIsRate);
}

void BM_matmul_forward(benchmark::State& state) {
  const int64_t N = kTokens, C = state.range(0), OC = state.range(1);
  resbm::Context ctx(kThreads);
  resbm::Buffer<float> inp(size_t(N * C)), w(size_t(OC * C)), out(size_t(N * OC));
  fill(inp, 1);
  fill(w, 2);
  for (auto _ : state) {
    resbm::ops::matmul_forward<float>(ctx, out.view({N, OC}), inp.view({N, C}), w.view({OC, C}));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, 2.0 * double(N * C * OC));
}

void BM_matmul_backward(benchmark::State& state) {
  const int64_t N = kTokens, C = state.range(0), OC = state.range(1);
  resbm::Context ctx(kThreads);
  resbm::Buffer<float> inp(size_t(N * C)), w(size_t(OC * C)), dout(size_t(N * OC));
  resbm::Buffer<float> dinp(size_t(N * C)), dw(size_t(OC * C));
  fill(inp, 1);
  fill(w, 2);
  fill(dout, 3);
  for (auto _ : state) {
    // The gradients accumulate; their growing values do not change the cost.
    resbm::ops::matmul_backward<float>(ctx, dinp.view({N, C}), dw.view({OC, C}), dout.view({N, OC}),
                                       inp.view({N, C}), w.view({OC, C}));
    benchmark::DoNotOptimize(dinp.data());
    benchmark::DoNotOptimize(dw.data());
    benchmark::ClobberMemory();
  }
  set_flops(state, 4.0 * double(N * C * OC));
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"C", "OC"});
  for (int64_t C : {128, 384})
    for (int64_t k : {1, 3, 4}) b->Args({C, k * C});
  b->Unit(benchmark::kMicrosecond)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_matmul_forward)->Apply(shapes);
BENCHMARK(BM_matmul_backward)->Apply(shapes);

BENCHMARK_MAIN();
