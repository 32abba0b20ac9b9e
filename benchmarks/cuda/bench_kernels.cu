// Per-kernel timings of the CUDA ops at the training shapes (B=16, T=1024, d=768, H=12,
// hd=64, SwiGLU hidden 2048, byte vocabulary 256; attention also at hd=128, H=16), inputs
// drawn with Philox on the device.
// Each op: 3 warm-ups, then the median of 20 runs timed with CUDA events. Prints ms, the
// bytes it must move over the time (GB/s) and, for matrix work, TFLOP/s.
// Usage: bench_kernels_cuda [reps]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/cuda.cuh"

using namespace resbm;

namespace {

__global__ void fill_normal(bf16* p, int64_t n, uint64_t stream, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    resbm::cuda_detail::stf(p + i, scale * Philox::normal(42, stream, uint64_t(i)));
}
__global__ void fill_normal(float* p, int64_t n, uint64_t stream, float scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = scale * Philox::normal(42, stream, uint64_t(i));
}
__global__ void fill_ids(int32_t* p, int64_t n, uint64_t stream, int32_t V) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = int32_t(Philox::bits64(42, stream, uint64_t(i)) % uint64_t(V));
}

uint64_t g_stream = 1;
template <class T>
DeviceBuffer<T> rnd(CudaContext& ctx, int64_t n, float scale = 1.0f) {
  DeviceBuffer<T> b(static_cast<size_t>(n));
  fill_normal<<<1024, 256, 0, ctx.stream>>>(b.data(), n, g_stream++, scale);
  RESBM_CUDA_LAUNCH_CHECK();
  return b;
}

struct Row {
  std::string name;
  double ms, gbs, tflops;
};

double time_ms(CudaContext& ctx, int reps, const std::function<void()>& fn) {
  cudaEvent_t a, b;
  RESBM_CUDA_CHECK(cudaEventCreate(&a));
  RESBM_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    RESBM_CUDA_CHECK(cudaEventRecord(a, ctx.stream));
    fn();
    RESBM_CUDA_CHECK(cudaEventRecord(b, ctx.stream));
    RESBM_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  CudaContext ctx(0);
  const int64_t B = 16, T = 1024, C = 768, H = 12, hd = 64, F = 2048, V = 256, N = B * T;
  std::vector<Row> rows;
  auto add = [&](const std::string& name, double bytes, double flops, const std::function<void()>& fn) {
    const double ms = time_ms(ctx, reps, fn);
    rows.push_back({name, ms, bytes / ms / 1e6, flops / ms / 1e9});
  };

  // Ceiling: a device-to-device copy of 2 GiB (bytes read + written).
  {
    DeviceBuffer<unsigned char> s(size_t(1) << 31), d(size_t(1) << 31);
    s.zero(ctx.stream);
    add("memcpy d2d 2 GiB", 2.0 * double(s.size()), 0,
        [&] { RESBM_CUDA_CHECK(cudaMemcpyAsync(d.data(), s.data(), s.size(), cudaMemcpyDeviceToDevice, ctx.stream)); });
  }

  auto x = rnd<bf16>(ctx, N * C), y = rnd<bf16>(ctx, N * C), dy = rnd<bf16>(ctx, N * C);
  auto wn = rnd<bf16>(ctx, C, 0.1f);
  auto dwn = rnd<float>(ctx, C);
  DeviceBuffer<float> rstd(static_cast<size_t>(N));
  DeviceBuffer<int32_t> tok(static_cast<size_t>(N));
  fill_ids<<<256, 256, 0, ctx.stream>>>(tok.data(), N, g_stream++, int32_t(V));
  auto table = rnd<bf16>(ctx, V * C);
  auto dtable = rnd<float>(ctx, V * C);

  const double act = double(N * C) * 2;  // one bf16 activation [N, C]
  add("embedding_forward", act + double(N) * 4, 0, [&] {
    ops::embedding_forward(ctx, x.view({N, C}), tok.view({N}), table.view({V, C}));
  });
  add("embedding_backward", act + double(N) * 4, 0, [&] {
    ops::embedding_backward(ctx, dtable.view({V, C}), tok.view({N}), dy.view({N, C}));
  });
  add("rmsnorm_forward", 2 * act + double(N) * 4, 0, [&] {
    ops::rmsnorm_forward(ctx, y.view({N, C}), rstd.view({N}), x.view({N, C}), wn.view({C}), 1e-5f);
  });
  add("rmsnorm_backward", 4 * act, 0, [&] {
    ops::rmsnorm_backward(ctx, y.view({N, C}), dwn.view({C}), dy.view({N, C}), x.view({N, C}), wn.view({C}),
                          rstd.view({N}));
  });
  ops::CudaRopeTable rope(T, hd);
  add("rope_forward (q)", 2 * act, 0, [&] { ops::rope_forward(ctx, x.view({B, T, H, hd}), rope); });
  {
    auto qk = rnd<bf16>(ctx, 2 * N * C);
    add("rope_forward (q and k, one launch)", 4 * act, 0,
        [&] { ops::rope_forward(ctx, qk.view({2 * B, T, H, hd}), rope); });
  }

  {
    auto g = rnd<bf16>(ctx, N * F), u = rnd<bf16>(ctx, N * F), o = rnd<bf16>(ctx, N * F), d = rnd<bf16>(ctx, N * F);
    auto dg = rnd<bf16>(ctx, N * F), du = rnd<bf16>(ctx, N * F);
    const double a = double(N * F) * 2;
    add("swiglu_forward", 3 * a, 0, [&] { ops::swiglu_forward(ctx, o.view({N, F}), g.view({N, F}), u.view({N, F})); });
    add("swiglu_backward", 5 * a, 0, [&] {
      ops::swiglu_backward(ctx, dg.view({N, F}), du.view({N, F}), d.view({N, F}), g.view({N, F}), u.view({N, F}));
    });
    auto dgu = rnd<bf16>(ctx, 2 * N * F);  // the model's layout: dgate | dup in one [N, 2F]
    add("swiglu_backward (into [N, 2F])", 5 * a, 0, [&] {
      ops::swiglu_backward(ctx, CudaTensor<bf16>(dgu.data(), {N, F}), CudaTensor<bf16>(dgu.data() + F, {N, F}),
                           d.view({N, F}), g.view({N, F}), u.view({N, F}), 2 * F);
    });
  }
  {
    auto logits = rnd<bf16>(ctx, N * V, 2.0f), dl = rnd<bf16>(ctx, N * V);
    DeviceBuffer<float> losses(static_cast<size_t>(N));
    add("cross_entropy_forward", double(N * V) * 2, 0,
        [&] { ops::cross_entropy_forward(ctx, losses.view({N}), logits.view({N, V}), tok.view({N})); });
    add("cross_entropy_backward", double(N * V) * 4, 0,
        [&] { ops::cross_entropy_backward(ctx, dl.view({N, V}), logits.view({N, V}), tok.view({N}), 1.0f / N); });
  }
  {
    const int64_t P = 12 * 12 * C * C;  // the matrices of a 12-layer d=768 model
    auto p = rnd<float>(ctx, P), g = rnd<float>(ctx, P, 0.01f), m = rnd<float>(ctx, P, 0.01f), v = rnd<float>(ctx, P, 0.0f);
    DeviceBuffer<bf16> p16(static_cast<size_t>(P));
    ops::CudaAdamWStep s;
    add("adamw_update (85M params)", double(P) * (4 * 7 + 2), 0, [&] {
      ops::adamw_update(ctx, p.view({P}), p16.view({P}), g.view({P}), m.view({P}), v.view({P}), s);
    });
    add("cast fp32->bf16 (85M)", double(P) * 6, 0, [&] { ops::cast_to_bf16(ctx, p16.view({P}), p.view({P})); });
  }
  // Muon's Newton–Schulz (5 steps) on the matrices of (a)'s 12 layers, batched by shape as
  // optim::CudaMuon does: q, k, v, o (48 of C x C), gate and up (24 of F x C, tall: transposed
  // in and out), down (12 of C x F). FLOPs per step for the wide r x c: X·Xᵀ 2r²c, A·A 2r³,
  // B·X 2r²c.
  for (auto [count, rows, cols] : {std::tuple<int64_t, int64_t, int64_t>{48, C, C}, {24, F, C}, {12, C, F}}) {
    const int64_t r = std::min(rows, cols), c = std::max(rows, cols);
    auto u = rnd<float>(ctx, count * rows * cols);
    DeviceBuffer<bf16> o(static_cast<size_t>(count * rows * cols));
    ops::CudaNewtonSchulzScratch scratch;
    scratch.reserve(rows, cols, count);
    add(cat("newton_schulz5 ", count, " x ", rows, "x", cols, " (5 steps)"), double(count * rows * cols) * 6,
        5.0 * double(count) * double(4 * r * r * c + 2 * r * r * r), [&] {
          ops::newton_schulz5(ctx, o.view({count, rows, cols}),
                              CudaTensor<const float>(u.data(), {count, rows, cols}), 5, scratch);
        });
  }

  struct Mm {
    const char* name;
    int64_t in, out;
  };
  for (Mm mm : {Mm{"qkv", C, 3 * C}, Mm{"attn proj", C, C}, Mm{"mlp up (gate+up)", C, 2 * F}, Mm{"mlp down", F, C},
                Mm{"head", C, V}}) {
    auto inp = rnd<bf16>(ctx, N * mm.in), w = rnd<bf16>(ctx, mm.out * mm.in, 0.02f), out = rnd<bf16>(ctx, N * mm.out);
    auto dinp = rnd<bf16>(ctx, N * mm.in);
    auto dw = rnd<float>(ctx, mm.out * mm.in);
    const double fl = 2.0 * double(N) * double(mm.in) * double(mm.out);
    const double by = 2.0 * double(N * mm.in + mm.in * mm.out + N * mm.out);
    add((std::string("matmul_forward ") + mm.name).c_str(), by, fl, [&] {
      ops::matmul_forward<bf16>(ctx, out.view({N, mm.out}), inp.view({N, mm.in}), w.view({mm.out, mm.in}));
    });
    add((std::string("matmul_backward ") + mm.name).c_str(), 2 * by, 2 * fl, [&] {
      ops::matmul_backward(ctx, dinp.view({N, mm.in}), dw.view({mm.out, mm.in}), out.view({N, mm.out}),
                           inp.view({N, mm.in}), w.view({mm.out, mm.in}));
    });
  }
  // The input gradient of the q/k/v (gate/up) projections, as the model computes it (one
  // GEMM per weight over the [3, N, C] gradients, adding into din) against one GEMM over
  // gradients laid out [N, 3C] (K = 3C): what changing that layout would buy.
  for (auto [name, OC, G] : {std::tuple<const char*, int64_t, int64_t>{"qkv", C, 3}, {"gate+up", F, 2}}) {
    auto dout = rnd<bf16>(ctx, N * OC * G), w = rnd<bf16>(ctx, OC * G * C, 0.02f), din = rnd<bf16>(ctx, N * C);
    const double fl = 2.0 * double(N) * double(C) * double(OC * G);
    const double by = 2.0 * double(N * OC * G + OC * G * C + N * C);
    add((std::string("dinp ") + name + ": a GEMM per weight").c_str(), by, fl, [&] {
      for (int64_t i = 0; i < G; ++i)
        ops::gemm<bf16>(ctx, false, false, N, C, OC, 1.0f, dout.data() + i * N * OC, OC, w.data() + i * OC * C, C,
                        i == 0 ? 0.0f : 1.0f, din.data(), C);
    });
    add((std::string("dinp ") + name + ": one GEMM, K = all").c_str(), by, fl, [&] {
      ops::gemm<bf16>(ctx, false, false, N, C, OC * G, 1.0f, dout.data(), OC * G, w.data(), C, 0.0f, din.data(), C);
    });
  }
  // The residual add of the attention projection: a copy of the stream, then the GEMM adding
  // into it (beta = 1), against gemm_add reading the stream as C.
  {
    auto att = rnd<bf16>(ctx, N * C), wo = rnd<bf16>(ctx, C * C, 0.02f), mid = rnd<bf16>(ctx, N * C);
    const double fl = 2.0 * double(N) * double(C) * double(C);
    add("attn proj + residual: copy, gemm beta 1", 4 * act, fl, [&] {
      RESBM_CUDA_CHECK(cudaMemcpyAsync(mid.data(), x.data(), size_t(N * C) * 2, cudaMemcpyDeviceToDevice, ctx.stream));
      ops::gemm<bf16>(ctx, false, true, N, C, C, 1.0f, att.data(), C, wo.data(), C, 1.0f, mid.data(), C);
    });
    add("attn proj + residual: gemm_add", 3 * act, fl, [&] {
      ops::gemm_add<bf16>(ctx, false, true, N, C, C, 1.0f, att.data(), C, wo.data(), C, x.data(), mid.data(), C);
    });
  }
  // Attention at the training shape (hd 64) and at hd 128 (H=16, d=2048), each backward
  // both ways: the single pass (default) and the deterministic two kernels. FLOPs count
  // the algorithm's products (causal: half of the T×T scores): forward 2, backward 5 (S
  // recomputed, dP, dV, dK, dQ), whichever path, so TFLOP/s compare like ms do.
  for (const int64_t ahd : {int64_t(64), int64_t(128)}) {
    const int64_t AH = ahd == 64 ? H : 16, AC = AH * ahd;
    auto q = rnd<bf16>(ctx, N * AC), k = rnd<bf16>(ctx, N * AC), v = rnd<bf16>(ctx, N * AC), o = rnd<bf16>(ctx, N * AC);
    auto dq = rnd<bf16>(ctx, N * AC), dk = rnd<bf16>(ctx, N * AC), dv = rnd<bf16>(ctx, N * AC);
    auto g = rnd<bf16>(ctx, N * AC);
    DeviceBuffer<float> cache(static_cast<size_t>(ops::cuda_attention_cache_size(B, T, AH)));
    auto V4 = [&](DeviceBuffer<bf16>& t) { return t.view({B, T, AH, ahd}); };
    const double pair = double(B * AH) * double(T) * double(T) / 2 * double(ahd) * 2;
    const double aact = double(N * AC) * 2;
    const std::string tag = ahd == 64 ? " hd64" : " hd128";
    add(("attention_forward" + tag).c_str(), 4 * aact, 2 * pair, [&] {
      ops::attention_forward(ctx, V4(o), cache.view({int64_t(cache.size())}), V4(q), V4(k), V4(v));
    });
    struct Path {
      bool det, wgmma;
      const char* name;
    };
    for (const Path p : {Path{false, true, " single pass, wgmma"}, Path{false, false, " single pass, mma.sync"},
                         Path{true, false, " deterministic"}}) {
      ops::cuda_attention_deterministic = p.det;
      ops::cuda_attention_wgmma = p.wgmma;
      add(("attention_backward" + tag + p.name).c_str(), 8 * aact, 5 * pair, [&] {
        ops::attention_backward(ctx, V4(dq), V4(dk), V4(dv), V4(g), cache.view({int64_t(cache.size())}), V4(q),
                                V4(k), V4(v), V4(o));
      });
    }
    ops::cuda_attention_deterministic = false;
    ops::cuda_attention_wgmma = true;
    // The model's backward: RoPE's inverse rotation of dq and dk in the kernels' stores
    // against the plain backward followed by RoPE's own pass over dq and dk.
    ops::CudaRopeTable arope(T, ahd);
    add(("attention_backward" + tag + " + rope, fused").c_str(), 8 * aact, 5 * pair, [&] {
      ops::attention_backward(ctx, V4(dq), V4(dk), V4(dv), V4(g), cache.view({int64_t(cache.size())}), V4(q), V4(k),
                              V4(v), V4(o), &arope);
    });
    add(("attention_backward" + tag + " + rope, separate").c_str(), 12 * aact, 5 * pair, [&] {
      ops::attention_backward(ctx, V4(dq), V4(dk), V4(dv), V4(g), cache.view({int64_t(cache.size())}), V4(q), V4(k),
                              V4(v), V4(o));
      ops::rope_backward(ctx, V4(dq), arope);
      ops::rope_backward(ctx, V4(dk), arope);
    });
  }
  ctx.synchronize();
  std::printf("\n%-40s %10s %10s %10s\n", "op (B=16 T=1024 d=768 H=12)", "ms", "GB/s", "TFLOP/s");
  for (const Row& r : rows)
    std::printf("%-40s %10.4f %10.1f %10.2f\n", r.name.c_str(), r.ms, r.gbs, r.tflops);
  return 0;
}
