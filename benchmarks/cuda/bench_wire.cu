// Bandwidth of the codec's wire kernels (ops/cuda/wire.cuh) against a device-to-device copy
// measured in the same run: the encoder's code [tokens, r] (fp32 or bf16, as a GEMM leaves
// it) quantised into the Resbm preset's forward wire Int8Grouped<16>, its decode, and the
// fused encoder output (z = act[N, 256]·W[r, 256]ᵀ + h[:, :r], quantised in the same kernel)
// next to the unfused cuBLASLt GEMM + encode it replaces.
//
// Bytes are the fewest each op must move (every input read once, every output written
// once). Each row is a CUDA graph of 32 launches cycling over enough buffer sets to span
// 256 MiB (at most 32 sets: the 16k-token rows stay in the 50 MB L2, as the GEMM output
// they read does in training); the time is the median over `reps` replays / 32. "copy" is
// cudaMemcpyAsync D2D of the same bytes (half read, half written) timed the same way; the
// ceiling is a 2 GiB copy on the stream. Usage: bench_wire_cuda [reps] [large]
// (`large`: only the 1M-token rows, e.g. under ncu)
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/ops/cuda/matmul.cuh"
#include "resbm/ops/cuda/wire.cuh"

using namespace resbm;
using Wire = codec::Int8Grouped<16>;

namespace {

template <class T>
__global__ void fill_normal(T* p, int64_t n, uint64_t stream, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    resbm::cuda_detail::stf(p + i, scale * Philox::normal(42, stream, uint64_t(i)));
}

uint64_t g_stream = 1;
template <class T>
DeviceBuffer<T> rnd(CudaContext& ctx, int64_t n, float scale = 1.0f) {
  DeviceBuffer<T> b(static_cast<size_t>(n));
  fill_normal<T><<<1024, 256, 0, ctx.stream>>>(b.data(), n, g_stream++, scale);
  RESBM_CUDA_LAUNCH_CHECK();
  return b;
}

constexpr int kLaunches = 32;

int sets_for(double set_bytes) {
  return std::clamp(int((256.0 * 1024 * 1024) / set_bytes) + 1, 1, kLaunches);
}

// Median microseconds per launch of `launch(k)`, k = 0..31, captured once into a graph;
// `settle` runs after the eager warm-up (the wire statuses must be checked before reuse).
double graph_us(CudaContext& ctx, int reps, const std::function<void(int)>& launch,
                const std::function<void()>& settle = [] {}) {
  for (int k = 0; k < kLaunches; ++k) launch(k);  // warm-up: plans, module load
  ctx.synchronize();
  settle();
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  RESBM_CUDA_CHECK(cudaStreamBeginCapture(ctx.stream, cudaStreamCaptureModeThreadLocal));
  for (int k = 0; k < kLaunches; ++k) launch(k);
  RESBM_CUDA_CHECK(cudaStreamEndCapture(ctx.stream, &graph));
  RESBM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  RESBM_CUDA_CHECK(cudaEventCreate(&a));
  RESBM_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) RESBM_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    RESBM_CUDA_CHECK(cudaEventRecord(a, ctx.stream));
    RESBM_CUDA_CHECK(cudaGraphLaunch(exec, ctx.stream));
    RESBM_CUDA_CHECK(cudaEventRecord(b, ctx.stream));
    RESBM_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(t.begin(), t.end());
  return 1000.0 * t[t.size() / 2] / kLaunches;
}

struct Row {
  std::string name;
  int64_t tokens, r;
  double bytes, us, copy_us;
};

}  // namespace

int main(int argc, char** argv) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const int reps = argc > 1 ? std::atoi(argv[1]) : 30;
  CudaContext ctx(0);
  std::vector<ops::CudaWireStatus> status(kLaunches);
  auto check_all = [&] {
    for (auto& s : status) s.check(ctx);
  };

  // The ceiling: a 2 GiB device-to-device copy (bytes read + written), median of 20 with
  // events, as bench_kernels_cuda measures it.
  double ceiling_gbs = 0;
  {
    DeviceBuffer<unsigned char> s(size_t(1) << 31), d(size_t(1) << 31);
    s.fill_bytes(0x3c, ctx.stream);
    cudaEvent_t a, b;
    RESBM_CUDA_CHECK(cudaEventCreate(&a));
    RESBM_CUDA_CHECK(cudaEventCreate(&b));
    std::vector<float> t;
    for (int i = 0; i < 23; ++i) {
      RESBM_CUDA_CHECK(cudaEventRecord(a, ctx.stream));
      RESBM_CUDA_CHECK(cudaMemcpyAsync(d.data(), s.data(), s.size(), cudaMemcpyDeviceToDevice, ctx.stream));
      RESBM_CUDA_CHECK(cudaEventRecord(b, ctx.stream));
      RESBM_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      if (i >= 3) t.push_back(ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    ceiling_gbs = 2.0 * double(s.size()) / (t[t.size() / 2] * 1e-3) / 1e9;
  }

  // A copy of the same bytes (half read, half written), over as many sets.
  auto copy_us = [&](double bytes) {
    const size_t half = size_t(bytes / 2);
    const int sets = sets_for(bytes);
    std::vector<DeviceBuffer<unsigned char>> src, dst;
    for (int i = 0; i < sets; ++i) {
      src.emplace_back(half);
      dst.emplace_back(half);
      src.back().fill_bytes(0x3c, ctx.stream);
    }
    return graph_us(ctx, reps, [&](int k) {
      RESBM_CUDA_CHECK(cudaMemcpyAsync(dst[size_t(k % sets)].data(), src[size_t(k % sets)].data(), half,
                                       cudaMemcpyDeviceToDevice, ctx.stream));
    });
  };

  std::vector<Row> rows;
  const int64_t Hd = 256;  // the Mlp<256> encoder's hidden width (= d_model of the 4-stage runs)
  auto run_size = [&](int64_t N, int64_t r, bool all) {
    const double wire_bytes = double(Wire::bytes(N, r));
    const double code32 = double(N * r) * 4, code16 = double(N * r) * 2;
    // encode from fp32 / bf16
    auto encode_row = [&]<class T>(const char* name, double in_bytes) {
      const double bytes = in_bytes + wire_bytes;
      const int sets = sets_for(bytes);
      std::vector<DeviceBuffer<T>> x;
      std::vector<DeviceBuffer<std::byte>> w;
      for (int i = 0; i < sets; ++i) {
        x.push_back(rnd<T>(ctx, N * r, 3.0f));
        w.emplace_back(size_t(wire_bytes));
      }
      const double us = graph_us(ctx, reps, [&](int k) {
        const size_t i = size_t(k % sets);
        ops::wire_encode<Wire, T>(ctx, status[size_t(k)], x[i].view({N, r}), w[i].view({int64_t(wire_bytes)}));
      }, check_all);
      check_all();
      rows.push_back({name, N, r, bytes, us, copy_us(bytes)});
    };
    encode_row.template operator()<float>("encode fp32 -> int8g16", code32);
    if (all) encode_row.template operator()<bf16>("encode bf16 -> int8g16", code16);
    if (all) {  // decode into bf16, as the decoder's first GEMM reads it
      const double bytes = wire_bytes + code16;
      const int sets = sets_for(bytes);
      std::vector<DeviceBuffer<std::byte>> w;
      std::vector<DeviceBuffer<bf16>> y;
      for (int i = 0; i < sets; ++i) {
        auto x = rnd<float>(ctx, N * r, 3.0f);
        w.emplace_back(size_t(wire_bytes));
        ops::wire_encode<Wire, float>(ctx, status[0], x.view({N, r}), w.back().view({int64_t(wire_bytes)}));
        status[0].check(ctx);
        y.emplace_back(size_t(N * r));
      }
      const double us = graph_us(ctx, reps, [&](int k) {
        const size_t i = size_t(k % sets);
        ops::wire_decode<Wire, bf16>(ctx, status[size_t(k)], w[i].view({int64_t(wire_bytes)}), y[i].view({N, r}));
      }, check_all);
      check_all();
      rows.push_back({"decode int8g16 -> bf16", N, r, bytes, us, copy_us(bytes)});
    }
    // fused: act [N, 256] bf16, W [r, 256], the identity h[:, :r] (bf16 [N, 256] rows) in;
    // the wire out. Against cuBLASLt (fp32 out) + encode, which moves z through memory
    // (and does not add h: it is the lower bound of the unfused path).
    {
      const double bytes = double(N * Hd) * 2 + double(r * Hd) * 2 + code16 + wire_bytes;
      const int sets = sets_for(bytes);
      std::vector<DeviceBuffer<bf16>> act, h;
      std::vector<DeviceBuffer<std::byte>> w;
      auto weight = rnd<bf16>(ctx, r * Hd, 1.0f / 16);
      for (int i = 0; i < sets; ++i) {
        act.push_back(rnd<bf16>(ctx, N * Hd));
        h.push_back(rnd<bf16>(ctx, N * Hd));
        w.emplace_back(size_t(wire_bytes));
      }
      const double us = graph_us(ctx, reps, [&](int k) {
        const size_t i = size_t(k % sets);
        ops::fused_linear_encode<Wire>(ctx, status[size_t(k)], act[i].view({N, Hd}), weight.view({r, Hd}),
                                       h[i].view({N, Hd}), w[i].view({int64_t(wire_bytes)}));
      }, check_all);
      check_all();
      const double copy = copy_us(bytes);
      rows.push_back({"fused h256 gemm+int8g16", N, r, bytes, us, copy});
      if (all) {
        std::vector<DeviceBuffer<float>> z;
        for (int i = 0; i < sets; ++i) z.emplace_back(size_t(N * r));
        const double us2 = graph_us(ctx, reps, [&](int k) {
          const size_t i = size_t(k % sets);
          ops::matmul_forward<float>(ctx, z[i].view({N, r}), act[i].view({N, Hd}), weight.view({r, Hd}));
          ops::wire_encode<Wire, float>(ctx, status[size_t(k)], z[i].view({N, r}), w[i].view({int64_t(wire_bytes)}));
        }, check_all);
        check_all();
        rows.push_back({"cublasLt gemm + encode", N, r, bytes, us2, copy});
      }
    }
  };
  if (argc > 2 && std::string(argv[2]) == "large") {  // for ncu: the streaming size alone
    run_size(1024 * 1024, 64, true);
  } else {
    for (int64_t r : {2, 8, 64}) run_size(16 * 1024, r, true);
    // Streaming sizes (well past L2): what the kernels do against DRAM.
    run_size(1024 * 1024, 64, false);
  }

  std::printf("\nwire kernels, %s; D2D copy ceiling (2 GiB): %.0f GB/s; Int8Grouped<16>\n", ctx.props.name,
              ceiling_gbs);
  std::printf("%-26s %8s %3s %9s %9s %9s %10s %9s %9s\n", "op", "tokens", "r", "MB", "us", "GB/s",
              "copy GB/s", "vs copy", "vs 2GiB");
  for (const Row& row : rows) {
    const double gbs = row.bytes / row.us / 1e3, copy = row.bytes / row.copy_us / 1e3;
    std::printf("%-26s %8ld %3ld %9.3f %9.2f %9.0f %10.0f %8.0f%% %8.0f%%\n", row.name.c_str(), long(row.tokens),
                long(row.r), row.bytes / 1e6, row.us, gbs, copy, 100 * gbs / copy, 100 * gbs / ceiling_gbs);
  }
  return 0;
}
