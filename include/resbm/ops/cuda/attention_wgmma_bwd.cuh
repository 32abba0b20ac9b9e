#pragma once
// Hopper (sm_90a) single-pass backward of the causal flash attention on warpgroup MMA (wgmma),
// FA3-lite: no TMA, no warp specialisation. Same contract as the single-pass branch of
// cuda_detail_attn_mma::launch_bwd (dq_acc != nullptr): dout, q, k, v bf16 [B, T, H, HD] (row
// stride H·HD), lse (natural log) and D = rowsum(dout ⊙ out) fp32 [B, H, T], dq_acc fp32
// [B, T, H, HD] already zero (bwd_dot of attention.cuh zeroes it); dk, dv bf16 written with
// row stride G (dk optionally rotated back by a RoPE table), dq accumulated into dq_acc with
// fp32 atomics and then converted to bf16 by dq_convert / dq_convert_rope.
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
  const float scale = 1.0f / sqrtf(float(HD));
  if (rcos) {
    const int64_t n8 = B * T * H * HD / 16;
    cuda_detail_attn_mma::dq_convert_rope<HD><<<resbm::cuda_detail::grid_for(n8, 256), 256, 0, ctx.stream>>>(
        dq, dq_acc, n8, scale, rcos, rsin, int(T), int(H), G);
  } else {
    const int64_t n8 = B * T * H * HD / 8;
    cuda_detail_attn_mma::dq_convert<<<resbm::cuda_detail::grid_for(n8, 256), 256, 0, ctx.stream>>>(
        dq, dq_acc, n8, scale, int(H * HD / 8), G);
  }
  RESBM_CUDA_LAUNCH_CHECK();
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

}  // namespace resbm::ops::cuda_detail_attn_wgmma_bwd
