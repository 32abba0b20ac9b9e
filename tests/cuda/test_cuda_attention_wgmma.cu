// The Hopper wgmma forward of the causal flash attention (attention_wgmma.cuh: fwd_tma) and the
// wgmma primitives it shares with the backward. Two layers, so that a failure says where it
// comes from:
//  1. the two warpgroup products the kernels are built of (qk: S = Q·Kᵀ from K-major shared
//     tiles; pv: O += P·V with P packed from the accumulator registers and V an MN-major
//     shared tile), each alone against a host GEMM, for every shape the kernels use: on the
//     no-swizzle interleave tiles loaded by cp.async (load_tile below, desc_k, W::desc_mn:
//     the layout of the backward's dSᵀ tile) and on fwd_tma's 128-byte-swizzled tiles by TMA
//     (W::tensor_map, W::tma_tile, W::qk_issue_sw, W::pv_issue_sw). The operands are heads of
//     [B, T, H, hd] tensors whose T ends inside the tile (the rows past it must arrive as
//     zeros). A wrong descriptor (LBO/SBO, swizzle, start address steps), tensor map or
//     fragment layout fails here with the first wrong (row, col) printed;
//  2. the whole forward against the CPU op (out), the double-precision log-sum-exp (lse) and
//     the mma.sync forward (both), with out and lse poisoned (NaN) plus a poisoned guard past
//     their ends that must stay untouched.
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
// 1. The warpgroup products alone: 2 warpgroups, each its 64 rows, as in the kernels. SW
//    selects the tiles: false = interleave by cp.async, true = 128-byte swizzled by TMA.

// K-major interleave descriptor (A = Q, B = K: rows are M or N, each row W elements of K);
// the kernels' K-major operands are all swizzled, so only this test reads the layout this way.
template <int W_>
__host__ __device__ constexpr uint64_t desc_k(uint32_t smem_addr) {
  return W::make_desc(smem_addr, 128, W_ * 16);
}

// The products committed and waited for (the kernels issue them only, and wait where their
// schedule allows).
// s (64 × BN) = A · Bᵀ over HD: A = 64 rows at a_addr (a core-matrix row of a 128-row tile),
// B = the BN-row tile at b_addr. Interleave: k-step kk 256·kk bytes further in both.
template <int HD, int BN, bool SW>
__device__ __forceinline__ void qk(float (&s)[BN / 8][4], uint32_t a_addr, uint32_t b_addr) {
  W::wg_fence();
  if constexpr (SW) {
    W::qk_issue_sw<HD, BN, 128>(s, a_addr, b_addr);
  } else {
    W::wgmma_ss<BN, false>(s, desc_k<HD>(a_addr), desc_k<HD>(b_addr));
#pragma unroll
    for (int kk = 1; kk < HD / 16; ++kk)
      W::wgmma_ss<BN, true>(s, desc_k<HD>(a_addr + kk * 256), desc_k<HD>(b_addr + kk * 256));
  }
  W::wg_commit();
  W::wg_wait<0>();
  W::fence_regs(s);
}
// o (64 × HD) += p (64 × BN, accumulator layout, rounded to bf16) · V (the BN-row tile at
// v_addr). Interleave: k-step kk 16 rows further.
template <int HD, int BN, bool SW>
__device__ __forceinline__ void pv(float (&o)[HD / 8][4], const float (&p)[BN / 8][4], uint32_t v_addr) {
  uint32_t a[BN / 16][4];
  W::pack_p<BN>(a, p);
  W::fence_regs(o);
  W::wg_fence();
  if constexpr (SW) {
    W::pv_issue_sw<HD, BN>(o, a, v_addr);
  } else {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk)
      W::wgmma_rs<HD>(o, a[kk], W::desc_mn<HD>(v_addr + W::tile_offset<HD>(16 * kk, 0)));
  }
  W::wg_commit();
  W::wg_wait<0>();
  W::fence_regs(o);
}

// Head (1, h) of a [2, T, 3, HD] bf16 tensor x as an operand: the pointer for cp.async, the
// tensor map for TMA (built on the host; left zero for cp.async).
struct Head {
  CUtensorMap map;
  const bf16* x;
  int T, h;
};

// The tiles start 1024-byte aligned (a swizzle atom).
__device__ __forceinline__ unsigned char* aligned(unsigned char* smem) {
  return smem + (1024u - M::saddr(smem) % 1024u) % 1024u;
}
// Before the fetches: TMA's barrier at bar, one arrival (expect_tx) a tile.
template <bool SW>
__device__ __forceinline__ void begin(uint32_t bar, uint32_t tiles) {
  if (SW && threadIdx.x == 0) {
    W::mbar_init(bar, tiles);
    W::mbar_fence_init();
  }
  __syncthreads();
}
// Rows [r0, r0 + ROWS) of one head ([T, ·], row stride ld, HD bf16 a row) into a shared tile
// laid out by W::tile_offset<HD>, by the block's W::kThreads threads; rows past T are
// zero-filled (source clamped, src-size 0). Eight consecutive threads fill one core matrix
// (128 contiguous bytes, no bank conflict); a warp reads 64 contiguous bytes of each of 8 rows.
template <int ROWS, int HD>
__device__ __forceinline__ void load_tile(unsigned char* tile, const bf16* src, int r0, int T, int64_t ld) {
  constexpr int V = HD / 8, NT = W::kThreads;
  static_assert(ROWS % 8 == 0 && (ROWS * V) % NT == 0, "whole core matrices, every thread the same count");
#pragma unroll
  for (int i = 0; i < ROWS * V / NT; ++i) {
    const int idx = int(threadIdx.x) + i * NT;
    const int r = (idx / (8 * V)) * 8 + idx % 8, c = (idx / 8) % V;
    const int row = r0 + r;
    const bf16* g = src + int64_t(row < T ? row : T - 1) * ld + c * 8;
    M::cp_async16(tile + W::tile_offset<HD>(r, c), g, row < T ? 16 : 0);
  }
}
// Rows [0, R) of src into the tile at t, rows past src.T as zeros: by every thread through
// cp.async (load_tile), or by thread 0 through TMA (W::tma_tile) completing on bar.
template <int HD, int R, bool SW>
__device__ __forceinline__ void fetch(unsigned char* t, const Head& src, uint32_t bar) {
  if constexpr (SW) {
    if (threadIdx.x == 0) {
      W::mbar_expect_tx(bar, W::tma_tile_bytes<HD, R>());
      W::tma_tile<HD, R>(M::saddr(t), &src.map, bar, 0, 1, src.h);
    }
  } else {
    load_tile<R, HD>(t, src.x + int64_t(src.T * 3 + src.h) * HD, 0, src.T, 3 * HD);
  }
}
// After the fetches: every tile landed and visible to wgmma (cp.async: the proxy fence, then
// the barrier; TMA: the mbarrier's phase 0).
template <bool SW>
__device__ __forceinline__ void landed(uint32_t bar) {
  if constexpr (SW) {
    W::mbar_wait(bar, 0);
  } else {
    M::cp_commit();
    M::cp_wait<0>();
    W::fence_proxy_async();
    __syncthreads();
  }
}

// Where element e of fragment n of this thread's 64 × N accumulator sits in the 128 × N
// row-major result (warpgroup w rows 64w..; the layout of attention_wgmma.cuh's header).
template <int N>
__device__ __forceinline__ int frag_at(int n, int e) {
  const int t = int(threadIdx.x), l = t % 32;
  return (64 * (t / 128) + 16 * (t / 32 % 4) + l / 4 + 8 * (e >> 1)) * N + 8 * n + 2 * (l % 4) + (e & 1);
}

// s (128 × BN) = A (128 rows of a) · B (BN rows of b)ᵀ; warpgroup w takes rows 64w.. of A, the
// way the kernels address Q (fwd_tma) and K (the backward).
template <int HD, int BN, bool SW>
__global__ void __launch_bounds__(W::kThreads)
    qk_kernel(const __grid_constant__ Head a, const __grid_constant__ Head b, float* __restrict__ d) {
  extern __shared__ __align__(1024) unsigned char qk_smem[];
  unsigned char* at = aligned(qk_smem);
  unsigned char* bt = at + 128 * HD * sizeof(bf16);
  const uint32_t bar = M::saddr(bt + BN * HD * sizeof(bf16));
  begin<SW>(bar, 2);
  fetch<HD, 128, SW>(at, a, bar);
  fetch<HD, BN, SW>(bt, b, bar);
  landed<SW>(bar);
  // Row 64w: 8w core-matrix rows further (interleave), 64w rows of 128 bytes into every panel (swizzled).
  const int wg = int(threadIdx.x) / 128;
  const uint32_t a_addr = M::saddr(at) + (SW ? 64 * wg * W::kRowBytes : W::tile_offset<HD>(64 * wg, 0));
  float s[BN / 8][4];
  qk<HD, BN, SW>(s, a_addr, M::saddr(bt));
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) d[frag_at<BN>(n, e)] = s[n][e];
}

// o (128 × HD) = P (128 × BN, read into the accumulator layout) · V (BN rows of v).
template <int HD, int BN, bool SW>
__global__ void __launch_bounds__(W::kThreads)
    pv_kernel(const __grid_constant__ Head v, const float* __restrict__ p, float* __restrict__ d) {
  extern __shared__ __align__(1024) unsigned char pv_smem[];
  unsigned char* vt = aligned(pv_smem);
  const uint32_t bar = M::saddr(vt + BN * HD * sizeof(bf16));
  begin<SW>(bar, 1);
  fetch<HD, BN, SW>(vt, v, bar);
  landed<SW>(bar);
  float s[BN / 8][4], o[HD / 8][4] = {};
  for (int n = 0; n < BN / 8; ++n)
    for (int e = 0; e < 4; ++e) s[n][e] = p[frag_at<BN>(n, e)];
  pv<HD, BN, SW>(o, s, M::saddr(vt));
  for (int n = 0; n < HD / 8; ++n)
    for (int e = 0; e < 4; ++e) d[frag_at<HD>(n, e)] = o[n][e];
}

// Head (1, h) of x ([2, T, 3, HD] on the device), with a tensor map of `rows`-row boxes for TMA.
template <int HD, bool SW>
Head head(const DeviceBuffer<bf16>& x, int T, int h, int rows) {
  Head r{};
  if constexpr (SW) r.map = W::tensor_map<HD>(x.data(), 2, T, 3, rows);
  r.x = x.data();
  r.T = T;
  r.h = h;
  return r;
}
// Element (t, c) of head (1, h) of a [2, T, 3, HD] tensor.
template <int HD>
float head_at(const std::vector<float>& x, int T, int h, int t, int c) {
  return x[size_t(((T + t) * 3 + h) * HD + c)];
}
// One block of W::kThreads with smem bytes of dynamic shared memory (the tiles, their 1024-byte
// alignment and the barrier).
template <class K, class... A>
void run_block(K kernel, size_t smem, const A&... args) {
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<1, W::kThreads, smem, ctx().stream>>>(args...);
  RESBM_CUDA_LAUNCH_CHECK();
}
constexpr const char* kTiles[2] = {"interleave, cp.async", "128B swizzle, TMA"};

template <int HD, int BN, bool SW>
void check_qk() {
  // B holds fewer rows than its tile: rows Tb..BN-1 of the tile must be zeros, not the next
  // sequence's rows (batch 1 is the last, so past T lies outside the tensor).
  constexpr int Ta = 128, Tb = BN - 13;
  std::printf("qk<HD=%d, BN=%d> (%s): S (128 x %d) = Q (128 x %d) . K (%d valid of %d x %d)^T\n", HD, BN, kTiles[SW],
              BN, HD, Tb, BN, HD);
  const auto a = randn(size_t(2 * Ta * 3 * HD)), b = randn(size_t(2 * Tb * 3 * HD));
  std::vector<float> ref(size_t(128 * BN));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < Tb; ++j) {
      double acc = 0;
      for (int x = 0; x < HD; ++x) acc += double(head_at<HD>(a, Ta, 2, i, x)) * double(head_at<HD>(b, Tb, 1, j, x));
      ref[size_t(i * BN + j)] = float(acc);
    }
  auto da = upload_bf16(a), db = upload_bf16(b);
  auto dd = poisoned<float>(ref.size());
  run_block(qk_kernel<HD, BN, SW>, 1024 + size_t(128 + BN) * HD * sizeof(bf16) + 8, head<HD, SW>(da, Ta, 2, 128),
            head<HD, SW>(db, Tb, 1, BN), dd.data());
  check_matrix("S", download(dd), ref, BN, kF32);
}

template <int HD, int BN, bool SW>
void check_pv() {
  constexpr int Tv = BN - 5;  // V rows Tv.. of the tile must be zeros (P is not zero there)
  std::printf("pv<HD=%d, BN=%d> (%s): O (128 x %d) = P (128 x %d) . V (%d valid of %d x %d)\n", HD, BN, kTiles[SW],
              HD, BN, Tv, BN, HD);
  // P as the softmax leaves it: in [0, 1]; bf16-rounded, since pv rounds it to bf16 itself.
  auto p = randn(size_t(128 * BN));
  for (auto& x : p) x = round_bf16(std::fabs(x) / 4);
  const auto v = randn(size_t(2 * Tv * 3 * HD));
  std::vector<float> ref(size_t(128 * HD));
  for (int i = 0; i < 128; ++i)
    for (int j = 0; j < HD; ++j) {
      double acc = 0;
      for (int x = 0; x < Tv; ++x) acc += double(p[size_t(i * BN + x)]) * double(head_at<HD>(v, Tv, 2, x, j));
      ref[size_t(i * HD + j)] = float(acc);
    }
  auto dp = upload(p);
  auto dv = upload_bf16(v);
  auto dd = poisoned<float>(ref.size());
  run_block(pv_kernel<HD, BN, SW>, 1024 + size_t(BN) * HD * sizeof(bf16) + 8, head<HD, SW>(dv, Tv, 2, BN), dp.data(),
            dd.data());
  check_matrix("O", download(dd), ref, HD, kF32);
}

// Every shape the kernels use: fwd_tma's 64- and 128-key tiles at hd 64 and 128 (qk<HD, BN>,
// pv<HD, BN>), the backward's Sᵀ = K·Qᵀ (qk<HD, BQ>) and dV += Pᵀ·dout (pv<HD, BQ>).
template <bool SW>
void check_products() {
  check_qk<64, 64, SW>();
  check_qk<64, 128, SW>();
  check_qk<128, 64, SW>();  // swizzled: two panels, k-steps 4..7 in the second
  check_qk<128, 128, SW>();
  check_pv<64, 64, SW>();
  check_pv<64, 128, SW>();
  check_pv<128, 64, SW>();  // n128; swizzled: the second 64 hd columns one LBO (panel) further
  check_pv<128, 128, SW>();
}

// ------------------------------------------------------------------------------------------
// 2. The whole forward.

struct AttnShape {
  int64_t B, T, H, hd;
};

// Where out (got, [B, T, H, hd]) first leaves want by more than bf16-scale rounding, decoded
// into (b, t, h, d) and fwd_tma's query block / consumer warpgroup / warp of query t.
void explain_out(const AttnShape& s, const std::vector<float>& got, const std::vector<float>& want) {
  const Mismatch m = find_mismatch(got, want, 3e-2, 3e-2);
  if (m.first < 0) {
    std::printf("    no single element off by more than 3e-2 + 3e-2|want|\n");
    return;
  }
  const int64_t i = m.first, d = i % s.hd, h = i / s.hd % s.H, t = i / (s.hd * s.H) % s.T, b = i / (s.hd * s.H * s.T);
  std::printf("    %ld of %ld elements off; first at b %ld, t %ld, h %ld, d %ld (query block %ld, consumer "
              "warpgroup %ld, warp %ld, row %ld of the warp): got %g, want %g\n",
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

TEST_CASE("wgmma attention building blocks on interleave tiles loaded by cp.async (the backward's): qk (K-major "
          "A and B) and pv (A from registers, MN-major B)") {
  check_products<false>();
}

TEST_CASE("wgmma attention building blocks on 128-byte swizzled tiles loaded by TMA (fwd_tma's)") {
  check_products<true>();
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

TEST_CASE("wgmma TMA flash attention forward (fwd_tma) matches the CPU op and the mma.sync forward") {
  // Odd T (the last query block and key tile partial), B > 1 (a box must not run into the next
  // sequence), T = 1080 (in its last query block the second warpgroup has no row: it releases
  // every tile unread, and the ring wraps), T = 1.
  for (AttnShape s : {AttnShape{2, 64, 2, 64}, AttnShape{1, 1, 1, 64}, AttnShape{2, 77, 3, 64},
                      AttnShape{3, 17, 2, 64}, AttnShape{2, 1000, 2, 64}, AttnShape{1, 1080, 2, 64},
                      AttnShape{1, 1, 1, 128}, AttnShape{2, 77, 2, 128}, AttnShape{1, 130, 2, 128},
                      AttnShape{2, 1000, 2, 128}, AttnShape{2, 1080, 1, 128}}) {
    with_reference(s, [&](const auto& q, const auto& k, const auto& v, const auto& ref, const auto& rlse) {
      auto run = [&]<int HD>() {
        const Forward mma = gpu_forward(s, M::launch_fwd<HD>);
        for_each_variant<HD>([&]<int BN>() {
          const std::string title = "attention wgmma TMA forward (BN=" + std::to_string(BN) + ")";
          check_forward(title.c_str(), s, q, k, v, ref, rlse, gpu_forward(s, W::launch_fwd_tma_bn<HD, BN>), "mma.sync",
                        mma);
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
  std::printf("timing B=%ld T=%ld H=%ld hd=%d: mma.sync         %.4f ms (%.0f TFLOP/s)\n", long(B), long(T),
              long(H), HD, double(tm), flop / (double(tm) * 1e9));
  const auto b = download(o2), lb = download(l2);
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
