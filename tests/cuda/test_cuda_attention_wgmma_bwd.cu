// The Hopper wgmma single-pass backward of the causal flash attention (attention_wgmma_bwd.cuh:
// bwd_tma, FA3's structure: a TMA producer warp, dQ through a shared staging tile and bulk
// reductions), in two layers so that a failure says where it comes from:
//  1. its one product whose layout the forward's tests do not cover: dQᵀ = Kᵀ · dSᵀ (K read
//     MN-major from a 128-byte-swizzled TMA tile as the A operand, dSᵀ an MN-major interleave
//     tile), hd 64 and 128, against a host GEMM;
//  2. the whole backward (D and the zeroed dq accumulator from attention.cuh's bwd_dot, the lse
//     from ops::attention_forward) against the CPU op and against the mma.sync single pass
//     (cuda_detail_attn_mma::launch_bwd with its own zeroed token-major accumulator), dq/dk/dv
//     poisoned first (odd T, B up to 3, hd 64 and 128); then with the model's layout (row
//     stride 3·H·hd) and a RoPE table against the mma.sync single pass with the same arguments.
// Last, a timing of both backwards at the training shapes (printed, not checked).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "resbm/cuda.cuh"
#include "resbm/ops/cpu/ops.hpp"
#include "resbm/ops/cuda/attention_wgmma_bwd.cuh"
#include "cuda/support.cuh"

using namespace resbm;
using namespace resbm::test;
namespace WB = resbm::ops::cuda_detail_attn_wgmma_bwd;
namespace W = resbm::ops::cuda_detail_attn_wgmma;
namespace M = resbm::ops::cuda_detail_attn_mma;

namespace {


// ------------------------------------------------------------------------------------------
// 1. dQ (64 × HD) = dS (64 × 128 keys, from the dSᵀ tile) · K (128 × HD), through WB::dqt_issue
//    as bwd_tma splits it over its 2 consumer warpgroups: K loaded by TMA into a
//    128-byte-swizzled tile, dSᵀ stored into the interleave tile by plain 16-byte stores (the
//    kernel's store_ds writes it with generic stores too), both as the kernel lays them out.
template <int HD>
__global__ void __launch_bounds__(WB::kConsumerThreads)
    dqt_kernel(const __grid_constant__ CUtensorMap tk, const bf16* __restrict__ dst, float* __restrict__ d) {
  constexpr int NQ = HD == 64 ? 32 : 64, V = WB::kTmaBQ / 8;  // V: 16-byte chunks of a dSᵀ row
  extern __shared__ __align__(1024) unsigned char dqt_smem[];
  unsigned char* Ks = dqt_smem + (1024u - M::saddr(dqt_smem) % 1024u) % 1024u;  // K [128 keys][HD], swizzled
  unsigned char* Ss = Ks + WB::kBK * HD * sizeof(bf16);                        // dSᵀ [128 keys][64 queries]
  const uint32_t bar = M::saddr(Ss + WB::kBK * WB::kTmaBQ * sizeof(bf16));
  if (threadIdx.x == 0) {
    W::mbar_init(bar, 1);
    W::mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    W::mbar_expect_tx(bar, WB::kBK * HD * sizeof(bf16));
    W::tma_tile<HD, WB::kBK>(M::saddr(Ks), &tk, bar, 0, 0, 0);
  }
  for (int i = int(threadIdx.x); i < WB::kBK * V; i += int(blockDim.x))
    *reinterpret_cast<uint4*>(Ss + W::tile_offset<WB::kTmaBQ>(i / V, i % V)) = reinterpret_cast<const uint4*>(dst)[i];
  W::fence_proxy_async();
  __syncthreads();
  W::mbar_wait(bar, 0);
  const int cw = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  const int qo = HD == 64 ? 32 * cw : 0, hp = HD == 64 ? 0 : cw;
  float acc[NQ / 8][4];
  W::wg_fence();
  WB::dqt_issue<NQ>(acc, M::saddr(Ks) + hp * WB::kBK * W::kRowBytes,
                    M::saddr(Ss) + W::tile_offset<WB::kTmaBQ>(0, qo / 8));
  W::wg_commit();
  W::wg_wait<0>();
  W::fence_regs(acc);
  for (int n = 0; n < NQ / 8; ++n)
    for (int e = 0; e < 4; ++e) {
      const int c = 64 * hp + 16 * warp + l / 4 + 8 * (e >> 1), q = qo + 8 * n + 2 * (l % 4) + (e & 1);
      d[q * HD + c] = acc[n][e];
    }
}

template <int HD>
void check_dqt_product() {
  constexpr int BQ = WB::kTmaBQ, NK = WB::kBK;
  std::printf("dqt_issue<HD=%d>: dQ^T (%d x %d) = K^T (swizzled, MN-major A) . dS^T (%d keys x %d)\n", HD, HD, BQ,
              NK, BQ);
  const auto st = randn(size_t(NK * BQ)), kk = randn(size_t(NK * HD));
  std::vector<float> ref(size_t(BQ * HD));
  for (int i = 0; i < BQ; ++i)
    for (int c = 0; c < HD; ++c) {
      double acc = 0;
      for (int x = 0; x < NK; ++x) acc += double(st[size_t(x * BQ + i)]) * double(kk[size_t(x * HD + c)]);
      ref[size_t(i * HD + c)] = float(acc);
    }
  auto dst = upload_bf16(st), dk = upload_bf16(kk);
  auto dd = poisoned<float>(ref.size());
  const CUtensorMap tk = W::tensor_map<HD>(dk.data(), 1, NK, 1, NK);
  const size_t smem = 1024 + size_t(NK) * (BQ + HD) * sizeof(bf16) + 8;
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(dqt_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dqt_kernel<HD><<<1, WB::kConsumerThreads, smem, ctx().stream>>>(tk, dst.data(), dd.data());
  RESBM_CUDA_LAUNCH_CHECK();
  const auto got = download(dd);
  const double e = rel_err(got, ref, kNoise);
  std::printf("  %-40s rel err %.3e (bound %.0e)\n", "dQ", e, kF32);
  CHECK(e < kF32);
  if (e >= kF32) {
    const Mismatch m = find_mismatch(got, ref, 1e-3, 1e-3);
    if (m.first >= 0)
      std::printf("    %ld of %ld elements off; first at (query %ld, hd %ld): got %g, want %g\n", long(m.count),
                  long(ref.size()), long(m.first / HD), long(m.first % HD), double(got[size_t(m.first)]),
                  double(ref[size_t(m.first)]));
  }
}

// ------------------------------------------------------------------------------------------
// 2. The whole backward.

struct AttnShape {
  int64_t B, T, H, hd;
};

// Where a gradient (got, [B, T, H, hd]) first leaves want by more than bf16-scale rounding,
// decoded into (b, t, h, d), the key block / consumer warpgroup / warp of row t (dk, dv: t is a
// key) and its query tile (dq: t is a query).
void explain(const std::string& what, const AttnShape& s, const std::vector<float>& got,
             const std::vector<float>& want) {
  const Mismatch m = find_mismatch(got, want, 3e-2, 3e-2);
  if (m.first < 0) {
    std::printf("    %s: no single element off by more than 3e-2 + 3e-2|want|\n", what.c_str());
    return;
  }
  const int64_t i = m.first, d = i % s.hd, h = i / s.hd % s.H, t = i / (s.hd * s.H) % s.T, b = i / (s.hd * s.H * s.T);
  std::printf("    %s: %ld of %ld elements off; first at b %ld, t %ld, h %ld, d %ld (as a key: block %ld, "
              "consumer %ld, warp %ld; as a query: tile %ld, row %ld of it): got %g, want %g\n",
              what.c_str(), long(m.count), long(want.size()), long(b), long(t), long(h), long(d), long(t / WB::kBK),
              long(t % WB::kBK / 64), long(t % 64 / 16), long(t / WB::kTmaBQ), long(t % WB::kTmaBQ),
              double(got[size_t(i)]), double(want[size_t(i)]));
}

void check(const std::string& what, const AttnShape& s, const std::vector<float>& got, const std::vector<float>& want,
           double bound) {
  const double e = rel_err(got, want, kNoise);
  std::printf("  %-40s rel err %.3e (bound %.0e)\n", what.c_str(), e, bound);
  CHECK(e < bound);
  if (e >= bound) explain(what, s, got, want);
}


// D = rowsum(dout ⊙ out) into the cache's second half and dq_acc zeroed, as attention.cuh's
// launch_bwd does before the single pass.
template <int HD>
void prepare(float* D, float* dq_acc, const bf16* dout, const bf16* out, int64_t B, int64_t T, int64_t H) {
  const int64_t rows = B * T * H;
  ops::cuda_detail_attn::bwd_dot<HD><<<unsigned((rows * (HD / 8) + 255) / 256), 256, 0, ctx().stream>>>(
      D, dq_acc, dout, out, rows, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

struct Inputs {
  std::vector<float> rdq, rdk, rdv;
  DeviceBuffer<bf16> q, k, v, dout, out;
  DeviceBuffer<float> cache;
};

// Random q, k, v, dout; the CPU op's gradients; on the device the inputs, out and the cache
// (lse) of ops::attention_forward.
Inputs make_inputs(const AttnShape& s) {
  AttentionReference ref = attention_reference(s.B, s.T, s.H, s.hd);
  const size_t n = ref.q.size();
  Inputs in{std::move(ref.dq), std::move(ref.dk), std::move(ref.dv), upload_bf16(ref.q), upload_bf16(ref.k),
            upload_bf16(ref.v), upload_bf16(ref.dout), poisoned<bf16>(n),
            poisoned<float>(size_t(ops::cuda_attention_cache_size(s.B, s.T, s.H)))};
  auto V4 = [&](DeviceBuffer<bf16>& x) { return x.view({s.B, s.T, s.H, s.hd}); };
  ops::attention_forward(ctx(), V4(in.out), in.cache.view({int64_t(in.cache.size())}), V4(in.q), V4(in.k), V4(in.v));
  return in;
}

// bwd_tma against the mma.sync single pass (each after its own prepare: D and a zeroed dq
// accumulator) and, in the plain layout, against the CPU op; dq, dk, dv poisoned first. model:
// the model's layout instead, dq, dk, dv the column blocks of one [B·T, 3C] matrix, dq and dk
// rotated back by a RoPE table (which the CPU gradients do not know: no CPU comparison).
template <int HD>
void check_backward_tma(const AttnShape& s, Inputs& in, bool model) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd), C = size_t(s.H * s.hd), rows = n / C;
  const size_t G = model ? 3 * C : C, off = model ? C : n;  // the row stride; dk at off, dv at 2·off
  std::printf("attention wgmma backward bwd_tma%s B=%ld T=%ld H=%ld hd=%ld\n", model ? " (row stride 3C, RoPE)" : "",
              long(s.B), long(s.T), long(s.H), long(s.hd));
  ops::RopeTable<float> rope(s.T + 3, s.hd);
  ops::CudaRopeTable drope(rope);
  const float* rcos = model ? drope.cos() : nullptr;
  const float* rsin = model ? drope.sin() : nullptr;
  const float* lse = in.cache.data();
  float* D = in.cache.data() + s.B * s.H * s.T;
  auto g = poisoned<bf16>(3 * n), m = poisoned<bf16>(3 * n);
  auto acc = poisoned<float>(n), macc = poisoned<float>(n);
  prepare<HD>(D, acc.data(), in.dout.data(), in.out.data(), s.B, s.T, s.H);
  WB::launch_bwd_tma<HD>(ctx(), g.data(), acc.data(), g.data() + off, g.data() + 2 * off, in.dout.data(), lse, D,
                         in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, rcos, rsin, int64_t(G));
  prepare<HD>(D, macc.data(), in.dout.data(), in.out.data(), s.B, s.T, s.H);
  M::launch_bwd<HD>(ctx(), m.data(), macc.data(), m.data() + off, m.data() + 2 * off, in.dout.data(), lse, D,
                    in.q.data(), in.k.data(), in.v.data(), s.B, s.T, s.H, rcos, rsin, int64_t(G));
  const auto gall = download(g), mall = download(m);
  const char* const names[3] = {"dq", "dk", "dv"};
  const std::vector<float>* const cpu[3] = {&in.rdq, &in.rdk, &in.rdv};
  for (int p = 0; p < 3; ++p) {
    const auto got = gradient(gall, rows, C, G, off, p);
    if (!model) check(std::string(names[p]) + " vs CPU op", s, got, *cpu[p], p < 2 ? 2 * kBf16 : kBf16);
    const char* how = !model ? "" : p < 2 ? " (RoPE, 3C)" : " (3C)";
    check(std::string(names[p]) + how + " vs mma.sync", s, got, gradient(mall, rows, C, G, off, p), kBf16);
  }
}

void check_backward_tma(const AttnShape& s, bool model) {
  Inputs in = make_inputs(s);
  if (s.hd == 64)
    check_backward_tma<64>(s, in, model);
  else
    check_backward_tma<128>(s, in, model);
}

}  // namespace

TEST_CASE("bwd_tma building block: dQ^T = K^T (swizzled TMA tile, MN-major A) . dS^T") {
  check_dqt_product<64>();
  check_dqt_product<128>();
}

TEST_CASE("wgmma flash attention backward (bwd_tma) matches the CPU op and the mma.sync single pass") {
  for (AttnShape s : {AttnShape{1, 1, 1, 64}, AttnShape{3, 77, 2, 64}, AttnShape{2, 64, 2, 64},
                      AttnShape{1, 200, 3, 64}, AttnShape{1, 1000, 2, 64}, AttnShape{2, 1080, 1, 64},
                      AttnShape{1, 1, 2, 128}, AttnShape{3, 77, 2, 128}, AttnShape{1, 130, 2, 128},
                      AttnShape{1, 1000, 2, 128}, AttnShape{2, 1080, 1, 128}})
    check_backward_tma(s, false);
}

TEST_CASE("wgmma flash attention backward (bwd_tma) with row stride 3C and RoPE matches the mma.sync single pass") {
  for (AttnShape s : {AttnShape{3, 77, 2, 64}, AttnShape{1, 1080, 2, 64}, AttnShape{2, 333, 2, 128},
                      AttnShape{1, 1000, 2, 128}})
    check_backward_tma(s, true);
}

namespace {
// The mma.sync single pass and bwd_tma (kernel + dq conversion each; D and the zeroed
// accumulator are prepared once, not timed: repeated runs add into the accumulator, in either
// layout, which changes nothing of the work, but leaves dq meaningless), and bwd_tma's dk and
// dv (written, not added) against the mma.sync pass's at the same shape.
template <int HD>
void time_shape(int64_t B, int64_t T, int64_t H) {
  const int64_t n = B * T * H * HD, nl = B * H * T;
  const size_t un = static_cast<size_t>(n), unl = static_cast<size_t>(nl);
  DeviceBuffer<bf16> q(un), k(un), v(un), dout(un), out(un), dq(un), dk(un), dv(un);
  DeviceBuffer<float> cache(2 * unl), acc(un);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(q.data(), n, 1u);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(k.data(), n, 2u);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(v.data(), n, 3u);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(dout.data(), n, 4u);
  RESBM_CUDA_LAUNCH_CHECK();
  auto V4 = [&](DeviceBuffer<bf16>& x) { return x.view({B, T, H, int64_t(HD)}); };
  ops::attention_forward(ctx(), V4(out), cache.view({2 * nl}), V4(q), V4(k), V4(v));
  const float* lse = cache.data();
  float* D = cache.data() + nl;
  prepare<HD>(D, acc.data(), dout.data(), out.data(), B, T, H);
  const int64_t C = H * HD;
  const float tm = time_ms(
      [&] {
        M::launch_bwd<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(), k.data(),
                          v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  const std::vector<float> mdk = download(dk), mdv = download(dv);
  const float tt = time_ms(
      [&] {
        WB::launch_bwd_tma<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(),
                               k.data(), v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  // Causal: 5 products of half of 2·B·H·T²·hd flops each.
  const double flop = 5.0 * double(B * H) * double(T) * double(T) * double(HD);
  std::printf("timing B=%ld T=%ld H=%ld hd=%d: mma.sync single pass %.4f ms (%.0f TFLOP/s), bwd_tma %.4f ms "
              "(%.0f TFLOP/s)\n",
              long(B), long(T), long(H), HD, double(tm), flop / (double(tm) * 1e9), double(tt),
              flop / (double(tt) * 1e9));
  const std::vector<float> tdk = download(dk), tdv = download(dv);
  CHECK_REL(tdk, mdk, kBf16);
  CHECK_REL(tdv, mdv, kBf16);
}
}  // namespace

TEST_CASE("wgmma flash attention backward: timing at the training shapes (printed) and agreement with mma.sync") {
  time_shape<64>(16, 1024, 12);
  time_shape<128>(16, 1024, 16);
  time_shape<128>(16, 1024, 12);
}
