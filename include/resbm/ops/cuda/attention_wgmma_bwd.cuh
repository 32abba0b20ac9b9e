#pragma once
// Hopper (sm_90a) single-pass backward of the causal flash attention on warpgroup MMA (wgmma),
// two kernels: bwd (launch_bwd), FA3-lite: no TMA, no warp specialisation, described first; and
// bwd_tma (launch_bwd_tma), FA3's structure: a TMA producer warp, an mbarrier ring, dQ added by
// bulk reductions from a dedicated warp, described before its code in the second part.
//
// bwd: same contract as the single-pass branch of cuda_detail_attn_mma::launch_bwd (dq_acc !=
// nullptr): dout, q, k, v bf16 [B, T, H, HD] (row stride H·HD), lse (natural log) and D =
// rowsum(dout ⊙ out) fp32 [B, H, T], dq_acc fp32 [B, T, H, HD] already zero (bwd_dot of
// attention.cuh zeroes it); dk, dv bf16 written with row stride G (dk optionally rotated back
// by a RoPE table), dq accumulated into dq_acc with fp32 atomics and then converted to bf16 by
// dq_convert / dq_convert_rope.
//
// A block of 2 warpgroups (256 threads) owns kBK = 128 keys j0..j0+127: warpgroup w keys
// jw = j0 + 64w .. jw + 63 (M = 64 of every product where keys are the rows). K and V of the
// block are loaded once; the query tiles of BQ rows (i0 = j0, j0 + BQ, .. < T) are
// double-buffered in shared memory (Q, dout, and their lse and D rows) by cp.async. Per query
// tile and warpgroup:
//   Sᵀ  (64 × BQ) = K · Qᵀ       SS wgmma m64nBQk16, A = K rows, B = Q tile, both K-major
//   dPᵀ (64 × BQ) = V · doutᵀ    SS wgmma, the same shapes
//   Pᵀ = exp2(Sᵀ·scale·log2e − lse·log2e) (causal mask only on tiles that reach past the
//   warpgroup's first key), dSᵀ = Pᵀ ⊙ (dPᵀ − D)
//   dV (64 × HD) += Pᵀ · dout    RS wgmma m64nHDk16, A = Pᵀ packed from the accumulator (as
//                                 the forward packs P), B = dout tile [queries][hd]: MN-major
//   dK (64 × HD) += dSᵀ · Q      RS wgmma, B = Q tile MN-major
// dSᵀ (bf16) also goes to a shared [128 keys][BQ queries] tile (core-matrix layout of
// tile_offset<BQ>); after a barrier every warpgroup computes a part of
//   dQ (BQ × HD) = dS · K        SS wgmma, A = dS read from the dSᵀ tile as an MN-major A
//                                 (imm-trans-a = 1), B = the K tile as MN-major (K = keys are
//                                 its rows; imm-trans-b = 1), K = the block's 128 keys
// (BQ 128: warpgroup w query rows 64w.., all HD columns; BQ 64: all 64 rows, columns
// w·HD/2..), added into dq_acc with red.global.add.v2.f32 (as add_rows), once per element per
// key tile. A warpgroup whose keys are all after the tile's queries skips its products and
// writes zeros as its dSᵀ rows (all k-steps of dQ run: a wgmma under a branch makes ptxas
// serialise them).
//
// Registers (ptxas -v, CUDA 13, sm_90a, 1 block of 256 threads a SM): <64, 64> 206, no spill;
// <64, 128> 255, 16 bytes spilled; <128, 64> 255, 44 bytes spilled. The per-k-step
// descriptors are rebuilt from opaque() bases each query tile (hoisted, they cost ~30
// registers), and the masks, dq atomics and tile loads are written to keep few 64-bit values
// live across the loop.
//
// Descriptors (see attention_wgmma.cuh's header, all layouts no-swizzle "interleave"):
//   K-major (Q, K, V, dout as A/B of Sᵀ, dPᵀ): LBO 128, SBO W·16, k-step +256 bytes;
//   MN-major (rows = K dimension, W elements of M/N a row): LBO W·16, SBO 128, k-step
//   +tile_offset<W>(16, 0); used for dout and Q (B of dV, dK: W = HD), K (B of dQ: W = HD,
//   start at the warpgroup's column chunk) and dSᵀ (A of dQ: W = BQ, start at the warpgroup's
//   query chunk).
//
// Rows past T: Q and dout rows are zero-filled and their lse, D read as 0, so P = 1 there but
// dP = 0, D = 0 and dout = 0: nothing reaches dV, dK or dS. K, V rows past T are zero and
// masked as keys after every valid query (they only occur in tiles that carry the mask).
//
// Ordering: fence.proxy.async after cp.async data landed and after the generic stores of
// dSᵀ, each before the barrier that precedes the wgmma reads. The next query tile's prefetch
// is issued after the barrier that follows the wait for the current one, so every wgmma
// read of the buffer it overwrites (the previous tile's, waited with wait_group 0 by each
// warpgroup before the barrier) is finished.
#include <cstdint>

#include "resbm/ops/cuda/attention_mma.cuh"
#include "resbm/ops/cuda/attention_wgmma.cuh"
#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops::cuda_detail_attn_wgmma_bwd {

using cuda_detail_attn_mma::cp_commit;
using cuda_detail_attn_mma::cp_wait;
using cuda_detail_attn_mma::kLog2e;
using cuda_detail_attn_mma::pack;
using cuda_detail_attn_mma::saddr;
using cuda_detail_attn_wgmma::desc_k;
using cuda_detail_attn_wgmma::desc_mn;
using cuda_detail_attn_wgmma::fence_proxy_async;
using cuda_detail_attn_wgmma::fence_regs;
using cuda_detail_attn_wgmma::tile_offset;
using cuda_detail_attn_wgmma::wg_commit;
using cuda_detail_attn_wgmma::wg_fence;
using cuda_detail_attn_wgmma::wg_wait;

constexpr int kWarpgroups = 2, kThreads = 128 * kWarpgroups;
constexpr int kBK = 64 * kWarpgroups;  // keys per block

// Query rows per tile: 64 (hd 64: Sᵀ 32 + dPᵀ 32 + dK 32 + dV 32 accumulator registers, 206
// registers a thread, no spill; hd 128: Sᵀ 32 + dPᵀ 32 + dK 64 + dV 64). At hd 64, 128-row
// tiles spill 16 bytes and were slower: 0.355 against 0.349 ms on the H200 (B 16, T 1024, H 12;
// the mma.sync single pass 0.440 ms in the same run).
template <int HD>
constexpr int default_bq() {
  return 64;
}

template <int HD, int BQ>
constexpr size_t bwd_smem() {
  // K, V (kBK rows each), Q[2], dout[2] (BQ rows each), dSᵀ [kBK][BQ], lse[2][BQ], D[2][BQ].
  return size_t(2 * kBK + 4 * BQ) * HD * sizeof(bf16) + size_t(kBK) * BQ * sizeof(bf16) +
         4 * size_t(BQ) * sizeof(float);
}

// x, opaque to the compiler: applied to the shared-memory base addresses once per query tile,
// so that the descriptors of every k-step (64-bit, loop-invariant) are rebuilt from it next to
// their wgmma instead of being hoisted out of the loop into ~100 live registers.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// 4-byte cp.async, zero-filled when bytes = 0.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, int bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr(smem)), "l"(gmem), "r"(bytes));
}

// Rows [r0, r0 + ROWS) of one head ([T, ·], row stride ld, HD bf16 a row) into a shared tile
// laid out by tile_offset<HD>, as cuda_detail_attn_wgmma::load_tile (the same thread ↔ chunk
// map), with one source pointer a thread: its rows are r_t + i·(kThreads / (HD/8)), so the
// i-th copy reads p + i·stride. Rows past T are zero-filled (source: row 0 of the head).
template <int ROWS, int HD>
__device__ __forceinline__ void load_rows(unsigned char* tile, const bf16* src, int r0, int T, int64_t ld) {
  constexpr int V = HD / 8, RS = kThreads / V;  // 16-byte chunks a row; rows between a thread's copies
  static_assert(kThreads % (8 * V) == 0 && (ROWS * V) % kThreads == 0, "every thread the same chunk column");
  const int tid = int(threadIdx.x);
  const int rt = (tid / (8 * V)) * 8 + tid % 8, c = (tid / 8) % V;
  const bf16* p = src + int64_t(r0 + rt) * ld + c * 8;
  unsigned char* dst = tile + tile_offset<HD>(rt, c);
#pragma unroll
  for (int i = 0; i < ROWS / RS; ++i) {
    const bool in = r0 + rt + i * RS < T;
    cuda_detail_attn_mma::cp_async16(dst + i * (RS / 8) * (HD * 16), in ? p + i * RS * ld : src, in ? 16 : 0);
  }
}

// ---------------------------------------------------------------------------------------------
// d (64 × N) = [ACC: d +] A · B with A (64 × 16) and B (16 × N) both from MN-major descriptors
// (imm-trans-a = imm-trans-b = 1): the dQ product. N ∈ {32, 64, 128}.

#define RESBM_WGB_ACC4(c, n) c(d[n][0]), c(d[n][1]), c(d[n][2]), c(d[n][3])
#define RESBM_WGB_ACC16(c) RESBM_WGB_ACC4(c, 0), RESBM_WGB_ACC4(c, 1), RESBM_WGB_ACC4(c, 2), RESBM_WGB_ACC4(c, 3)
#define RESBM_WGB_ACC32(c)                                                                                 \
  RESBM_WGB_ACC16(c), RESBM_WGB_ACC4(c, 4), RESBM_WGB_ACC4(c, 5), RESBM_WGB_ACC4(c, 6), RESBM_WGB_ACC4(c, 7)
#define RESBM_WGB_ACC64(c)                                                                                   \
  RESBM_WGB_ACC32(c), RESBM_WGB_ACC4(c, 8), RESBM_WGB_ACC4(c, 9), RESBM_WGB_ACC4(c, 10), RESBM_WGB_ACC4(c, 11), \
      RESBM_WGB_ACC4(c, 12), RESBM_WGB_ACC4(c, 13), RESBM_WGB_ACC4(c, 14), RESBM_WGB_ACC4(c, 15)
#define RESBM_WGB_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define RESBM_WGB_REGS32                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define RESBM_WGB_REGS64                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "             \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "    \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "    \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
// SHAPE, REGS, the operand numbers of the two descriptors and the scale-d flag, the constraint.
#define RESBM_WGB_SS_TT(SHAPE, REGS, NA, NB, NS, ACCS, CONS, SCALE)                               \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #NS ", 0;\n"                                  \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32.bf16.bf16 " REGS ", %" #NA ", %" #NB \
               ", p, 1, 1, 1, 1;\n}\n"                                                            \
               : ACCS(CONS)                                                                       \
               : "l"(da), "l"(db), "r"(SCALE))

template <int N, bool ACC>
__device__ __forceinline__ void wgmma_ss_tt(float (&d)[N / 8][4], uint64_t da, uint64_t db) {
  static_assert(N == 32 || N == 64 || N == 128, "m64n32k16, m64n64k16 or m64n128k16");
#if RESBM_ATTN_WGMMA
  if constexpr (N == 32 && ACC) RESBM_WGB_SS_TT("m64n32k16", RESBM_WGB_REGS16, 16, 17, 18, RESBM_WGB_ACC16, "+f", 1);
  else if constexpr (N == 32) RESBM_WGB_SS_TT("m64n32k16", RESBM_WGB_REGS16, 16, 17, 18, RESBM_WGB_ACC16, "=f", 0);
  else if constexpr (N == 64 && ACC) RESBM_WGB_SS_TT("m64n64k16", RESBM_WGB_REGS32, 32, 33, 34, RESBM_WGB_ACC32, "+f", 1);
  else if constexpr (N == 64) RESBM_WGB_SS_TT("m64n64k16", RESBM_WGB_REGS32, 32, 33, 34, RESBM_WGB_ACC32, "=f", 0);
  else if constexpr (ACC) RESBM_WGB_SS_TT("m64n128k16", RESBM_WGB_REGS64, 64, 65, 66, RESBM_WGB_ACC64, "+f", 1);
  else RESBM_WGB_SS_TT("m64n128k16", RESBM_WGB_REGS64, 64, 65, 66, RESBM_WGB_ACC64, "=f", 0);
#else
  (void)d, (void)da, (void)db;
#endif
}

#undef RESBM_WGB_SS_TT
#undef RESBM_WGB_ACC4
#undef RESBM_WGB_ACC16
#undef RESBM_WGB_ACC32
#undef RESBM_WGB_ACC64
#undef RESBM_WGB_REGS16
#undef RESBM_WGB_REGS32
#undef RESBM_WGB_REGS64

// ---------------------------------------------------------------------------------------------
// The products of a (key tile, query tile) pair (warpgroup-collective; the tests call them
// directly).

// s (64 × BQ) = A · Bᵀ and dp (64 × BQ) = A2 · B2ᵀ over HD, all four K-major shared tiles of
// HD-element rows (tile_offset<HD>), A and A2 64 rows, B and B2 BQ rows; one commit group,
// waited for.
template <int HD, int BQ>
__device__ __forceinline__ void sdp(float (&s)[BQ / 8][4], float (&dp)[BQ / 8][4], uint32_t a_addr, uint32_t b_addr,
                                    uint32_t a2_addr, uint32_t b2_addr) {
  using cuda_detail_attn_wgmma::wgmma_ss;
  wg_fence();
  wgmma_ss<BQ, false>(s, desc_k<HD>(a_addr), desc_k<HD>(b_addr));
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk)
    wgmma_ss<BQ, true>(s, desc_k<HD>(a_addr + kk * 256), desc_k<HD>(b_addr + kk * 256));
  wgmma_ss<BQ, false>(dp, desc_k<HD>(a2_addr), desc_k<HD>(b2_addr));
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk)
    wgmma_ss<BQ, true>(dp, desc_k<HD>(a2_addr + kk * 256), desc_k<HD>(b2_addr + kk * 256));
  wg_commit();
  wg_wait<0>();
  fence_regs(s);
  fence_regs(dp);
}

// Packs a 64 × BQ accumulator into BQ/16 register A operands (k-steps of 16 columns).
template <int BQ>
__device__ __forceinline__ void pack_a(uint32_t (&a)[BQ / 16][4], const float (&p)[BQ / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < BQ / 16; ++kk) {
    a[kk][0] = pack(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
}

// dv (64 × HD) += Pᵀ · G and dk (64 × HD) += dSᵀ · Q: A operands from registers, G and Q
// BQ-row tiles [queries][hd] at g_addr, q_addr (MN-major B). Issued and committed, not waited
// for: the caller waits (wait_group 0) before it touches dv, dk, ap or as again.
template <int HD, int BQ>
__device__ __forceinline__ void dkdv_issue(float (&dv)[HD / 8][4], float (&dk)[HD / 8][4],
                                           const uint32_t (&ap)[BQ / 16][4], const uint32_t (&as)[BQ / 16][4],
                                           uint32_t g_addr, uint32_t q_addr) {
  using cuda_detail_attn_wgmma::wgmma_rs;
  wg_fence();
#pragma unroll
  for (int kk = 0; kk < BQ / 16; ++kk) wgmma_rs<HD>(dv, ap[kk], desc_mn<HD>(g_addr + tile_offset<HD>(16 * kk, 0)));
#pragma unroll
  for (int kk = 0; kk < BQ / 16; ++kk) wgmma_rs<HD>(dk, as[kk], desc_mn<HD>(q_addr + tile_offset<HD>(16 * kk, 0)));
  wg_commit();
}

// dq (64 × N) = dS · K over the kBK keys: dS = 64 queries of the dSᵀ tile ([keys][BQ],
// MN-major A) from ds_addr (the warpgroup's query chunk), K = the key tile ([keys][HD],
// MN-major B) from k_addr (the warpgroup's column chunk). Issued and committed, not waited
// for. (No k-step is skipped: a wgmma under a branch makes ptxas inject warpgroup.arrive
// and, in the kernel, serialise the wgmma.)
template <int HD, int BQ, int N>
__device__ __forceinline__ void dq_issue(float (&dq)[N / 8][4], uint32_t ds_addr, uint32_t k_addr) {
  wg_fence();
  wgmma_ss_tt<N, false>(dq, desc_mn<BQ>(ds_addr), desc_mn<HD>(k_addr));
#pragma unroll
  for (int kk = 1; kk < kBK / 16; ++kk)
    wgmma_ss_tt<N, true>(dq, desc_mn<BQ>(ds_addr + tile_offset<BQ>(16 * kk, 0)),
                         desc_mn<HD>(k_addr + tile_offset<HD>(16 * kk, 0)));
  wg_commit();
}

// s ← Pᵀ = exp2(s·sl2 − lse·log2e), dp ← dSᵀ = Pᵀ ⊙ (dp − D) for the thread's elements
// (key row g or g + 8 of the warp, query column 8n + 2t (+1) of the tile): L, Dv = the lse and
// D rows of the tile from column 2t. P = 0 where query < key, i.e. where
// 8n + (e & 1) < x + 8·(e >> 1) with x = (first key of the warp + g) − i0 − 2t.
template <int BQ>
__device__ __forceinline__ void p_ds(float (&s)[BQ / 8][4], float (&dp)[BQ / 8][4], const float* L, const float* Dv,
                                     int x, float sl2) {
#pragma unroll
  for (int n = 0; n < BQ / 8; ++n) {
    const float2 l2 = *reinterpret_cast<const float2*>(L + 8 * n);
    const float2 d2 = *reinterpret_cast<const float2*>(Dv + 8 * n);
    const float l0 = l2.x * kLog2e, l1 = l2.y * kLog2e;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float p = exp2f(fmaf(s[n][e], sl2, -((e & 1) ? l1 : l0)));
      if (8 * n + (e & 1) < x + 8 * (e >> 1)) p = 0.0f;
      s[n][e] = p;
      dp[n][e] = p * (dp[n][e] - ((e & 1) ? d2.y : d2.x));
    }
  }
}

// ---------------------------------------------------------------------------------------------

template <int HD, int BQ>
__global__ void __launch_bounds__(kThreads, 1)
    bwd(float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
        const float* __restrict__ lse, const float* __restrict__ D, const bf16* __restrict__ q,
        const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, const float* __restrict__ rcos,
        const float* __restrict__ rsin, int64_t G) {
  static_assert(HD == 64 || HD == 128, "hd 64 or 128");
  static_assert(BQ == 64 || BQ == 128, "query tiles of 64 or 128");
  // dQ split: RG row groups of 64 queries, NQ columns per warpgroup.
  constexpr int RG = BQ / 64, NQ = HD * RG / kWarpgroups;
  static_assert(kBK % BQ == 0, "query tiles start at the block's first key");
#if RESBM_ATTN_WGMMA
  constexpr uint32_t kTileKV = kBK * HD * sizeof(bf16), kTileQ = BQ * HD * sizeof(bf16);
  extern __shared__ __align__(128) unsigned char attn_wgmma_bwd_smem[];
  unsigned char* Ks = attn_wgmma_bwd_smem;
  unsigned char* Vs = Ks + kTileKV;
  unsigned char* Qs = Vs + kTileKV;   // [2][BQ rows]
  unsigned char* Gs = Qs + 2 * kTileQ;  // [2][BQ rows]
  unsigned char* Ss = Gs + 2 * kTileQ;  // dSᵀ [kBK][BQ]
  float* Ls = reinterpret_cast<float*>(Ss + kBK * BQ * sizeof(bf16));  // [2][BQ]
  float* Ds = Ls + 2 * BQ;                                             // [2][BQ]
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
  const int g = l / 4, t = l % 4;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  // The first key tiles carry the most work (every later query attends to them): plain
  // order runs them first.
  const int j0 = int(blockIdx.x) * kBK, jw = j0 + 64 * wg, w0 = jw + 16 * warp;
  const float scale = 1.0f / sqrtf(float(HD)), sl2 = scale * kLog2e;
  const int ntiles = (T - j0 + BQ - 1) / BQ;  // query tiles j0, j0 + BQ, .. (j0 < T)

  auto stage = [&](int i0, int buf) {
    load_rows<BQ, HD>(Qs + buf * kTileQ, q + base, i0, T, C);
    load_rows<BQ, HD>(Gs + buf * kTileQ, dout + base, i0, T, C);
    for (int r = int(threadIdx.x); r < 2 * BQ; r += kThreads) {
      const int row = i0 + r % BQ;
      const float* src = (r < BQ ? lse : D) + int64_t(bh) * T + (row < T ? row : T - 1);
      cp_async4((r < BQ ? Ls : Ds) + buf * BQ + r % BQ, src, row < T ? 4 : 0);
    }
  };
  load_rows<kBK, HD>(Ks, k + base, j0, T, C);
  load_rows<kBK, HD>(Vs, v + base, j0, T, C);
  stage(j0, 0);
  cp_commit();

  const uint32_t k_addr = saddr(Ks), v_addr = saddr(Vs), q_addr = saddr(Qs), g_addr = saddr(Gs);
  const uint32_t s_addr = saddr(Ss);
  const uint32_t kw_addr = k_addr + tile_offset<HD>(64 * wg, 0), vw_addr = v_addr + tile_offset<HD>(64 * wg, 0);
  const int qrow = 64 * (wg % RG), qcol = (wg / RG) * NQ;  // this warpgroup's part of dQ
  float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[d][e] = dva[d][e] = 0.0f;

  for (int j = 0; j < ntiles; ++j) {
    const int buf = j & 1, i0 = j0 + j * BQ;
    cp_wait<0>();
    fence_proxy_async();  // this thread's cp.async writes, visible to the async proxy (wgmma)
    __syncthreads();      // also: every wgmma read of buffer buf ^ 1 (tile j - 1) is done
    if (j + 1 < ntiles) {
      stage(i0 + BQ, buf ^ 1);
      cp_commit();
    }
    const uint32_t qb = opaque(q_addr + buf * kTileQ), gb = opaque(g_addr + buf * kTileQ);
    // Warpgroup-uniform: some query of the tile is at or after the warpgroup's first key.
    const bool active = i0 + BQ - 1 >= jw;
    if (active) {
      float s[BQ / 8][4], dp[BQ / 8][4];
      sdp<HD, BQ>(s, dp, opaque(kw_addr), qb, opaque(vw_addr), gb);
      // The causal mask where some key of the warpgroup is after some query of the tile; else
      // x = -8 masks nothing (one code path: two would keep both paths' loads live).
      const int x = jw + 63 > i0 ? w0 + g - i0 - 2 * t : -8;
      p_ds<BQ>(s, dp, Ls + buf * BQ + 2 * t, Ds + buf * BQ + 2 * t, x, sl2);
      uint32_t ap[BQ / 16][4], as[BQ / 16][4];
      pack_a<BQ>(ap, s);
      pack_a<BQ>(as, dp);
      // dSᵀ rows of this warp (keys 16·warp + g, + 8 of the warpgroup), to the shared tile.
      {
        const int r = 64 * wg + 16 * warp + g;
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
          unsigned char* lo = Ss + tile_offset<BQ>(r, 2 * kk) + 4 * t;
          unsigned char* hi = Ss + tile_offset<BQ>(r + 8, 2 * kk) + 4 * t;
          *reinterpret_cast<uint32_t*>(lo) = as[kk][0];
          *reinterpret_cast<uint32_t*>(hi) = as[kk][1];
          *reinterpret_cast<uint32_t*>(lo + 128) = as[kk][2];
          *reinterpret_cast<uint32_t*>(hi + 128) = as[kk][3];
        }
      }
      dkdv_issue<HD, BQ>(dva, dka, ap, as, gb, qb);
    } else {
      // Every key of the warpgroup is after every query of the tile: its dSᵀ rows are 0.
      const int r = 64 * wg + 16 * warp + g;
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        unsigned char* lo = Ss + tile_offset<BQ>(r, 2 * kk) + 4 * t;
        unsigned char* hi = Ss + tile_offset<BQ>(r + 8, 2 * kk) + 4 * t;
        *reinterpret_cast<uint32_t*>(lo) = 0u;
        *reinterpret_cast<uint32_t*>(hi) = 0u;
        *reinterpret_cast<uint32_t*>(lo + 128) = 0u;
        *reinterpret_cast<uint32_t*>(hi + 128) = 0u;
      }
    }
    // dSᵀ of the block complete and visible to the async proxy.
    fence_proxy_async();
    __syncthreads();
    const int r0 = i0 + qrow;  // first dQ row of this warpgroup
    float dqa[NQ / 8][4];
    if (r0 < T)
      dq_issue<HD, BQ, NQ>(dqa, opaque(s_addr + tile_offset<BQ>(0, qrow / 8)),
                           opaque(k_addr + tile_offset<HD>(0, qcol / 8)));
    wg_wait<0>();
    fence_regs(dka);
    fence_regs(dva);
    if (r0 < T) {
      fence_regs(dqa);
      // dq_acc += dqa (rows r0 + 16·warp + g, + 8; columns qcol + 8n + 2t, + 1): one row
      // pointer, the columns as immediate offsets.
      const int row = r0 + 16 * warp + g;
      float* p = dq_acc + base + int64_t(row) * C + qcol + 2 * t;
      if (row < T) {
#pragma unroll
        for (int n = 0; n < NQ / 8; ++n) cuda_detail_attn_mma::atomic_add2(p + 8 * n, dqa[n][0], dqa[n][1]);
      }
      if (row + 8 < T) {
        p += 8 * C;
#pragma unroll
        for (int n = 0; n < NQ / 8; ++n) cuda_detail_attn_mma::atomic_add2(p + 8 * n, dqa[n][2], dqa[n][3]);
      }
    }
  }
  const int64_t gbase = int64_t(b) * T * G + int64_t(h) * HD;  // dk, dv rows are G apart
  cuda_detail_attn_mma::store_rows<HD>(dk + gbase, G, w0, T, dka, scale, scale, rcos, rsin);
  cuda_detail_attn_mma::store_rows<HD>(dv + gbase, G, w0, T, dva, 1.0f, 1.0f);
#elif defined(__CUDA_ARCH__)
  (void)dq_acc, (void)dk, (void)dv, (void)dout, (void)lse, (void)D, (void)q, (void)k, (void)v, (void)T, (void)H;
  (void)rcos, (void)rsin, (void)G;
  __trap();  // built for a target without wgmma
#endif
}

// Opts the kernel in to its dynamic shared memory (> 48 KiB), once per process.
template <int HD, int BQ>
void configure() {
  static const bool done = [] {
    cuda_detail_attn_mma::allow_smem(bwd<HD, BQ>, bwd_smem<HD, BQ>());
    return true;
  }();
  (void)done;
}

// The backward with BQ-row query tiles (64 or 128), for comparing the two; launch_bwd picks
// default_bq. Same arguments as launch_bwd.
template <int HD, int BQ>
void launch_bwd_bq(CudaContext& ctx, bf16* dq, float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                   const float* D, const bf16* q, const bf16* k, const bf16* v, int64_t B, int64_t T, int64_t H,
                   const float* rcos, const float* rsin, int64_t G) {
  if (B * T * H == 0) return;
  configure<HD, BQ>();
  const dim3 grid(unsigned((T + kBK - 1) / kBK), unsigned(B * H));
  bwd<HD, BQ><<<grid, kThreads, bwd_smem<HD, BQ>(), ctx.stream>>>(dq_acc, dk, dv, dout, lse, D, q, k, v, int(T),
                                                                  int(H), rcos, rsin, G);
  RESBM_CUDA_LAUNCH_CHECK();
  cuda_detail_attn_mma::launch_dq_convert<HD, cuda_detail_attn_mma::DqLayout::kTokenMajor>(ctx, dq, dq_acc, B, T, H,
                                                                                         rcos, rsin, G);
}

// Same contract as cuda_detail_attn_mma::launch_bwd with dq_acc != nullptr (the single pass):
// D = rowsum(dout ⊙ out) and a zeroed dq_acc ([B, T, H, HD] fp32) already there; dq, dk, dv
// written (row stride G), dq and dk rotated back by the RoPE table (rcos, rsin: [≥ T, HD/2])
// when given. hd ∈ {64, 128}; needs an sm_90a device and image.
template <int HD>
void launch_bwd(CudaContext& ctx, bf16* dq, float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                const float* D, const bf16* q, const bf16* k, const bf16* v, int64_t B, int64_t T, int64_t H,
                const float* rcos, const float* rsin, int64_t G) {
  launch_bwd_bq<HD, default_bq<HD>()>(ctx, dq, dq_acc, dk, dv, dout, lse, D, q, k, v, B, T, H, rcos, rsin, G);
}

// =============================================================================================
// bwd_tma: FA3's structure (Shah et al. 2024, "FlashAttention-3"; Dao-AILab/flash-attention
// hopper/mainloop_bwd_sm90_tma_gmma_ws.hpp), same products and key split as bwd<HD, 64>.
//
// 384 threads, one block a SM, grid (B·H, key blocks of kBK = 128): blockIdx.y = key block,
// dispatched y-slowest, so every head's first (longest: all later queries attend to it) key
// block starts before any head's second one.
//   warpgroup 0, the producer (setmaxnreg down to 24):
//     warp 0, one thread: K and V of the block's 128 keys once (full_kv), then per query tile
//       j (i0 = j0 + 64j, < T) into stage j % S of a ring (S = tma_bwd_stages: 4 at hd 64, 2 at
//       hd 128): Q and lse rows (full_q), dout and D rows (full_g), after the stage's empty
//       barrier says its previous use is read;
//     warp 1, the dQ writer: per tile waits for the staged dQ (named barrier kBarDqFull + j % 2),
//       adds it into dq_acc with ONE bulk reduction (cp.reduce.async.bulk .add.f32) of the
//       tile's min(64, T − i0) rows, waits until that has read the staging buffer
//       (cp.async.bulk.wait_group.read) and hands it back (kBarDqEmpty + j % 2);
//     warps 2, 3 leave.
//   warpgroups 1, 2, the consumers (setmaxnreg up to 240): consumer w owns keys jw = j0 + 64w ..
//     jw + 63, as bwd's warpgroup w, and per tile:
//       Sᵀ = K_w·Qᵀ, dPᵀ = V_w·doutᵀ   SS, both K-major swizzled (qk_issue_sw), one commit group
//                                      each; P = exp2(..) runs while dPᵀ is still in flight
//       dSᵀ = Pᵀ ⊙ (dPᵀ − D)            to the shared dSᵀ tile (interleave layout, as bwd;
//                                      double-buffered by j % 2)
//       dV += Pᵀ·dout                  RS (pv_issue_sw: dout MN-major swizzled), issued before
//                                      the dSᵀ barrier (named, the 256 consumer threads)
//       dQᵀ = Kᵀ·dSᵀ                   SS, A = Kᵀ: the K tile read MN-major (imm-trans-a; a
//                                      64-hd panel of K is exactly one swizzled MN atom column),
//                                      B = dSᵀ MN-major (imm-trans-b), K = the 128 keys
//       dK += dSᵀ·Q                    RS, in flight while dQ is staged
//     dQᵀ is split as hd 64: consumer w all 64 hd × queries 32w..32w+31 (m64n32);
//     hd 128: hd 64w..64w+63 (panel w of K) × all 64 queries (m64n64).
//     A consumer whose keys are all after the tile's queries (consumer 1 on a block's first
//     tile) skips Sᵀ..dK and writes zeros as its dSᵀ rows; it still computes its part of dQ.
//
// dQ staging: fp32 [64 queries][HD], two buffers (j % 2). Element (q, c) is stored at
// q·HD + ((c/8) ^ ((q/2) % 4))·8 + c % 8: the 32 lanes of a warp store one accumulator
// register (8 consecutive c, 4 queries 2 apart) to 32 different banks. Global rows keep the
// same permutation (DqLayout::kHeadMajorSw of attention_mma.cuh: tiles start at multiples of
// 64), so the valid rows of a partial last tile are a contiguous prefix; rows past T are never
// added. dq_acc must be zero and is [B, H, T, HD] (head-major) with that chunk swizzle:
// launch_bwd_tma converts it (dq_convert<HD, kHeadMajorSw>).
//
// Synchronisation (ids of named barriers: id 0 is __syncthreads'):
//   mbarriers, as fwd_tma: full_kv (1 arrival + tx), full_q[s], full_g[s] (1 arrival + tx:
//     the tile's bytes and the 64 lse or D floats), empty[s] (8 arrivals: lane 0 of every
//     consumer warp once its last wgmma reading the stage completed). Use u = j / S of stage
//     s: consumers wait parity u & 1 of full, the producer parity (u & 1) ^ 1 of empty. Both
//     consumers wait for and release every stage (also a skipping one: it waits first, so
//     that its arrival counts towards the right phase).
//   kBarDs (256): dSᵀ of tile j written (each thread: stores, fence.proxy.async, bar.sync)
//     before any dQ wgmma reads it. One barrier a tile suffices with two dSᵀ buffers: tile
//     j + 2 rewrites buffer j % 2 only after every consumer passed kBarDs of tile j + 1, which
//     each does after waiting for its dQ(j).
//   kBarDqFull + b, kBarDqEmpty + b (288 = 256 consumers + the writer warp): consumers
//     bar.sync empty before storing into staging buffer b, fence.proxy.async after, bar.arrive
//     full; the writer bar.sync full, reduces, waits .read, bar.arrive empty. The writer
//     pre-arrives on empty[0] (and empty[1] if there are 2+ tiles) for the first uses, and
//     arrives after tile j only if tile j + 2 exists, so every phase gets exactly 288.
//   TMA writes and wgmma reads are both async-proxy, ordered by the mbarriers; the generic
//     stores of dSᵀ and of the staging are followed by fence.proxy.async before the barrier
//     after which the async proxy (wgmma, bulk reduction) reads them.
//   The spin waits (mbarriers) sit at the top of a tile, before its first wgmma; each branch
//     (skip or not) issues and waits for its own wgmma (no wgmma in flight across a branch).
//
// lse and D rows of a tile are loaded by the producer warp's 32 lanes (2 each) with plain
// loads and stored to the stage before lane 0's arrival on its full barrier (a row of one
// head starts at bh·T + i0 floats: not 16-byte aligned for odd T, and a 1-D TMA of them
// faulted with an illegal instruction on the H200); past T, lse is +∞ and D 0, so P, and with
// it dSᵀ, is 0 for query columns ≥ T (p_tile also masks them); K, V, Q, dout rows past T are
// zeros (the (HD, H, T, B) tensor maps), keys past T are masked as in bwd.

// Registers (ptxas -v, CUDA 13.0, sm_90a): 168 a thread at launch (__launch_bounds__(384, 1)),
// setmaxnreg 24 (producer warpgroup) / 240 (consumers) as fwd_tma; no spill at hd 64 or 128.
// The consumers fit in 208 at hd 64 and need ~225-232 at hd 128 (spill-free with reg_alloc<232>,
// 4 bytes spilled at <224>). The producer's and the writer's loops are not unrolled (#pragma
// unroll 1): unrolled, the 24-register warpgroup spilled 36 bytes at hd 128.

// Named barrier ids and thread counts.
constexpr uint32_t kBarDs = 1, kBarDqFull = 2, kBarDqEmpty = 4;  // full / empty: + buffer (0, 1)
constexpr uint32_t kConsumerThreads = 128 * kWarpgroups, kDqSyncThreads = kConsumerThreads + 32;
constexpr int kTmaBwdThreads = 128 * (kWarpgroups + 1);
constexpr int kTmaBQ = 64;  // query rows a tile
constexpr uint32_t kTmaEmptyArrivals = 4 * kWarpgroups;

__device__ __forceinline__ void named_sync(uint32_t id, uint32_t count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_arrive(uint32_t id, uint32_t count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
// Bulk reduction of `bytes` (a multiple of 16, both addresses 16-byte aligned) fp32 from shared
// memory into global memory, one bulk group of the issuing thread.
__device__ __forceinline__ void bulk_add_f32(float* gdst, uint32_t ssrc, uint32_t bytes) {
#if RESBM_ATTN_WGMMA
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gdst), "r"(ssrc),
               "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#else
  (void)gdst, (void)ssrc, (void)bytes;
#endif
}
// Until the issuing thread's bulk groups have read their shared source (READ) or completed.
template <bool READ>
__device__ __forceinline__ void bulk_wait_all() {
#if RESBM_ATTN_WGMMA
  if constexpr (READ)
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  else
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

// Shared memory of bwd_tma<HD> (offsets from the 1024-aligned base): K, V (kBK rows, swizzled),
// Q[S], dout[S] (64 rows, swizzled), dSᵀ[2] ([kBK][64] interleave), dQ staging[2] (fp32
// [64][HD]), lse[S], D[S] (64 floats), barriers (full_kv, full_q[S], full_g[S], empty[S]).
template <int HD>
struct TmaBwdSmem {
  static constexpr uint32_t kTileKV = kBK * HD * sizeof(bf16), kTileQ = kTmaBQ * HD * sizeof(bf16);
  static constexpr uint32_t kDs = kBK * kTmaBQ * sizeof(bf16), kDq = kTmaBQ * HD * sizeof(float);
  static constexpr uint32_t kVec = kTmaBQ * sizeof(float);
  static constexpr size_t kFixed = 1024 + 2 * size_t(kTileKV) + 2 * size_t(kDs) + 2 * size_t(kDq) + 8;
  static constexpr size_t kPerStage = 2 * size_t(kTileQ) + 2 * size_t(kVec) + 3 * 8;
  static constexpr size_t kFit = (cuda_detail_attn_wgmma::kSmemLimit - kFixed) / kPerStage;
  static constexpr int S = kFit < 4 ? int(kFit) : 4;  // stages of the Q / dout ring
  static constexpr uint32_t k = 0, v = kTileKV, q = 2 * kTileKV, g = q + S * kTileQ, ds = g + S * kTileQ,
                            st = ds + 2 * kDs, lse = st + 2 * kDq, d = lse + S * kVec, bars = d + S * kVec;
  static constexpr size_t kBytes = 1024 + size_t(bars) + 8 * (1 + 3 * size_t(S));
  static_assert(S >= 2, "a ring of at least 2 stages");
  static_assert(kBytes <= cuda_detail_attn_wgmma::kSmemLimit, "shared memory");
  static_assert(q % 1024 == 0 && g % 1024 == 0 && lse % 128 == 0 && kTileQ % 1024 == 0, "TMA destinations aligned");
};
template <int HD>
constexpr int tma_bwd_stages() {
  return TmaBwdSmem<HD>::S;
}

// Pᵀ = exp2(s·sl2 − lse·log2e) in place for the thread's elements (key row g or g + 8 of the
// warp, query column 8n + 2t (+1)); L = the tile's lse row from column 2t. Masked to 0 where
// query < key (8n + (e & 1) < x + 8·(e >> 1), x as p_ds) and for query columns past T
// (8n + (e & 1) ≥ y = T − i0 − 2t: lse taken as +∞).
template <int BQ>
__device__ __forceinline__ void p_tile(float (&s)[BQ / 8][4], const float* L, int x, int y, float sl2) {
#pragma unroll
  for (int n = 0; n < BQ / 8; ++n) {
    const float2 l2 = *reinterpret_cast<const float2*>(L + 8 * n);
    const float l0 = 8 * n < y ? l2.x * kLog2e : INFINITY, l1 = 8 * n + 1 < y ? l2.y * kLog2e : INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float p = exp2f(fmaf(s[n][e], sl2, -((e & 1) ? l1 : l0)));
      if (8 * n + (e & 1) < x + 8 * (e >> 1)) p = 0.0f;
      s[n][e] = p;
    }
  }
}
// dp ← dSᵀ = Pᵀ ⊙ (dPᵀ − D); Dv = the tile's D row from column 2t.
template <int BQ>
__device__ __forceinline__ void ds_tile(float (&dp)[BQ / 8][4], const float (&p)[BQ / 8][4], const float* Dv) {
#pragma unroll
  for (int n = 0; n < BQ / 8; ++n) {
    const float2 d2 = *reinterpret_cast<const float2*>(Dv + 8 * n);
#pragma unroll
    for (int e = 0; e < 4; ++e) dp[n][e] = p[n][e] * (dp[n][e] - ((e & 1) ? d2.y : d2.x));
  }
}
// The warp's dSᵀ rows r, r + 8 (packed, the register-A layout) into the [kBK][BQ] interleave
// tile at ds (as bwd: 8 lanes fill one 128-byte core matrix, no bank conflict).
template <int BQ>
__device__ __forceinline__ void store_ds(unsigned char* ds, int r, int t, const uint32_t (&a)[BQ / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < BQ / 16; ++kk) {
    unsigned char* lo = ds + tile_offset<BQ>(r, 2 * kk) + 4 * t;
    unsigned char* hi = ds + tile_offset<BQ>(r + 8, 2 * kk) + 4 * t;
    *reinterpret_cast<uint32_t*>(lo) = a[kk][0];
    *reinterpret_cast<uint32_t*>(hi) = a[kk][1];
    *reinterpret_cast<uint32_t*>(lo + 128) = a[kk][2];
    *reinterpret_cast<uint32_t*>(hi + 128) = a[kk][3];
  }
}

// dqt (64 hd × N queries) = Kᵀ · dSᵀ over the kBK keys: A = one 64-column panel of the swizzled
// K tile at kt, read MN-major (M = hd contiguous; SBO = one atom = 8 keys, LBO = the panel
// stride, unused at M = 64; k-step = 16 keys = 2 atoms); B = the dSᵀ tile ([keys][64 queries]
// interleave, MN-major, as bwd's dq_issue reads it) from ds (the first query chunk of the
// part). N ∈ {32, 64}. Issue only.
template <int N>
__device__ __forceinline__ void dqt_issue(float (&dqt)[N / 8][4], uint32_t kt, uint32_t ds) {
  using cuda_detail_attn_wgmma::kAtomBytes;
  const uint64_t da = cuda_detail_attn_wgmma::desc_sw_mn<kBK>(kt);
  wgmma_ss_tt<N, false>(dqt, da, desc_mn<kTmaBQ>(ds));
#pragma unroll
  for (int kk = 1; kk < kBK / 16; ++kk)
    wgmma_ss_tt<N, true>(dqt, cuda_detail_attn_wgmma::desc_add(da, kk * 2 * kAtomBytes),
                         desc_mn<kTmaBQ>(ds + tile_offset<kTmaBQ>(16 * kk, 0)));
}

// The thread's part of dQᵀ (d[n][e]: hd row 16·warp + g + 8(e >> 1) of the consumer's panel,
// query qo + 8n + 2t + (e & 1)) into staging buffer `buf` at st (see the top of this part: o0,
// o1 = the thread's offsets for e >> 1 = 0, 1), between the buffer's empty and full barriers.
template <int HD, int N>
__device__ __forceinline__ void stage_dq(float* st, int o0, int o1, const float (&d)[N / 8][4], uint32_t buf) {
  named_sync(kBarDqEmpty + buf, kDqSyncThreads);
#pragma unroll
  for (int n = 0; n < N / 8; ++n) {
    st[o0 + 8 * n * HD] = d[n][0];
    st[o0 + (8 * n + 1) * HD] = d[n][1];
    st[o1 + 8 * n * HD] = d[n][2];
    st[o1 + (8 * n + 1) * HD] = d[n][3];
  }
  fence_proxy_async();  // the stores, visible to the bulk reduction
  named_arrive(kBarDqFull + buf, kDqSyncThreads);
}

template <int HD>
__global__ void __launch_bounds__(kTmaBwdThreads, 1)
    bwd_tma(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
            const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tg,
            const float* __restrict__ lse, const float* __restrict__ D, float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv, int T, int H,
            const float* __restrict__ rcos, const float* __restrict__ rsin, int64_t G) {
  static_assert(HD == 64 || HD == 128, "hd 64 or 128");
#if RESBM_ATTN_WGMMA
  namespace W = cuda_detail_attn_wgmma;
  using L = TmaBwdSmem<HD>;
  constexpr int BQ = kTmaBQ, S = L::S;
  extern __shared__ __align__(1024) unsigned char attn_bwd_tma_smem[];
  const uint32_t sb = (saddr(attn_bwd_tma_smem) + W::kAtomBytes - 1) & ~(W::kAtomBytes - 1);
  unsigned char* const sp = attn_bwd_tma_smem + (sb - saddr(attn_bwd_tma_smem));  // sb as a generic pointer
  const uint32_t k_s = sb + L::k, v_s = sb + L::v, q_s = sb + L::q, g_s = sb + L::g, ds_s = sb + L::ds;
  const uint32_t st_s = sb + L::st, l_s = sb + L::lse, d_s = sb + L::d, bars = sb + L::bars;
  const uint32_t full_kv = bars;
  auto full_q = [&](int s) { return bars + 8 * (1 + s); };
  auto full_g = [&](int s) { return bars + 8 * (1 + S + s); };
  auto empty = [&](int s) { return bars + 8 * (1 + 2 * S + s); };

  const int bh = int(blockIdx.x), b = bh / H, h = bh % H;
  const int j0 = int(blockIdx.y) * kBK;
  const int ntiles = (T - j0 + BQ - 1) / BQ;  // query tiles j0, j0 + 64, .. (j0 < T)
  const int wg = int(threadIdx.x) / 128;

  if (threadIdx.x == 0) {
    W::tma_prefetch(&tq);
    W::tma_prefetch(&tk);
    W::tma_prefetch(&tv);
    W::tma_prefetch(&tg);
    W::mbar_init(full_kv, 1);
    for (int s = 0; s < S; ++s) {
      W::mbar_init(full_q(s), 1);
      W::mbar_init(full_g(s), 1);
      W::mbar_init(empty(s), kTmaEmptyArrivals);
    }
    W::mbar_fence_init();
  }
  __syncthreads();  // the last block-wide barrier

  if (wg == 0) {
    W::reg_dealloc<W::kProducerRegs>();
    const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
    if (warp == 0) {
      if (lane == 0) {
        W::mbar_expect_tx(full_kv, 2 * L::kTileKV);
        W::tma_tile<HD, kBK>(k_s, &tk, full_kv, j0, b, h);
        W::tma_tile<HD, kBK>(v_s, &tv, full_kv, j0, b, h);
      }
      const float* const lrow = lse + int64_t(bh) * T;
      const float* const drow = D + int64_t(bh) * T;
      int s = 0;
      uint32_t ph = 0;
#pragma unroll 1
      for (int j = 0; j < ntiles; ++j) {
        const int i0 = j0 + j * BQ;
        W::mbar_wait(empty(s), ph ^ 1u);
        float* const ls = reinterpret_cast<float*>(sp + (l_s - sb) + s * L::kVec);
        float* const dsv = reinterpret_cast<float*>(sp + (d_s - sb) + s * L::kVec);
        for (int c = lane; c < BQ; c += 32) {
          const int i = i0 + c;
          ls[c] = i < T ? lrow[i] : INFINITY;
          dsv[c] = i < T ? drow[i] : 0.0f;
        }
        __syncwarp();  // the lanes' stores, ordered before lane 0's (releasing) arrivals
        if (lane == 0) {
          W::mbar_expect_tx(full_q(s), L::kTileQ);
          W::tma_tile<HD, BQ>(q_s + s * L::kTileQ, &tq, full_q(s), i0, b, h);
          W::mbar_expect_tx(full_g(s), L::kTileQ);
          W::tma_tile<HD, BQ>(g_s + s * L::kTileQ, &tg, full_g(s), i0, b, h);
        }
        if (++s == S) s = 0, ph ^= 1u;
      }
    } else if (warp == 1) {
      // The dQ writer.
      float* const acc = dq_acc + int64_t(bh) * T * HD;
      named_arrive(kBarDqEmpty, kDqSyncThreads);
      if (ntiles > 1) named_arrive(kBarDqEmpty + 1, kDqSyncThreads);
#pragma unroll 1
      for (int j = 0; j < ntiles; ++j) {
        const uint32_t buf = uint32_t(j) & 1u;
        const int i0 = j0 + j * BQ;
        named_sync(kBarDqFull + buf, kDqSyncThreads);
        if (lane == 0) {
          bulk_add_f32(acc + int64_t(i0) * HD, st_s + buf * L::kDq, uint32_t(min(BQ, T - i0) * HD * sizeof(float)));
          bulk_wait_all<true>();
        }
        __syncwarp();
        if (j + 2 < ntiles) named_arrive(kBarDqEmpty + buf, kDqSyncThreads);
      }
      if (lane == 0) bulk_wait_all<false>();  // the reductions done before the block ends
    }
  } else {
    W::reg_alloc<W::kConsumerRegs>();
    constexpr int NQ = HD == 64 ? 32 : 64;  // queries of this consumer's dQᵀ part
    const int cw = wg - 1, warp = (int(threadIdx.x) / 32) % 4, l = int(threadIdx.x) % 32;
    const int g = l / 4, t = l % 4;
    const bool lane0 = l == 0;
    const int jw = j0 + 64 * cw, w0 = jw + 16 * warp;  // first key of the consumer, of the warp
    const float scale = 1.0f / sqrtf(float(HD)), sl2 = scale * kLog2e;
    const int qo = HD == 64 ? 32 * cw : 0, hp = HD == 64 ? 0 : cw;  // dQᵀ part: queries qo.., hd panel hp
    const uint32_t kw = k_s + 64 * cw * W::kRowBytes, vw = v_s + 64 * cw * W::kRowBytes;
    const uint32_t kt = k_s + hp * kBK * W::kRowBytes;
    const int r = 64 * cw + 16 * warp + g;  // dSᵀ row (key of the block) of the thread
    // Staging offsets (floats) of the thread's dQᵀ elements (see the top of this part).
    const int cb = 8 * hp + 2 * warp;
    const int o0 = (qo + 2 * t) * HD + (cb ^ t) * 8 + g, o1 = (qo + 2 * t) * HD + ((cb + 1) ^ t) * 8 + g;
    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) dka[d][e] = dva[d][e] = 0.0f;

    W::mbar_wait(full_kv, 0);
    int s = 0;
    uint32_t ph = 0;
    for (int j = 0; j < ntiles; ++j) {
      const int i0 = j0 + j * BQ;
      const uint32_t buf = uint32_t(j) & 1u;
      W::mbar_wait(full_q(s), ph);
      W::mbar_wait(full_g(s), ph);
      const uint32_t qb = opaque(q_s + s * L::kTileQ), gb = opaque(g_s + s * L::kTileQ);
      const uint32_t dsb = ds_s + buf * L::kDs;
      unsigned char* const dsp = sp + (dsb - sb);
      float* const stp = reinterpret_cast<float*>(sp + (st_s - sb) + buf * L::kDq);
      float dqt[NQ / 8][4];
      if (i0 + BQ - 1 >= jw) {  // warpgroup-uniform: some query of the tile at or after the first key
        float sa[BQ / 8][4], dp[BQ / 8][4];
        W::wg_fence();
        W::qk_issue_sw<HD, BQ, kBK>(sa, opaque(kw), qb);
        wg_commit();
        W::qk_issue_sw<HD, BQ, kBK>(dp, opaque(vw), gb);
        wg_commit();
        wg_wait<1>();  // Sᵀ done, dPᵀ may still run
        fence_regs(sa);
        const float* Lr = reinterpret_cast<const float*>(sp + (l_s - sb) + s * L::kVec) + 2 * t;
        const float* Dr = reinterpret_cast<const float*>(sp + (d_s - sb) + s * L::kVec) + 2 * t;
        // The causal mask where some key of the warpgroup is after some query of the tile.
        const int x = jw + 63 > i0 ? w0 + g - i0 - 2 * t : -8;
        p_tile<BQ>(sa, Lr, x, T - i0 - 2 * t, sl2);
        wg_wait<0>();
        fence_regs(dp);
        fence_regs(sa);
        ds_tile<BQ>(dp, sa, Dr);
        uint32_t ap[BQ / 16][4], as[BQ / 16][4];
        pack_a<BQ>(ap, sa);
        pack_a<BQ>(as, dp);
        store_ds<BQ>(dsp, r, t, as);
        fence_proxy_async();  // dSᵀ visible to the async proxy (wgmma), before kBarDs
        // Every A operand and accumulator register final before the fence (the packing may
        // not sink past it).
        fence_regs(dva);
        fence_regs(dka);
        W::fence_regs(ap);
        W::fence_regs(as);
        W::wg_fence();
        W::pv_issue_sw<HD, BQ>(dva, ap, gb);  // dV += Pᵀ·dout
        wg_commit();
        named_sync(kBarDs, kConsumerThreads);  // every consumer's dSᵀ rows written
        dqt_issue<NQ>(dqt, opaque(kt), opaque(dsb + tile_offset<BQ>(0, qo / 8)));
        wg_commit();
        W::pv_issue_sw<HD, BQ>(dka, as, qb);  // dK += dSᵀ·Q
        wg_commit();
        wg_wait<1>();  // dV and dQᵀ done, dK may still run
        fence_regs(dva);
        fence_regs(dqt);
        W::fence_regs(ap);
        stage_dq<HD, NQ>(stp, o0, o1, dqt, buf);
        wg_wait<0>();
        fence_regs(dka);
        W::fence_regs(as);
      } else {
        // Every key of the warpgroup after every query of the tile: its dSᵀ rows are 0.
        uint32_t z[BQ / 16][4];
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk)
#pragma unroll
          for (int e = 0; e < 4; ++e) z[kk][e] = 0u;
        store_ds<BQ>(dsp, r, t, z);
        fence_proxy_async();
        named_sync(kBarDs, kConsumerThreads);
        W::wg_fence();
        dqt_issue<NQ>(dqt, opaque(kt), opaque(dsb + tile_offset<BQ>(0, qo / 8)));
        wg_commit();
        wg_wait<0>();
        fence_regs(dqt);
        stage_dq<HD, NQ>(stp, o0, o1, dqt, buf);
      }
      __syncwarp();  // every lane's reads of the stage's lse and D rows, before lane 0 releases it
      W::mbar_arrive_if(empty(s), lane0);  // every wgmma reading stage s completed
      if (++s == S) s = 0, ph ^= 1u;
    }
    const int64_t gbase = int64_t(b) * T * G + int64_t(h) * HD;  // dk, dv rows are G apart
    cuda_detail_attn_mma::store_rows<HD>(dk + gbase, G, w0, T, dka, scale, scale, rcos, rsin);
    cuda_detail_attn_mma::store_rows<HD>(dv + gbase, G, w0, T, dva, 1.0f, 1.0f);
  }
#elif defined(__CUDA_ARCH__)
  (void)tq, (void)tk, (void)tv, (void)tg, (void)lse, (void)D, (void)dq_acc, (void)dk;
  (void)dv, (void)T, (void)H, (void)rcos, (void)rsin, (void)G;
  __trap();  // built for a target without wgmma
#endif
}

// A 1-D tensor map over the n floats at x (lse or D rows, [B·H·T]), boxes of kTmaBQ floats, no
// swizzle: TMA wants a 16-byte aligned base, so the map starts up to 3 floats before x and
// off = how many (the kernel adds it to its coordinates). Boxes reaching past x + n read zeros.
// Opts bwd_tma in to its dynamic shared memory, once per process.
template <int HD>
void configure_tma() {
  static const bool done = [] {
    cuda_detail_attn_mma::allow_smem(bwd_tma<HD>, TmaBwdSmem<HD>::kBytes);
    return true;
  }();
  (void)done;
}

// Same arguments and contract as launch_bwd, except that dq_acc (zeroed, B·T·H·HD floats) is
// used head-major with swizzled chunks (DqLayout::kHeadMajorSw) instead of [B, T, H, HD]. The
// six tensor maps are encoded on the host each launch. hd ∈ {64, 128}; needs an sm_90a device
// and image.
template <int HD>
void launch_bwd_tma(CudaContext& ctx, bf16* dq, float* dq_acc, bf16* dk, bf16* dv, const bf16* dout,
                    const float* lse, const float* D, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                    int64_t T, int64_t H, const float* rcos, const float* rsin, int64_t G) {
  if (B * T * H == 0) return;
  const int64_t blocks = (T + kBK - 1) / kBK;
  RESBM_CHECK(blocks <= 65535 && B * H * T + kTmaBQ + 4 <= 0x7fffffff,
              cat("attention backward: T ", T, ", B·H·T ", B * H * T, " too large"), "split the batch");
  configure_tma<HD>();
  using cuda_detail_attn_wgmma::tensor_map;
  const CUtensorMap tq = tensor_map<HD>(q, B, T, H, kTmaBQ), tg = tensor_map<HD>(dout, B, T, H, kTmaBQ);
  const CUtensorMap tk = tensor_map<HD>(k, B, T, H, kBK), tv = tensor_map<HD>(v, B, T, H, kBK);
  const dim3 grid(unsigned(B * H), unsigned(blocks));
  bwd_tma<HD><<<grid, kTmaBwdThreads, TmaBwdSmem<HD>::kBytes, ctx.stream>>>(
      tq, tk, tv, tg, lse, D, dq_acc, dk, dv, int(T), int(H), rcos, rsin, G);
  RESBM_CUDA_LAUNCH_CHECK();
  cuda_detail_attn_mma::launch_dq_convert<HD, cuda_detail_attn_mma::DqLayout::kHeadMajorSw>(ctx, dq, dq_acc, B, T, H,
                                                                                          rcos, rsin, G);
}

}  // namespace resbm::ops::cuda_detail_attn_wgmma_bwd
