// pipeline::CudaLocalPipeline: stages of CudaLlama slices with the GPU codec halves between
// them, in one process. With the dense bf16 wire the split model is the whole model (the
// wire carries the bf16 activations and gradients exactly); with 4 stages of resbm it
// trains as the CPU LocalPipeline does from the same seed (same initial codec weights,
// same wire bytes, losses to bf16 tolerance); a NaN at a boundary is an error naming it;
// which codecs have GPU halves is decided at compile time.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "resbm/codec/presets.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/data/sampler.hpp"
#include "resbm/optim/adamw.hpp"
#include "resbm/pipeline/cuda/local.cuh"
#include "resbm/pipeline/local.hpp"
#include "cuda/support.cuh"
#include "support/pipeline_fixtures.hpp"

using namespace resbm;
using namespace resbm::test;
using codec::presets::DenseBf16;
using codec::presets::Resbm;

// Host-only compile-time logic: which codecs a GPU pipeline can use.
static_assert(codec::HasCudaHalves<Resbm<2>> && codec::HasCudaHalves<Resbm<64>>);
static_assert(codec::HasCudaHalves<DenseBf16> && codec::HasCudaHalves<codec::presets::Int8>);
static_assert(!codec::HasCudaHalves<codec::presets::DenseFp32>);         // no fp32 wire on the GPU
static_assert(!codec::HasCudaHalves<codec::presets::ResbmLinear<8>>);    // Linear, not Mlp<H, silu>
static_assert(!codec::HasCudaHalves<codec::presets::SubspaceInt8<8>>);   // no GPU halves

namespace {

// vocab 64, d 128, 4 layers, head_dim 64, seq 64
nn::LlamaConfig tiny() {
  nn::LlamaConfig c = testing::small_model(64);
  c.d_model = 128;
  c.n_layers = 4;
  c.n_heads = 2;
  c.seq_len = 64;
  return c;
}
constexpr int64_t kBatch = 4;
constexpr uint64_t kSeed = 11;

// A learnable stream (a fixed cycle, a quarter of it noise), so the first steps move the loss.
std::vector<int32_t> corpus(int vocab) {
  std::vector<int32_t> t(6000);
  for (size_t i = 0; i < t.size(); ++i) {
    const uint64_t r = Philox::bits64(99, 0, i);
    t[i] = r % 4 == 0 ? int32_t(r % uint64_t(vocab)) : int32_t((i * 5 + i / 7) % size_t(vocab));
  }
  return t;
}

optim::AdamWConfig adamw(float lr = 3e-3f) {
  optim::AdamWConfig oc;
  oc.lr = lr;
  return oc;
}

template <class Codec>
std::vector<double> train_gpu(pipeline::CudaLocalPipeline<Codec>& pipe, const data::BatchSampler& sampler, int steps,
                              int micro_batches, double clip) {
  pipe.init(kSeed);
  std::vector<int32_t> tok(size_t(sampler.batch_size() * sampler.seq_len())), tgt(tok.size());
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    sampler.batch(step, tok.data(), tgt.data());
    losses.push_back(pipe.train_step(tok.data(), tgt.data(), step, micro_batches, 1.0f, clip).first);
  }
  return losses;
}

}  // namespace

TEST_CASE("cuda pipeline: 2 stages with the dense bf16 wire train as the whole model") {
  // The two-kernel attention backward repeats bitwise; the embedding's fp32 atomics are
  // what is left to vary, below 1e-5.
  ops::cuda_attention_deterministic = true;
  const nn::LlamaConfig cfg = tiny();
  const auto tokens = corpus(cfg.vocab);
  const data::BatchSampler sampler(tokens, kBatch, cfg.seq_len, 5);
  pipeline::CudaLocalPipeline<DenseBf16> whole(ctx(), cfg, 1, kBatch / 2, adamw());
  pipeline::CudaLocalPipeline<DenseBf16> split(ctx(), cfg, 2, kBatch / 2, adamw());
  // clip 0: the norm's partial sums are grouped per array, so it differs in rounding
  const auto lw = train_gpu(whole, sampler, 3, 2, 0.0), ls = train_gpu(split, sampler, 3, 2, 0.0);
  for (size_t i = 0; i < lw.size(); ++i) std::printf("dense: step %zu loss whole %.7f split %.7f\n", i, lw[i], ls[i]);
  CHECK(lw[0] == ls[0]);  // the same forward, bit for bit
  for (size_t i = 1; i < lw.size(); ++i) CHECK(std::abs(lw[i] - ls[i]) <= 1e-5 * lw[i]);
  // 3 steps x 2 micro-batches, one boundary, 2 bytes per value each way
  const double N = double(kBatch / 2 * cfg.seq_len), bytes = 6 * N * 2 * cfg.d_model;
  CHECK(split.wire().forward_bytes == bytes);
  CHECK(split.wire().backward_bytes == bytes);
  CHECK(pipeline::compression_ratio(split.wire()) == 1.0);
  ops::cuda_attention_deterministic = false;
}

TEST_CASE("cuda pipeline: 4 stages of resbm<2> train as the CPU LocalPipeline from the same seed") {
  using Codec = Resbm<2>;
  const nn::LlamaConfig cfg = tiny();
  const auto tokens = corpus(cfg.vocab);
  const data::BatchSampler sampler(tokens, kBatch, cfg.seq_len, 5);
  const int S = 4, M = 2, steps = 4;
  const double clip = 1.0;

  pipeline::LocalPipeline<Codec> cpu(cfg, S, kBatch / M);
  cpu.init(kSeed);
  std::vector<optim::AnyOptimizer> opts;
  // Adam's first update is ±lr wherever a gradient is not 0, so elements whose gradient is
  // rounding noise (the int8 gradient wire rounds small values to 0 or one step) move by a
  // full lr, in different directions on the CPU and the GPU: the losses stay within a few
  // 1e-3, the gradient norms of later steps do not (2x apart by step 3). The gradients of
  // step 0 are the sharp check.
  for (auto& s : cpu.stages()) opts.emplace_back(optim::AdamW(s->arena(), adamw(1e-3f)));
  pipeline::CudaLocalPipeline<Codec> gpu(ctx(), cfg, S, kBatch / M, adamw(1e-3f));
  gpu.init(kSeed);
  REQUIRE(gpu.params() == [&] {
    size_t n = 0;
    for (auto& s : cpu.stages()) n += s->arena().count();
    return n;
  }());

  // Every codec weight starts as the CPU's, bit for bit.
  size_t compared = 0, differ = 0;
  for (int s = 0; s < S; ++s) {
    auto& arena = cpu.stages()[size_t(s)]->arena();
    auto check_half = [&](auto* half) {
      if (!half) return;
      const auto p = half->download_params();
      for (const ParamInfo& info : half->layout().infos()) {
        const float* cw = arena.params() + arena.info(arena.find(info.name)).offset;
        for (size_t e = 0; e < info.numel; ++e) differ += p[info.offset + e] != cw[e];
        compared += info.numel;
      }
    };
    check_half(gpu.stages()[size_t(s)]->decoder());
    check_half(gpu.stages()[size_t(s)]->encoder());
  }
  std::printf("resbm: %zu codec weights compared with the CPU's, %zu differ\n", compared, differ);
  CHECK(compared > 0);
  CHECK(differ == 0);

  // Step 0 without clipping (the CPU clips its gradients in place, the GPU in AdamW): every
  // parameter gradient of every stage and codec half against the CPU's. (fc2 starts at 0, so
  // fc1's and the norm gain's gradients are exactly 0 on both here; test_cuda_codec checks
  // them with random weights.)
  Context host(4);
  std::vector<int32_t> tok(size_t(kBatch * cfg.seq_len)), tgt(tok.size());
  sampler.batch(0, tok.data(), tgt.data());
  const double cl0 = cpu.train_step(host, sampler, 0, M, opts, 1.0f, 0.0, kSeed).first;
  const double gl0 = gpu.train_step(tok.data(), tgt.data(), 0, M, 1.0f, 0.0).first;
  std::printf("resbm: step 0 loss cpu %.6f gpu %.6f (rel %.2e)\n", cl0, gl0, std::abs(gl0 - cl0) / cl0);
  CHECK(std::abs(gl0 - cl0) / cl0 < 1e-3);
  double worst = 0, num = 0, den = 0;
  size_t checked = 0;
  for (int s = 0; s < S; ++s) {
    auto& arena = cpu.stages()[size_t(s)]->arena();
    auto& st = *gpu.stages()[size_t(s)];
    auto compare = [&](const ParamArena<float>& layout, const std::vector<float>& g) {
      for (const ParamInfo& info : layout.infos()) {
        const float* c = arena.grads() + arena.info(arena.find(info.name)).offset;
        double n = 0, d = 0;
        for (size_t e = 0; e < info.numel; ++e) {
          const double x = double(g[info.offset + e]) - double(c[e]);
          n += x * x;
          d += double(c[e]) * double(c[e]);
        }
        const double rel = std::sqrt(n / std::max(d, 1e-30));
        if (info.name.rfind("boundary.", 0) == 0 || rel > 2e-2)
          std::printf("  stage %d grad %-34s rel err %.3e\n", s, info.name.c_str(), rel);
        worst = std::max(worst, rel);
        num += n;
        den += d;
        ++checked;
      }
    };
    compare(st.model().layout(), st.model().download_grads());
    if (st.decoder()) compare(st.decoder()->layout(), st.decoder()->download_grads());
    if (st.encoder()) compare(st.encoder()->layout(), st.encoder()->download_grads());
  }
  std::printf("resbm: step 0 gradients of %zu parameters: all rel err %.3e, worst %.3e\n", checked,
              std::sqrt(num / den), worst);
  CHECK(std::sqrt(num / den) < 2e-2);
  CHECK(worst < 5e-2);

  // Then training with the global clip: the losses stay together.
  for (int step = 1; step < steps; ++step) {
    sampler.batch(step, tok.data(), tgt.data());
    const auto [cl, cn] = cpu.train_step(host, sampler, step, M, opts, 1.0f, clip, kSeed);
    const auto [gl, gn] = gpu.train_step(tok.data(), tgt.data(), step, M, 1.0f, clip);
    const double rel = std::abs(gl - cl) / cl;
    std::printf("resbm: step %d loss cpu %.6f gpu %.6f (rel %.2e), norm cpu %.5f gpu %.5f\n", step, cl, gl, rel, cn,
                gn);
    CHECK(rel < 5e-3);
  }
  // The same payload sizes crossed the same boundaries.
  CHECK(gpu.wire().forward_bytes == cpu.wire().forward_bytes);
  CHECK(gpu.wire().backward_bytes == cpu.wire().backward_bytes);
  CHECK(gpu.wire().dense_bytes == cpu.wire().dense_bytes);
  CHECK(gpu.wire().tokens == cpu.wire().tokens);
  std::printf("resbm: compression %.1fx\n", pipeline::compression_ratio(gpu.wire()));
  CHECK(pipeline::compression_ratio(gpu.wire()) > 100.0);
}

TEST_CASE("cuda pipeline: a non-finite activation at a boundary is an error naming the wire") {
  const nn::LlamaConfig cfg = tiny();
  const auto tokens = corpus(cfg.vocab);
  const data::BatchSampler sampler(tokens, kBatch, cfg.seq_len, 5);
  std::vector<int32_t> tok(size_t(kBatch * cfg.seq_len)), tgt(tok.size());
  sampler.batch(0, tok.data(), tgt.data());
  auto poison_stage0 = [&](auto& pipe) {
    pipe.init(kSeed);
    auto& m = pipe.stages()[0]->model();
    std::vector<float> w = m.download_params();
    w[m.layout().info(m.layout().find("blocks.0.attn.wo.weight")).offset] = NAN;
    m.upload_params(w);
  };
  SECTION("resbm: the int8 forward wire refuses it") {
    pipeline::CudaLocalPipeline<Resbm<2>> pipe(ctx(), cfg, 2, kBatch, adamw());
    poison_stage0(pipe);
    const std::string e = test::error_of([&] { pipe.train_step(tok.data(), tgt.data(), 0, 1, 1.0f, 1.0); });
    INFO(e);
    CHECK(test::has(e, "non-finite value at token"));
  }
  SECTION("dense: the bf16 wire refuses it") {
    pipeline::CudaLocalPipeline<DenseBf16> pipe(ctx(), cfg, 2, kBatch, adamw());
    poison_stage0(pipe);
    const std::string e = test::error_of([&] { pipe.train_step(tok.data(), tgt.data(), 0, 1, 1.0f, 1.0); });
    INFO(e);
    CHECK(test::has(e, "non-finite value at token"));
  }
  SECTION("the pipeline goes on after the error once its weights are finite again") {
    pipeline::CudaLocalPipeline<Resbm<2>> pipe(ctx(), cfg, 2, kBatch, adamw());
    poison_stage0(pipe);
    CHECK_THROWS(pipe.train_step(tok.data(), tgt.data(), 0, 1, 1.0f, 1.0));
    pipe.init(kSeed);
    CHECK(std::isfinite(pipe.train_step(tok.data(), tgt.data(), 0, 1, 1.0f, 1.0).first));
  }
}
