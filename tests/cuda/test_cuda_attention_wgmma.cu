// The Hopper wgmma forwards of the causal flash attention (attention_wgmma.cuh: fwd_pipe and
// fwd_tma). Two layers, so that a failure says where it comes from:
//  1. the two warpgroup products the kernels are built of (qk: S = Q·Kᵀ from K-major shared
//     tiles; pv: O += P·V with P packed from the accumulator registers and V an MN-major
//     shared tile), each alone against a host GEMM, for every shape the kernels use: with
//     fwd_pipe's no-swizzle tiles loaded by cp.async, and with fwd_tma's 128-byte-swizzled
//     tiles loaded by TMA from a head of a [B, T, H, hd] tensor whose T ends inside the tile
//     (the rows past it must arrive as zeros). A wrong descriptor (LBO/SBO, swizzle, start
//     address steps), tensor map or fragment layout fails here with the first wrong
//     (row, col) printed;
//  2. each whole forward against the CPU op (out), the double-precision log-sum-exp (lse)
//     and a second GPU forward (fwd_pipe against mma.sync, fwd_tma against fwd_pipe), with
//     out and lse poisoned (NaN) plus a poisoned guard past their ends that must stay
//     untouched.
// Last, a timing of the forwards at the training shapes (printed, not checked).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "resbm/cuda.cuh"
#include "resbm/ops/cpu/ops.hpp"
#include "resbm/ops/cuda/attention_wgmma.cuh"
#include "cuda/support.cuh"

using namespace resbm;
using namespace resbm::test;
namespace W = resbm::ops::cuda_detail_attn_wgmma;
namespace M = resbm::ops::cuda_detail_attn_mma;

namespace {

constexpr double kNoise = 1e-8;  // as test_cuda_ops.cu: a reference below this mean square counts as zero
constexpr double kBf16 = 1e-2;   // outputs rounded to bf16
constexpr double kF32 = 1e-5;    // fp32 outputs from bf16 inputs

#define CHECK_REL(out, ref, bound)                                                  \
  do {                                                                              \
    const double e_ = rel_err(out, ref, kNoise);                                    \
    std::printf("  %-40s rel err %.3e (bound %.0e)\n", #out, e_, double(bound));     \
    CHECK(e_ < (bound));                                                            \
  } while (0)

// CHECK_REL for a rows × cols matrix (row-major) that, when the bound fails, prints the first
// wrong (row, col) (a wrong descriptor or fragment mapping shows as a pattern there).
void check_matrix(const char* what, const std::vector<float>& got, const std::vector<float>& want, int64_t cols,
                  double bound) {
  const double e = rel_err(got, want, kNoise);
  std::printf("  %-40s rel err %.3e (bound %.0e)\n", what, e, bound);
  CHECK(e < bound);
  if (e < bound) return;
  const Mismatch m = find_mismatch(got, want, 1e-3, 1e-3);
  if (m.first >= 0)
    std::printf("    %ld of %ld elements off; first at (row %ld, col %ld): got %g, want %g\n", long(m.count),
                long(want.size()), long(m.first / cols), long(m.first % cols), double(got[size_t(m.first)]),
                double(want[size_t(m.first)]));
}

// ------------------------------------------------------------------------------------------
// 1. The warpgroup products alone: 2 warpgroups, each its 64 rows, as in the kernel.

// s (128 × BN) = A (128 × HD) · B (BN × HD)ᵀ through W::qk; every warpgroup w takes rows
// 64w.. of A, the way the kernel addresses Q.
template <int HD, int BN>
__global__ void __launch_bounds__(W::kThreads) qk_kernel(float* __restrict__ d, const bf16* __restrict__ a,
                                                         const bf16* __restrict__ b) {
  extern __shared__ __align__(128) unsigned char qk_smem[];
  unsigned char* As = qk_smem;
  unsigned char* Bs = As + 128 * HD * sizeof(bf16);
  W::load_tile<128, HD>(As, a, 0, 128, HD);
  W::load_tile<BN, HD>(Bs, b, 0, BN, HD);
  M::cp_commit();
  M::cp_wait<0>();
  W::fence_proxy_async();
  __syncthreads();
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  float s[BN / 8][4];
  W::qk<HD, BN>(s, M::saddr(As) + W::tile_offset<HD>(64 * wg, 0), M::saddr(Bs));
  const int r = 64 * wg + 16 * warp + l / 4;
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) d[(r + (e >> 1) * 8) * BN + n * 8 + 2 * (l % 4) + (e & 1)] = s[n][e];
}

// o (128 × HD) = P (128 × BN, read into the accumulator layout) · V (BN × HD) through W::pv.
template <int HD, int BN>
__global__ void __launch_bounds__(W::kThreads) pv_kernel(float* __restrict__ d, const float* __restrict__ p,
                                                         const bf16* __restrict__ v) {
  extern __shared__ __align__(128) unsigned char pv_smem[];
  W::load_tile<BN, HD>(pv_smem, v, 0, BN, HD);
  M::cp_commit();
  M::cp_wait<0>();
  W::fence_proxy_async();
  __syncthreads();
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  const int r = 64 * wg + 16 * warp + l / 4;
  float s[BN / 8][4], o[HD / 8][4];
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) s[n][e] = p[(r + (e >> 1) * 8) * BN + n * 8 + 2 * (l % 4) + (e & 1)];
  for (int n = 0; n < HD / 8; ++n)
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  W::pv<HD, BN>(o, s, M::saddr(pv_smem));
  for (int n = 0; n < HD / 8; ++n)
    for (int e = 0; e < 4; ++e) d[(r + (e >> 1) * 8) * HD + n * 8 + 2 * (l % 4) + (e & 1)] = o[n][e];
}

template <int HD, int BN>
void check_qk() {
  std::printf("qk<HD=%d, BN=%d>: S (128 x %d) = Q (128 x %d) . K (%d x %d)^T\n", HD, BN, BN, HD, BN, HD);
  const auto a = randn(size_t(128 * HD)), b = randn(size_t(BN * HD));
  std::vector<float> ref(size_t(128 * BN));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < BN; ++j) {
      double acc = 0;
      for (int x = 0; x < HD; ++x) acc += double(a[size_t(i * HD + x)]) * double(b[size_t(j * HD + x)]);
      ref[size_t(i * BN + j)] = float(acc);
    }
  auto da = upload_bf16(a), db = upload_bf16(b);
  auto dd = poisoned<float>(ref.size());
  constexpr size_t smem = size_t(128 + BN) * HD * sizeof(bf16);
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(qk_kernel<HD, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  qk_kernel<HD, BN><<<1, W::kThreads, smem, ctx().stream>>>(dd.data(), da.data(), db.data());
  RESBM_CUDA_LAUNCH_CHECK();
  check_matrix("S", download(dd), ref, BN, kF32);
}

template <int HD, int BN>
void check_pv() {
  std::printf("pv<HD=%d, BN=%d>: O (128 x %d) = P (128 x %d) . V (%d x %d)\n", HD, BN, HD, BN, BN, HD);
  // P as the softmax leaves it: in [0, 1]; bf16-rounded, since pv rounds it to bf16 itself.
  auto p = randn(size_t(128 * BN));
  for (auto& x : p) x = round_bf16(std::fabs(x) / 4);
  const auto v = randn(size_t(BN * HD));
  std::vector<float> ref(size_t(128 * HD));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < HD; ++j) {
      double acc = 0;
      for (int x = 0; x < BN; ++x) acc += double(p[size_t(i * BN + x)]) * double(v[size_t(x * HD + j)]);
      ref[size_t(i * HD + j)] = float(acc);
    }
  auto dp = upload(p);
  auto dv = upload_bf16(v);
  auto dd = poisoned<float>(ref.size());
  constexpr size_t smem = size_t(BN) * HD * sizeof(bf16);
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(pv_kernel<HD, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  pv_kernel<HD, BN><<<1, W::kThreads, smem, ctx().stream>>>(dd.data(), dp.data(), dv.data());
  RESBM_CUDA_LAUNCH_CHECK();
  check_matrix("O", download(dd), ref, HD, kF32);
}

// The same products on fwd_tma's tiles: 128-byte swizzled, loaded by TMA (W::tensor_map,
// W::tma_tile) from head (b, h) of [2, T, 3, HD] tensors, completing on one mbarrier.
// s (128 × BN) = A (128 rows of head (1, 2)) · B (BN rows of head (1, 1))ᵀ through W::qk_sw.
template <int HD, int BN>
__global__ void __launch_bounds__(W::kThreads)
    qk_tma_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb,
                  float* __restrict__ d) {
  extern __shared__ __align__(1024) unsigned char qk_tma_smem[];
  const uint32_t as = (M::saddr(qk_tma_smem) + 1023u) & ~1023u, bs = as + uint32_t(W::tma_tile_bytes<HD, 128>());
  const uint32_t bar = bs + uint32_t(W::tma_tile_bytes<HD, BN>());
  if (threadIdx.x == 0) {
    W::mbar_init(bar, 1);
    W::mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    W::mbar_expect_tx(bar, uint32_t(W::tma_tile_bytes<HD, 128>() + W::tma_tile_bytes<HD, BN>()));
    W::tma_tile<HD, 128>(as, &ta, bar, 0, 1, 2);
    W::tma_tile<HD, BN>(bs, &tb, bar, 0, 1, 1);
  }
  W::mbar_wait(bar, 0);
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  float s[BN / 8][4];
  W::qk_sw<HD, BN, 128>(s, as + 64 * wg * W::kRowBytes, bs);
  const int r = 64 * wg + 16 * warp + l / 4;
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) d[(r + (e >> 1) * 8) * BN + n * 8 + 2 * (l % 4) + (e & 1)] = s[n][e];
}

// o (128 × HD) = P (128 × BN, into the accumulator layout) · V (BN rows of head (1, 2)) through W::pv_sw.
template <int HD, int BN>
__global__ void __launch_bounds__(W::kThreads)
    pv_tma_kernel(const __grid_constant__ CUtensorMap tv, float* __restrict__ d, const float* __restrict__ p) {
  extern __shared__ __align__(1024) unsigned char pv_tma_smem[];
  const uint32_t vs = (M::saddr(pv_tma_smem) + 1023u) & ~1023u, bar = vs + uint32_t(W::tma_tile_bytes<HD, BN>());
  if (threadIdx.x == 0) {
    W::mbar_init(bar, 1);
    W::mbar_fence_init();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    W::mbar_expect_tx(bar, uint32_t(W::tma_tile_bytes<HD, BN>()));
    W::tma_tile<HD, BN>(vs, &tv, bar, 0, 1, 2);
  }
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  const int r = 64 * wg + 16 * warp + l / 4;
  float s[BN / 8][4], o[HD / 8][4];
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) s[n][e] = p[(r + (e >> 1) * 8) * BN + n * 8 + 2 * (l % 4) + (e & 1)];
  for (int n = 0; n < HD / 8; ++n)
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  W::mbar_wait(bar, 0);
  W::pv_sw<HD, BN>(o, s, vs);
  for (int n = 0; n < HD / 8; ++n)
    for (int e = 0; e < 4; ++e) d[(r + (e >> 1) * 8) * HD + n * 8 + 2 * (l % 4) + (e & 1)] = o[n][e];
}

// Element (t, x) of head (b, h) of a [2, T, 3, HD] tensor.
template <int HD>
float head_at(const std::vector<float>& x, int64_t T, int b, int h, int64_t t, int c) {
  return x[size_t(((b * T + t) * 3 + h) * HD + c)];
}

template <int HD, int BN>
void check_qk_tma() {
  // B holds fewer rows than the tile: rows Tb..BN-1 of the tile must be TMA's zeros, not the
  // next sequence's rows (batch 1 is the last, so past T lies outside the tensor).
  constexpr int64_t Ta = 128, Tb = BN - 13;
  std::printf("qk_sw<HD=%d, BN=%d> (TMA, 128B swizzle): S (128 x %d) = Q (128 x %d) . K (%ld valid of %d x %d)^T\n", HD,
              BN, BN, HD, long(Tb), BN, HD);
  const auto a = randn(size_t(2 * Ta * 3 * HD)), b = randn(size_t(2 * Tb * 3 * HD));
  std::vector<float> ref(size_t(128 * BN));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < BN; ++j) {
      double acc = 0;
      if (j < Tb)
        for (int x = 0; x < HD; ++x)
          acc += double(head_at<HD>(a, Ta, 1, 2, i, x)) * double(head_at<HD>(b, Tb, 1, 1, j, x));
      ref[size_t(i * BN + j)] = float(acc);
    }
  auto da = upload_bf16(a), db = upload_bf16(b);
  auto dd = poisoned<float>(ref.size());
  const CUtensorMap ta = W::tensor_map<HD>(da.data(), 2, Ta, 3, 128), tb = W::tensor_map<HD>(db.data(), 2, Tb, 3, BN);
  constexpr size_t smem = 1024 + W::tma_tile_bytes<HD, 128>() + W::tma_tile_bytes<HD, BN>() + 8;
  RESBM_CUDA_CHECK(
      cudaFuncSetAttribute(qk_tma_kernel<HD, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  qk_tma_kernel<HD, BN><<<1, W::kThreads, smem, ctx().stream>>>(ta, tb, dd.data());
  RESBM_CUDA_LAUNCH_CHECK();
  check_matrix("S", download(dd), ref, BN, kF32);
}

template <int HD, int BN>
void check_pv_tma() {
  constexpr int64_t Tv = BN - 5;  // V rows Tv.. of the tile must be zeros (P is not zero there)
  std::printf("pv_sw<HD=%d, BN=%d> (TMA, 128B swizzle): O (128 x %d) = P (128 x %d) . V (%ld valid of %d x %d)\n", HD,
              BN, HD, BN, long(Tv), BN, HD);
  auto p = randn(size_t(128 * BN));
  for (auto& x : p) x = round_bf16(std::fabs(x) / 4);
  const auto v = randn(size_t(2 * Tv * 3 * HD));
  std::vector<float> ref(size_t(128 * HD));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < HD; ++j) {
      double acc = 0;
      for (int x = 0; x < Tv; ++x) acc += double(p[size_t(i * BN + x)]) * double(head_at<HD>(v, Tv, 1, 2, x, j));
      ref[size_t(i * HD + j)] = float(acc);
    }
  auto dp = upload(p);
  auto dv = upload_bf16(v);
  auto dd = poisoned<float>(ref.size());
  const CUtensorMap tv = W::tensor_map<HD>(dv.data(), 2, Tv, 3, BN);
  constexpr size_t smem = 1024 + W::tma_tile_bytes<HD, BN>() + 8;
  RESBM_CUDA_CHECK(
      cudaFuncSetAttribute(pv_tma_kernel<HD, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  pv_tma_kernel<HD, BN><<<1, W::kThreads, smem, ctx().stream>>>(tv, dd.data(), dp.data());
  RESBM_CUDA_LAUNCH_CHECK();
  check_matrix("O", download(dd), ref, HD, kF32);
}

// ------------------------------------------------------------------------------------------
// 2. The whole forward.


struct AttnShape {
  int64_t B, T, H, hd;
};

// Where out (got, [B, T, H, hd]) first leaves want by more than bf16-scale rounding, decoded
// into (b, t, h, d) and the kernel's block / warpgroup / warp of query t.
void explain_out(const AttnShape& s, const std::vector<float>& got, const std::vector<float>& want) {
  const Mismatch m = find_mismatch(got, want, 3e-2, 3e-2);
  if (m.first < 0) {
    std::printf("    no single element off by more than 3e-2 + 3e-2|want|\n");
    return;
  }
  const int64_t i = m.first, d = i % s.hd, h = i / s.hd % s.H, t = i / (s.hd * s.H) % s.T, b = i / (s.hd * s.H * s.T);
  std::printf("    %ld of %ld elements off; first at b %ld, t %ld, h %ld, d %ld (query block %ld, warpgroup %ld, "
              "warp %ld, row %ld of the warp): got %g, want %g\n",
              long(m.count), long(want.size()), long(b), long(t), long(h), long(d), long(t / W::kBM),
              long(t % W::kBM / 64), long(t % 64 / 16), long(t % 16), double(got[size_t(i)]),
              double(want[size_t(i)]));
}
// The same for lse ([B, H, T]).
void explain_lse(const AttnShape& s, const std::vector<float>& got, const std::vector<float>& want) {
  const Mismatch m = find_mismatch(got, want, 1e-4, 1e-5);
  if (m.first < 0) {
    std::printf("    no single element off by more than 1e-4 + 1e-5|want|\n");
    return;
  }
  const int64_t i = m.first, t = i % s.T, bh = i / s.T;
  std::printf("    %ld of %ld elements off; first at b %ld, h %ld, t %ld: got %g, want %g\n", long(m.count),
              long(want.size()), long(bh / s.H), long(bh % s.H), long(t), double(got[size_t(i)]),
              double(want[size_t(i)]));
}

constexpr size_t kGuardElems = 256;  // poisoned elements past out and lse that must stay poisoned

// The guard past n elements still holds the 0xff bytes of poisoned().
template <class T>
bool guard_intact(const DeviceBuffer<T>& d, size_t n) {
  ctx().synchronize();
  std::vector<T> h(d.size() - n);
  RESBM_CUDA_CHECK(cudaMemcpy(h.data(), d.data() + n, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
  std::vector<unsigned char> bytes(h.size() * sizeof(T));
  std::memcpy(bytes.data(), h.data(), bytes.size());
  return std::all_of(bytes.begin(), bytes.end(), [](unsigned char c) { return c == 0xff; });
}

// A forward: (out, lse, q, k, v) on ctx()'s stream, for the shape at hand.
using Forward = std::function<void(bf16*, float*, const bf16*, const bf16*, const bf16*)>;

// `test` against the CPU op (out), the double lse and `other` (both), named other_name.
void check_forward(const char* title, const AttnShape& s, const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<float>& ref, const std::vector<float>& rlse,
                   const Forward& test, const char* other_name, const Forward& other) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd), nl = size_t(s.B * s.H * s.T);
  std::printf("%s B=%ld T=%ld H=%ld hd=%ld\n", title, long(s.B), long(s.T), long(s.H), long(s.hd));
  auto d_q = upload_bf16(q), d_k = upload_bf16(k), d_v = upload_bf16(v);
  auto d_out = poisoned<bf16>(n + kGuardElems), m_out = poisoned<bf16>(n);
  auto d_lse = poisoned<float>(nl + kGuardElems), m_lse = poisoned<float>(nl);
  test(d_out.data(), d_lse.data(), d_q.data(), d_k.data(), d_v.data());
  other(m_out.data(), m_lse.data(), d_q.data(), d_k.data(), d_v.data());
  const auto out = download(d_out, n), lse = download(d_lse, nl);
  const auto other_out = download(m_out, n), other_lse = download(m_lse, nl);
  const std::string vs_out = std::string("out vs ") + other_name, vs_lse = std::string("lse vs ") + other_name;
  struct Cmp {
    const char* name;
    const std::vector<float>& got;
    const std::vector<float>& want;
    double bound;
    bool is_out;
  };
  for (const Cmp& c : {Cmp{"out vs CPU op", out, ref, kBf16, true}, Cmp{"lse vs double", lse, rlse, kF32, false},
                       Cmp{vs_out.c_str(), out, other_out, kBf16, true},
                       Cmp{vs_lse.c_str(), lse, other_lse, kF32, false}}) {
    const double e = rel_err(c.got, c.want, kNoise);
    std::printf("  %-40s rel err %.3e (bound %.0e)\n", c.name, e, c.bound);
    CHECK(e < c.bound);
    if (e >= c.bound) {
      if (c.is_out) explain_out(s, c.got, c.want);
      else explain_lse(s, c.got, c.want);
    }
  }
  const bool og = guard_intact(d_out, n), lg = guard_intact(d_lse, nl);
  if (!og || !lg) std::printf("  written past the end: out %s, lse %s\n", og ? "no" : "YES", lg ? "no" : "YES");
  CHECK(og);
  CHECK(lg);
}

// The CPU op's out and the double lse of fresh random inputs of shape s, then f(q, k, v, ref, rlse).
template <class F>
void with_reference(const AttnShape& s, F&& f) {
  const size_t n = size_t(s.B * s.T * s.H * s.hd);
  const auto q = randn(n), k = randn(n), v = randn(n);
  std::vector<float> ref(n), cache(size_t(ops::attention_cache_size(s.B, s.T, s.H)));
  auto C4 = [&](const std::vector<float>& x) { return Tensor<const float>(x.data(), {s.B, s.T, s.H, s.hd}); };
  ops::attention_forward<float>(host(), Tensor<float>(ref.data(), {s.B, s.T, s.H, s.hd}),
                                Tensor<float>(cache.data(), {int64_t(cache.size())}), C4(q), C4(k), C4(v));
  const auto rlse = reference_lse(q, k, s.B, s.T, s.H, s.hd);
  f(q, k, v, ref, rlse);
}

// Both key tiles of the forward, in the order the timing prints them.
template <int HD, class F>
void for_each_variant(F&& f) {
  f.template operator()<64>();
  f.template operator()<128>();
}

}  // namespace

TEST_CASE("wgmma attention building blocks: qk (K-major A and B) and pv (A from registers, MN-major B)") {
  check_qk<64, 128>();   // hd 64 forward
  check_qk<128, 128>();  // hd 128 forward, BN 128
  check_qk<128, 64>();   // hd 128 forward, BN 64
  check_qk<64, 64>();
  check_pv<64, 128>();
  check_pv<128, 128>();
  check_pv<128, 64>();
  check_pv<64, 64>();
}

TEST_CASE("wgmma attention building blocks on 128-byte swizzled tiles loaded by TMA") {
  check_qk_tma<64, 64>();
  check_qk_tma<64, 128>();
  check_qk_tma<128, 64>();   // two panels: k-steps 4..7 in the second
  check_qk_tma<128, 128>();
  check_pv_tma<64, 64>();
  check_pv_tma<64, 128>();
  check_pv_tma<128, 64>();   // n128: the second 64 hd columns one LBO (panel) further
  check_pv_tma<128, 128>();
}

namespace {
// A GPU forward as a Forward for shape s.
template <class L>
Forward gpu_forward(const AttnShape& s, L launch) {
  return [=](bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v) {
    launch(ctx(), out, lse, q, k, v, s.B, s.T, s.H);
  };
}
}  // namespace

TEST_CASE("wgmma flash attention forward matches the CPU op and the mma.sync forward") {
  for (AttnShape s : {AttnShape{2, 64, 2, 64}, AttnShape{1, 200, 3, 64}, AttnShape{1, 1, 1, 64},
                      AttnShape{1, 130, 2, 128}, AttnShape{2, 333, 2, 128}, AttnShape{1, 1024, 2, 64},
                      AttnShape{1, 1000, 2, 128}, AttnShape{1, 17, 3, 64}}) {
    with_reference(s, [&](const auto& q, const auto& k, const auto& v, const auto& ref, const auto& rlse) {
      auto run = [&]<int HD>() {
        const Forward mma = gpu_forward(s, M::launch_fwd<HD>);
        for_each_variant<HD>([&]<int BN>() {
          const std::string title = "attention wgmma forward (BN=" + std::to_string(BN) + ")";
          check_forward(title.c_str(), s, q, k, v, ref, rlse, gpu_forward(s, W::launch_fwd_bn<HD, BN>), "mma.sync",
                        mma);
        });
      };
      if (s.hd == 64) run.template operator()<64>();
      else run.template operator()<128>();
    });
    // The default (launch_fwd) is one of the variants above.
  }
}

TEST_CASE("wgmma TMA flash attention forward (fwd_tma) matches the CPU op and fwd_pipe") {
  // Odd T (the last query block and key tile partial), B > 1 (a box must not run into the next
  // sequence), T = 1080 (in its last query block the second warpgroup has no row: it releases
  // every tile unread, and the ring wraps), T = 1.
  for (AttnShape s : {AttnShape{2, 64, 2, 64}, AttnShape{1, 1, 1, 64}, AttnShape{2, 77, 3, 64},
                      AttnShape{3, 17, 2, 64}, AttnShape{2, 1000, 2, 64}, AttnShape{1, 1080, 2, 64},
                      AttnShape{1, 1, 1, 128}, AttnShape{2, 77, 2, 128}, AttnShape{1, 130, 2, 128},
                      AttnShape{2, 1000, 2, 128}, AttnShape{2, 1080, 1, 128}}) {
    with_reference(s, [&](const auto& q, const auto& k, const auto& v, const auto& ref, const auto& rlse) {
      auto run = [&]<int HD>() {
        const Forward pipe = gpu_forward(s, W::launch_fwd<HD>);
        for_each_variant<HD>([&]<int BN>() {
          const std::string title = "attention wgmma TMA forward (BN=" + std::to_string(BN) + ")";
          check_forward(title.c_str(), s, q, k, v, ref, rlse, gpu_forward(s, W::launch_fwd_tma_bn<HD, BN>), "fwd_pipe",
                        pipe);
        });
      };
      if (s.hd == 64) run.template operator()<64>();
      else run.template operator()<128>();
    });
    // The default (launch_fwd_tma) is one of the variants above.
  }
}

namespace {
// Every variant at one shape, each against the mma.sync forward's output (timed once).
template <int HD>
void time_shape(int64_t B, int64_t T, int64_t H) {
  const int64_t n = B * T * H * HD, nl = B * H * T;
  const size_t un = static_cast<size_t>(n), unl = static_cast<size_t>(nl);
  DeviceBuffer<bf16> q(un), k(un), v(un), o1(un), o2(un);
  DeviceBuffer<float> l1(unl), l2(unl);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(q.data(), n, 1u);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(k.data(), n, 2u);
  fill_hash<<<1024, 256, 0, ctx().stream>>>(v.data(), n, 3u);
  RESBM_CUDA_LAUNCH_CHECK();
  // Causal: half of the 4·B·H·T²·hd flops of the full product.
  const double flop = 2.0 * double(B * H) * double(T) * double(T) * double(HD);
  const float tm =
      time_ms([&] { M::launch_fwd<HD>(ctx(), o2.data(), l2.data(), q.data(), k.data(), v.data(), B, T, H); }, 20);
  std::printf("timing B=%ld T=%ld H=%ld hd=%d: mma.sync            %.4f ms (%.0f TFLOP/s)\n", long(B), long(T),
              long(H), HD, double(tm), flop / (double(tm) * 1e9));
  const auto b = download(o2), lb = download(l2);
  for_each_variant<HD>([&]<int BN>() {
    const float tw = time_ms(
        [&] { W::launch_fwd_bn<HD, BN>(ctx(), o1.data(), l1.data(), q.data(), k.data(), v.data(), B, T, H); }, 20);
    std::printf("timing B=%ld T=%ld H=%ld hd=%d: wgmma BN=%-3d %.4f ms (%.0f TFLOP/s, x%.2f vs mma.sync)%s\n",
                long(B), long(T), long(H), HD, BN, double(tw), flop / (double(tw) * 1e9), double(tm / tw),
                BN == 64 ? "  [launch_fwd]" : "");
    const auto a = download(o1), la = download(l1);
    CHECK_REL(a, b, kBf16);
    CHECK_REL(la, lb, kF32);
  });
  for_each_variant<HD>([&]<int BN>() {
    const float tw = time_ms(
        [&] { W::launch_fwd_tma_bn<HD, BN>(ctx(), o1.data(), l1.data(), q.data(), k.data(), v.data(), B, T, H); }, 20);
    std::printf("timing B=%ld T=%ld H=%ld hd=%d: wgmma TMA BN=%-3d %.4f ms (%.0f TFLOP/s, x%.2f vs mma.sync)%s\n",
                long(B), long(T), long(H), HD, BN, double(tw), flop / (double(tw) * 1e9), double(tm / tw),
                BN == 128 ? "  [launch_fwd_tma]" : "");
    const auto a = download(o1), la = download(l1);
    CHECK_REL(a, b, kBf16);
    CHECK_REL(la, lb, kF32);
  });
}
}  // namespace

TEST_CASE("wgmma flash attention forward: timing at the training shapes (printed) and agreement with mma.sync") {
  time_shape<64>(16, 1024, 12);
  time_shape<128>(16, 1024, 16);
}
