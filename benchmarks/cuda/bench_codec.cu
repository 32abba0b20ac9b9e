// One pipeline boundary of the Resbm<R> codec on the GPU (codec/cuda/residual_bottleneck.cuh):
// encoder forward, decoder forward, decoder backward, encoder backward of one micro-batch,
// run eagerly on one stream as a training step would (the decoder reads the encoder's wire
// and the encoder the decoder's gradient wire, both in device memory; no link). Each phase
// is timed with CUDA events; the wire statuses are checked (a sync) after each round, outside
// the events. Median over `reps` rounds after 5 warm-up rounds. The share column is
// (stages - 1) boundaries x the round over the step time of config (a) (docs/cuda.md).
// The halves rebuild the bf16 operands they derive from the weights (fc1 ⊙ gain, the
// decoder's [fc2 | Eᵀ | I]) only after the weights change, i.e. once per optimizer step,
// not per micro-batch: a round here excludes that, unless `restep` is 1, which marks the
// weights changed before every round (a step of one micro-batch). `autotune` 1 lets
// cuBLASLt's plans pick the fastest of the heuristic's candidates (CudaContext::autotune),
// as the CUDA trainer does by default; 0, the default here, takes the heuristic's first.
// Usage: bench_codec_cuda [reps] [step_ms] [stages] [warmup] [only_rank] [restep] [autotune]
// (e.g. `ncu --metrics gpu__time_duration.sum bench_codec_cuda 1 28.9 4 1 2`: per kernel)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "resbm/codec/cuda/residual_bottleneck.cuh"
#include "resbm/codec/presets.hpp"
#include "resbm/core/rng.hpp"

using namespace resbm;

namespace {

template <class T>
__global__ void fill_normal(T* p, int64_t n, uint64_t stream, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    resbm::cuda_detail::stf(p + i, scale * Philox::normal(42, stream, uint64_t(i)));
}
template <class T>
DeviceBuffer<T> rnd(CudaContext& ctx, int64_t n, uint64_t stream, float scale = 1.0f) {
  DeviceBuffer<T> b(static_cast<size_t>(n));
  fill_normal<T><<<1024, 256, 0, ctx.stream>>>(b.data(), n, stream, scale);
  RESBM_CUDA_LAUNCH_CHECK();
  return b;
}
std::vector<float> host_params(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = 0.05f * Philox::normal(7, stream, i);
  return v;
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : double(v[v.size() / 2]);
}

template <int R>
void bench(CudaContext& ctx, int64_t N, int d, int vocab, int reps, int warmup, double step_ms, int stages,
           bool restep) {
  using Gpu = codec::CudaResidualBottleneck<codec::presets::Resbm<R>>;
  const codec::Boundary b{0, d, vocab};
  typename Gpu::Encoder enc(ctx, b);
  typename Gpu::Decoder dec(ctx, b);
  enc.upload_params(host_params(enc.size(), 1));
  dec.upload_params(host_params(dec.size(), 2));
  auto es = enc.make_activations(N);
  auto ds = dec.make_activations(N);
  auto h = rnd<bf16>(ctx, N * d, 10), dhout = rnd<bf16>(ctx, N * d, 11), dh = rnd<bf16>(ctx, N * d, 12, 0.1f);
  DeviceBuffer<int32_t> ids(static_cast<size_t>(N));
  {
    std::vector<int32_t> t(static_cast<size_t>(N));
    for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(Philox::bits64(3, 4, i) % uint64_t(vocab));
    ids.from_host(t);
  }
  const int64_t wb = int64_t(enc.wire_bytes(N)), gb = int64_t(enc.grad_bytes(N));
  DeviceBuffer<std::byte> wire(static_cast<size_t>(wb)), gwire(static_cast<size_t>(gb));
  DeviceBuffer<bf16> hout(static_cast<size_t>(N * d));
  cudaEvent_t ev[5];
  for (auto& e : ev) RESBM_CUDA_CHECK(cudaEventCreate(&e));
  std::vector<float> times[5];
  for (int it = 0; it < reps + warmup; ++it) {
    if (restep) {  // what CudaAdamW's step does to the halves' derived operands
      (void)enc.params_bf16();
      (void)dec.params_bf16();
    }
    RESBM_CUDA_CHECK(cudaEventRecord(ev[0], ctx.stream));
    enc.forward(es, CudaTensor<const bf16>(h.data(), {N, d}), wire.view({wb}));
    RESBM_CUDA_CHECK(cudaEventRecord(ev[1], ctx.stream));
    dec.forward(ds, CudaTensor<const std::byte>(wire.data(), {wb}), CudaTensor<const int32_t>(ids.data(), {N}),
                hout.view({N, d}));
    RESBM_CUDA_CHECK(cudaEventRecord(ev[2], ctx.stream));
    dec.backward(ds, CudaTensor<const bf16>(dhout.data(), {N, d}), gwire.view({gb}));
    RESBM_CUDA_CHECK(cudaEventRecord(ev[3], ctx.stream));
    enc.backward(es, CudaTensor<const std::byte>(gwire.data(), {gb}), dh.view({N, d}));
    RESBM_CUDA_CHECK(cudaEventRecord(ev[4], ctx.stream));
    enc.check(es);
    dec.check(ds);
    if (it < warmup) continue;
    for (int k = 0; k < 4; ++k) {
      float ms = 0;
      RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
      times[k].push_back(ms);
    }
    float ms = 0;
    RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[4]));
    times[4].push_back(ms);
  }
  for (auto& e : ev) RESBM_CUDA_CHECK(cudaEventDestroy(e));
  const double total = median(times[4]);
  std::printf("| Resbm<%d> | %lld | %d | %.1f | %.1f | %.1f | %.1f | **%.1f** | %.2f%% |\n", R,
              static_cast<long long>(N), d, 1e3 * median(times[0]), 1e3 * median(times[1]), 1e3 * median(times[2]),
              1e3 * median(times[3]), 1e3 * total, 100.0 * (stages - 1) * total / step_ms);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 50;
  const double step_ms = argc > 2 ? std::atof(argv[2]) : 28.9;
  const int stages = argc > 3 ? std::atoi(argv[3]) : 4;
  const int warmup = argc > 4 ? std::atoi(argv[4]) : 5;
  const int only_rank = argc > 5 ? std::atoi(argv[5]) : 0;
  const bool restep = argc > 6 && std::atoi(argv[6]) != 0;
  const bool autotune = argc > 7 && std::atoi(argv[7]) != 0;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device\n");
    return 1;
  }
  try {
    CudaContext ctx(0);
    ctx.autotune = autotune;
    std::printf("codec boundary (one micro-batch, eager, median of %d after %d warm-up rounds%s%s), %s; share = %d boundaries x total / %.1f ms\n",
                reps, warmup, restep ? ", weights marked changed every round" : "",
                autotune ? ", cuBLASLt autotuned" : "", ctx.props.name, stages - 1, step_ms);
    std::printf("| codec | tokens | d | enc fwd µs | dec fwd µs | dec bwd µs | enc bwd µs | total µs | share |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    if (only_rank == 0 || only_rank == 2) bench<2>(ctx, 16384, 768, 256, reps, warmup, step_ms, stages, restep);
    if (only_rank == 0 || only_rank == 8) bench<8>(ctx, 16384, 768, 256, reps, warmup, step_ms, stages, restep);
  } catch (const Error& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  return 0;
}
