// The Hopper wgmma single-pass backward of the causal flash attention
// (attention_wgmma_bwd.cuh), before it is wired into attention.cuh:
//  1. its one product whose layout the forward's tests do not cover: dQ = dS · K with dS read
//     from the shared dSᵀ tile as an MN-major A operand (imm-trans-a) and K as an MN-major B,
//     for every (HD, BQ) the kernel uses, against a host GEMM;
//  2. the whole backward (D and the zeroed dq accumulator from attention.cuh's bwd_dot, the
//     lse from ops::attention_forward) against the CPU op and against the mma.sync single
//     pass, dq/dk/dv poisoned first; then with the model's layout (row stride 3·H·hd) and a
//     RoPE table against the mma.sync single pass with the same arguments;
//  3. bwd_tma (the FA3-structured backward: TMA producer, dQ through a shared staging tile and
//     bulk reductions): its dQᵀ = Kᵀ · dSᵀ product (K read MN-major from a 128-byte-swizzled
//     TMA tile as the A operand) against a host GEMM, then the whole backward against the CPU
//     op and against bwd (odd T, B up to 3, hd 64 and 128; row stride 3C and RoPE);
//  4. a timing of the backwards at the training shapes (printed, not checked).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
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

constexpr double kNoise = 1e-8;  // as test_cuda_ops.cu: a reference below this mean square counts as zero
constexpr double kBf16 = 1e-2;   // outputs rounded to bf16
constexpr double kF32 = 1e-5;    // fp32 outputs from bf16 inputs

// ------------------------------------------------------------------------------------------
// 1. dQ (BQ × HD) = dS (BQ × 128 keys) · K (128 × HD), through WB::dq_issue as the kernel
//    splits it over its 2 warpgroups.

template <int HD, int BQ>
__global__ void __launch_bounds__(WB::kThreads) dq_kernel(float* __restrict__ d, const bf16* __restrict__ dst,
                                                          const bf16* __restrict__ kk) {
  constexpr int RG = BQ / 64, NQ = HD * RG / WB::kWarpgroups;
  extern __shared__ __align__(128) unsigned char dq_smem[];
  unsigned char* Ss = dq_smem;                    // dSᵀ [128 keys][BQ queries]
  unsigned char* Ks = Ss + WB::kBK * BQ * sizeof(bf16);  // K [128 keys][HD]
  W::load_tile<WB::kBK, BQ, WB::kThreads>(Ss, dst, 0, WB::kBK, BQ);
  W::load_tile<WB::kBK, HD, WB::kThreads>(Ks, kk, 0, WB::kBK, HD);
  M::cp_commit();
  M::cp_wait<0>();
  W::fence_proxy_async();
  __syncthreads();
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  const int qrow = 64 * (wg % RG), qcol = (wg / RG) * NQ;
  float acc[NQ / 8][4];
  WB::dq_issue<HD, BQ, NQ>(acc, M::saddr(Ss) + W::tile_offset<BQ>(0, qrow / 8),
                           M::saddr(Ks) + W::tile_offset<HD>(0, qcol / 8));
  W::wg_wait<0>();
  W::fence_regs(acc);
  const int r = qrow + 16 * warp + l / 4;
  for (int n = 0; n < NQ / 8; ++n)
    for (int e = 0; e < 4; ++e) d[(r + (e >> 1) * 8) * HD + qcol + n * 8 + 2 * (l % 4) + (e & 1)] = acc[n][e];
}

template <int HD, int BQ>
void check_dq_product() {
  std::printf("dq_issue<HD=%d, BQ=%d>: dQ (%d x %d) = dS (%d x 128, from dS^T) . K (128 x %d)\n", HD, BQ, BQ, HD,
              BQ, HD);
  const auto st = randn(size_t(WB::kBK * BQ)), kk = randn(size_t(WB::kBK * HD));
  std::vector<float> ref(size_t(BQ * HD));
  for (int i = 0; i < BQ; ++i)
    for (int c = 0; c < HD; ++c) {
      double acc = 0;
      for (int x = 0; x < WB::kBK; ++x) acc += double(st[size_t(x * BQ + i)]) * double(kk[size_t(x * HD + c)]);
      ref[size_t(i * HD + c)] = float(acc);
    }
  auto dst = upload_bf16(st), dk = upload_bf16(kk);
  auto dd = poisoned<float>(ref.size());
  constexpr size_t smem = size_t(WB::kBK) * (BQ + HD) * sizeof(bf16);
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(dq_kernel<HD, BQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dq_kernel<HD, BQ><<<1, WB::kThreads, smem, ctx().stream>>>(dd.data(), dst.data(), dk.data());
  RESBM_CUDA_LAUNCH_CHECK();
  const auto got = download(dd);
  const double e = rel_err(got, ref, kNoise);
  std::printf("  %-40s rel err %.3e (bound %.0e)\n", "dQ", e, kF32);
  CHECK(e < kF32);
  if (e >= kF32) {
    const Mismatch m = find_mismatch(got, ref, 1e-3, 1e-3);
    if (m.first >= 0)
      std::printf("    %ld of %ld elements off; first at (row %ld, col %ld): got %g, want %g\n", long(m.count),
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
// decoded into (b, t, h, d), the key block / warpgroup / warp of row t (dk, dv: t is a key)
// and its query tile and dQ warpgroup (dq: t is a query).
void explain(const char* what, const AttnShape& s, int bq, const std::vector<float>& got,
             const std::vector<float>& want) {
  const Mismatch m = find_mismatch(got, want, 3e-2, 3e-2);
  if (m.first < 0) {
    std::printf("    %s: no single element off by more than 3e-2 + 3e-2|want|\n", what);
    return;
  }
  const int64_t i = m.first, d = i % s.hd, h = i / s.hd % s.H, t = i / (s.hd * s.H) % s.T, b = i / (s.hd * s.H * s.T);
  std::printf("    %s: %ld of %ld elements off; first at b %ld, t %ld, h %ld, d %ld (as a key: block %ld, "
              "warpgroup %ld, warp %ld; as a query: tile %ld, row %ld of it): got %g, want %g\n",
              what, long(m.count), long(want.size()), long(b), long(t), long(h), long(d), long(t / WB::kBK),
              long(t % WB::kBK / 64), long(t % 64 / 16), long(t / bq), long(t % bq), double(got[size_t(i)]),
              double(want[size_t(i)]));
}

void check(const char* what, const AttnShape& s, int bq, const std::vector<float>& got,
           const std::vector<float>& want, double bound) {
  const double e = rel_err(got, want, kNoise);
  std::printf("  %-40s rel err %.3e (bound %.0e)\n", what, e, bound);
  CHECK(e < bound);
  if (e >= bound) explain(what, s, bq, got, want);
}

// The columns [part·C, part·C + C) of rows of 3C elements.
std::vector<float> column_block(const std::vector<float>& all, size_t rows, size_t C, int part) {
  std::vector<float> r(rows * C);
  for (size_t row = 0; row < rows; ++row)
    for (size_t c = 0; c < C; ++c) r[row * C + c] = all[row * 3 * C + size_t(part) * C + c];
  return r;
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

template <int HD, int BQ>
void check_backward(const AttnShape& s, DeviceBuffer<bf16>& d_q, DeviceBuffer<bf16>& d_k, DeviceBuffer<bf16>& d_v,
                    DeviceBuffer<bf16>& d_dout, DeviceBuffer<bf16>& d_out, DeviceBuffer<float>& d_cache,
                    const std::vector<float>& rdq, const std::vector<float>& rdk, const std::vector<float>& rdv) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  std::printf("attention wgmma backward (BQ=%d) B=%ld T=%ld H=%ld hd=%ld\n", BQ, long(s.B), long(s.T), long(s.H),
              long(s.hd));
  const float* lse = d_cache.data();
  float* D = d_cache.data() + s.B * s.H * s.T;
  const int64_t C = s.H * s.hd;
  auto dq = poisoned<bf16>(n), dk = poisoned<bf16>(n), dv = poisoned<bf16>(n);
  auto mdq = poisoned<bf16>(n), mdk = poisoned<bf16>(n), mdv = poisoned<bf16>(n);
  auto acc = poisoned<float>(n), macc = poisoned<float>(n);
  prepare<HD>(D, acc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd_bq<HD, BQ>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), d_dout.data(), lse, D, d_q.data(),
                            d_k.data(), d_v.data(), s.B, s.T, s.H, nullptr, nullptr, C);
  prepare<HD>(D, macc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  M::launch_bwd<HD>(ctx(), mdq.data(), macc.data(), mdk.data(), mdv.data(), d_dout.data(), lse, D, d_q.data(),
                    d_k.data(), d_v.data(), s.B, s.T, s.H, nullptr, nullptr, C);
  const auto gq = download(dq), gk = download(dk), gv = download(dv);
  const auto mq = download(mdq), mk = download(mdk), mv = download(mdv);
  check("dq vs CPU op", s, BQ, gq, rdq, 2 * kBf16);
  check("dk vs CPU op", s, BQ, gk, rdk, 2 * kBf16);
  check("dv vs CPU op", s, BQ, gv, rdv, kBf16);
  check("dq vs mma.sync", s, BQ, gq, mq, kBf16);
  check("dk vs mma.sync", s, BQ, gk, mk, kBf16);
  check("dv vs mma.sync", s, BQ, gv, mv, kBf16);
}

// The model's layout: dq, dk, dv the column blocks of one [B·T, 3C] matrix, dq and dk rotated
// back by the RoPE table; against the mma.sync single pass with the same arguments.
template <int HD, int BQ>
void check_backward_rope(const AttnShape& s, DeviceBuffer<bf16>& d_q, DeviceBuffer<bf16>& d_k,
                         DeviceBuffer<bf16>& d_v, DeviceBuffer<bf16>& d_dout, DeviceBuffer<bf16>& d_out,
                         DeviceBuffer<float>& d_cache) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  const int64_t C = s.H * s.hd;
  std::printf("attention wgmma backward (BQ=%d, row stride 3C, RoPE) B=%ld T=%ld H=%ld hd=%ld\n", BQ, long(s.B),
              long(s.T), long(s.H), long(s.hd));
  ops::RopeTable<float> rope(s.T + 3, s.hd);
  ops::CudaRopeTable drope(rope);
  const float* lse = d_cache.data();
  float* D = d_cache.data() + s.B * s.H * s.T;
  auto g3 = poisoned<bf16>(3 * n), m3 = poisoned<bf16>(3 * n);
  auto acc = poisoned<float>(n), macc = poisoned<float>(n);
  prepare<HD>(D, acc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd_bq<HD, BQ>(ctx(), g3.data(), acc.data(), g3.data() + C, g3.data() + 2 * C, d_dout.data(), lse, D,
                            d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, drope.cos(), drope.sin(), 3 * C);
  prepare<HD>(D, macc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  M::launch_bwd<HD>(ctx(), m3.data(), macc.data(), m3.data() + C, m3.data() + 2 * C, d_dout.data(), lse, D,
                    d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, drope.cos(), drope.sin(), 3 * C);
  const auto all = download(g3), mall = download(m3);
  const size_t rows = n / size_t(C);
  check("dq (RoPE, 3C) vs mma.sync", s, BQ, column_block(all, rows, size_t(C), 0),
        column_block(mall, rows, size_t(C), 0), kBf16);
  check("dk (RoPE, 3C) vs mma.sync", s, BQ, column_block(all, rows, size_t(C), 1),
        column_block(mall, rows, size_t(C), 1), kBf16);
  check("dv (3C) vs mma.sync", s, BQ, column_block(all, rows, size_t(C), 2), column_block(mall, rows, size_t(C), 2),
        kBf16);
}

struct Inputs {
  std::vector<float> rdq, rdk, rdv;
  DeviceBuffer<bf16> q, k, v, dout, out;
  DeviceBuffer<float> cache;
};

// Random q, k, v, dout; the CPU op's gradients; on the device the inputs, out and the cache
// (lse) of ops::attention_forward.
Inputs make_inputs(const AttnShape& s) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  auto q = randn(n), k = randn(n), v = randn(n), dout = randn(n);
  std::vector<float> ref(n), cache(size_t(ops::attention_cache_size(s.B, s.T, s.H)));
  auto T4 = [&](std::vector<float>& x) { return Tensor<float>(x.data(), {s.B, s.T, s.H, s.hd}); };
  auto C4 = [&](const std::vector<float>& x) { return Tensor<const float>(x.data(), {s.B, s.T, s.H, s.hd}); };
  ops::attention_forward<float>(host(), T4(ref), Tensor<float>(cache.data(), {int64_t(cache.size())}), C4(q), C4(k),
                                C4(v));
  Inputs in{std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f),
            upload_bf16(q), upload_bf16(k), upload_bf16(v), upload_bf16(dout), poisoned<bf16>(n),
            poisoned<float>(size_t(ops::cuda_attention_cache_size(s.B, s.T, s.H)))};
  ops::attention_backward<float>(host(), T4(in.rdq), T4(in.rdk), T4(in.rdv), C4(dout),
                                 Tensor<const float>(cache.data(), {int64_t(cache.size())}), C4(q), C4(k), C4(v),
                                 C4(ref));
  auto V4 = [&](DeviceBuffer<bf16>& x) { return x.view({s.B, s.T, s.H, s.hd}); };
  ops::attention_forward(ctx(), V4(in.out), in.cache.view({int64_t(in.cache.size())}), V4(in.q), V4(in.k), V4(in.v));
  return in;
}

// ------------------------------------------------------------------------------------------
// 3. bwd_tma.

// dQ (64 × HD) = dS (64 × 128 keys, from the dSᵀ tile) · K (128 × HD), through WB::dqt_issue as
// bwd_tma splits it over its 2 consumer warpgroups: K loaded by TMA into a 128-byte-swizzled
// tile (the kernel's), dSᵀ by cp.async into the interleave tile (the kernel's).
template <int HD>
__global__ void __launch_bounds__(WB::kThreads) dqt_kernel(const __grid_constant__ CUtensorMap tk,
                                                           const bf16* __restrict__ dst, float* __restrict__ d) {
  constexpr int NQ = HD == 64 ? 32 : 64;
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
  W::load_tile<WB::kBK, WB::kTmaBQ, WB::kThreads>(Ss, dst, 0, WB::kBK, WB::kTmaBQ);
  M::cp_commit();
  M::cp_wait<0>();
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
  dqt_kernel<HD><<<1, WB::kThreads, smem, ctx().stream>>>(tk, dst.data(), dd.data());
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

// bwd_tma against the CPU op and against bwd (its default query tile), dq/dk/dv poisoned first.
template <int HD>
void check_backward_tma(const AttnShape& s, DeviceBuffer<bf16>& d_q, DeviceBuffer<bf16>& d_k, DeviceBuffer<bf16>& d_v,
                        DeviceBuffer<bf16>& d_dout, DeviceBuffer<bf16>& d_out, DeviceBuffer<float>& d_cache,
                        const std::vector<float>& rdq, const std::vector<float>& rdk, const std::vector<float>& rdv) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  std::printf("attention wgmma backward bwd_tma B=%ld T=%ld H=%ld hd=%ld\n", long(s.B), long(s.T), long(s.H),
              long(s.hd));
  const float* lse = d_cache.data();
  float* D = d_cache.data() + s.B * s.H * s.T;
  const int64_t C = s.H * s.hd;
  auto dq = poisoned<bf16>(n), dk = poisoned<bf16>(n), dv = poisoned<bf16>(n);
  auto wdq = poisoned<bf16>(n), wdk = poisoned<bf16>(n), wdv = poisoned<bf16>(n);
  auto acc = poisoned<float>(n), wacc = poisoned<float>(n);
  prepare<HD>(D, acc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd_tma<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), d_dout.data(), lse, D, d_q.data(),
                         d_k.data(), d_v.data(), s.B, s.T, s.H, nullptr, nullptr, C);
  prepare<HD>(D, wacc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd<HD>(ctx(), wdq.data(), wacc.data(), wdk.data(), wdv.data(), d_dout.data(), lse, D, d_q.data(),
                     d_k.data(), d_v.data(), s.B, s.T, s.H, nullptr, nullptr, C);
  const auto gq = download(dq), gk = download(dk), gv = download(dv);
  const auto wq = download(wdq), wk = download(wdk), wv = download(wdv);
  constexpr int bq = WB::kTmaBQ;
  check("dq vs CPU op", s, bq, gq, rdq, 2 * kBf16);
  check("dk vs CPU op", s, bq, gk, rdk, 2 * kBf16);
  check("dv vs CPU op", s, bq, gv, rdv, kBf16);
  check("dq vs bwd", s, bq, gq, wq, kBf16);
  check("dk vs bwd", s, bq, gk, wk, kBf16);
  check("dv vs bwd", s, bq, gv, wv, kBf16);
}

// The model's layout (dq, dk, dv the column blocks of one [B·T, 3C] matrix, dq and dk rotated
// back by the RoPE table): bwd_tma against bwd with the same arguments.
template <int HD>
void check_backward_tma_rope(const AttnShape& s, DeviceBuffer<bf16>& d_q, DeviceBuffer<bf16>& d_k,
                             DeviceBuffer<bf16>& d_v, DeviceBuffer<bf16>& d_dout, DeviceBuffer<bf16>& d_out,
                             DeviceBuffer<float>& d_cache) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  const int64_t C = s.H * s.hd;
  std::printf("attention wgmma backward bwd_tma (row stride 3C, RoPE) B=%ld T=%ld H=%ld hd=%ld\n", long(s.B),
              long(s.T), long(s.H), long(s.hd));
  ops::RopeTable<float> rope(s.T + 3, s.hd);
  ops::CudaRopeTable drope(rope);
  const float* lse = d_cache.data();
  float* D = d_cache.data() + s.B * s.H * s.T;
  auto g3 = poisoned<bf16>(3 * n), w3 = poisoned<bf16>(3 * n);
  auto acc = poisoned<float>(n), wacc = poisoned<float>(n);
  prepare<HD>(D, acc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd_tma<HD>(ctx(), g3.data(), acc.data(), g3.data() + C, g3.data() + 2 * C, d_dout.data(), lse, D,
                         d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, drope.cos(), drope.sin(), 3 * C);
  prepare<HD>(D, wacc.data(), d_dout.data(), d_out.data(), s.B, s.T, s.H);
  WB::launch_bwd<HD>(ctx(), w3.data(), wacc.data(), w3.data() + C, w3.data() + 2 * C, d_dout.data(), lse, D,
                     d_q.data(), d_k.data(), d_v.data(), s.B, s.T, s.H, drope.cos(), drope.sin(), 3 * C);
  const auto all = download(g3), wall = download(w3);
  const size_t rows = n / size_t(C);
  constexpr int bq = WB::kTmaBQ;
  check("dq (RoPE, 3C) vs bwd", s, bq, column_block(all, rows, size_t(C), 0), column_block(wall, rows, size_t(C), 0),
        kBf16);
  check("dk (RoPE, 3C) vs bwd", s, bq, column_block(all, rows, size_t(C), 1), column_block(wall, rows, size_t(C), 1),
        kBf16);
  check("dv (3C) vs bwd", s, bq, column_block(all, rows, size_t(C), 2), column_block(wall, rows, size_t(C), 2),
        kBf16);
}

}  // namespace

TEST_CASE("wgmma attention backward building block: dQ = dS . K with dS^T as an MN-major A") {
  check_dq_product<64, 128>();
  check_dq_product<64, 64>();
  check_dq_product<128, 64>();
}

TEST_CASE("wgmma flash attention backward matches the CPU op and the mma.sync single pass") {
  for (AttnShape s : {AttnShape{2, 64, 2, 64}, AttnShape{1, 200, 3, 64}, AttnShape{1, 1, 1, 64},
                      AttnShape{1, 130, 2, 128}, AttnShape{2, 333, 2, 128}, AttnShape{1, 1024, 2, 64},
                      AttnShape{1, 1000, 2, 128}, AttnShape{1, 17, 3, 64}}) {
    Inputs in = make_inputs(s);
    if (s.hd == 64) {
      check_backward<64, 128>(s, in.q, in.k, in.v, in.dout, in.out, in.cache, in.rdq, in.rdk, in.rdv);
      check_backward<64, 64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache, in.rdq, in.rdk, in.rdv);
    } else {
      check_backward<128, 64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache, in.rdq, in.rdk, in.rdv);
    }
  }
}

TEST_CASE("wgmma flash attention backward with row stride 3C and RoPE matches the mma.sync single pass") {
  for (AttnShape s : {AttnShape{2, 333, 2, 128}, AttnShape{1, 200, 3, 64}}) {
    Inputs in = make_inputs(s);
    if (s.hd == 64) {
      check_backward_rope<64, 128>(s, in.q, in.k, in.v, in.dout, in.out, in.cache);
      check_backward_rope<64, 64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache);
    } else {
      check_backward_rope<128, 64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache);
    }
  }
}

TEST_CASE("bwd_tma building block: dQ^T = K^T (swizzled TMA tile, MN-major A) . dS^T") {
  check_dqt_product<64>();
  check_dqt_product<128>();
}

TEST_CASE("bwd_tma (TMA producer, bulk-reduced dQ) matches the CPU op and bwd") {
  for (AttnShape s : {AttnShape{1, 1, 1, 64}, AttnShape{3, 77, 2, 64}, AttnShape{2, 64, 2, 64},
                      AttnShape{1, 200, 3, 64}, AttnShape{1, 1000, 2, 64}, AttnShape{2, 1080, 1, 64},
                      AttnShape{1, 1, 2, 128}, AttnShape{3, 77, 2, 128}, AttnShape{1, 130, 2, 128},
                      AttnShape{1, 1000, 2, 128}, AttnShape{2, 1080, 1, 128}}) {
    Inputs in = make_inputs(s);
    if (s.hd == 64)
      check_backward_tma<64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache, in.rdq, in.rdk, in.rdv);
    else
      check_backward_tma<128>(s, in.q, in.k, in.v, in.dout, in.out, in.cache, in.rdq, in.rdk, in.rdv);
  }
}

TEST_CASE("bwd_tma with row stride 3C and RoPE matches bwd") {
  for (AttnShape s : {AttnShape{3, 77, 2, 64}, AttnShape{1, 1080, 2, 64}, AttnShape{2, 333, 2, 128},
                      AttnShape{1, 1000, 2, 128}}) {
    Inputs in = make_inputs(s);
    if (s.hd == 64)
      check_backward_tma_rope<64>(s, in.q, in.k, in.v, in.dout, in.out, in.cache);
    else
      check_backward_tma_rope<128>(s, in.q, in.k, in.v, in.dout, in.out, in.cache);
  }
}

namespace {
// Both backwards (kernel + dq conversion; D and the zeroed accumulator are prepared once, not
// timed: repeated runs add into the accumulator, which changes nothing of the work).
template <int HD, int BQ>
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
  const float tw = time_ms(
      [&] {
        WB::launch_bwd_bq<HD, BQ>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(),
                                  k.data(), v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  const float tm = time_ms(
      [&] {
        M::launch_bwd<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(), k.data(),
                          v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  // Causal: 5 products of half of 2·B·H·T²·hd flops each.
  const double flop = 5.0 * double(B * H) * double(T) * double(T) * double(HD);
  std::printf("timing B=%ld T=%ld H=%ld hd=%d: wgmma backward (BQ=%d) %.4f ms (%.0f TFLOP/s), mma.sync single pass "
              "%.4f ms (%.0f TFLOP/s)\n",
              long(B), long(T), long(H), HD, BQ, double(tw), flop / (double(tw) * 1e9), double(tm),
              flop / (double(tm) * 1e9));
}
}  // namespace

namespace {
// bwd (launch_bwd, its default query tile) against bwd_tma (launch_bwd_tma), each with its dq
// conversion, on the same prepared inputs (as time_shape).
template <int HD>
void time_tma(int64_t B, int64_t T, int64_t H) {
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
  const float tw = time_ms(
      [&] {
        WB::launch_bwd<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(),
                           k.data(), v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  const float tt = time_ms(
      [&] {
        WB::launch_bwd_tma<HD>(ctx(), dq.data(), acc.data(), dk.data(), dv.data(), dout.data(), lse, D, q.data(),
                               k.data(), v.data(), B, T, H, nullptr, nullptr, C);
      },
      20);
  const double flop = 5.0 * double(B * H) * double(T) * double(T) * double(HD);
  std::printf("timing B=%ld T=%ld H=%ld hd=%d: bwd (BQ=%d) %.4f ms (%.0f TFLOP/s), bwd_tma %.4f ms (%.0f TFLOP/s)\n",
              long(B), long(T), long(H), HD, WB::default_bq<HD>(), double(tw), flop / (double(tw) * 1e9), double(tt),
              flop / (double(tt) * 1e9));
}
}  // namespace

TEST_CASE("wgmma flash attention backward: timing at the training shapes (printed)") {
  time_shape<64, 128>(16, 1024, 12);
  time_shape<64, 64>(16, 1024, 12);
  time_shape<128, 64>(16, 1024, 16);
  time_tma<64>(16, 1024, 12);
  time_tma<128>(16, 1024, 16);
  time_tma<128>(16, 1024, 12);
}
