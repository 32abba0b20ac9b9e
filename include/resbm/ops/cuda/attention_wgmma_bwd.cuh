#pragma once
// Hopper (sm_90a) single-pass backward of the causal flash attention on warpgroup MMA (wgmma),
// bwd_tma (launch_bwd_tma), FA3's structure (Shah et al. 2024, "FlashAttention-3";
// Dao-AILab/flash-attention hopper/mainloop_bwd_sm90_tma_gmma_ws.hpp): a TMA producer warp, an
// mbarrier ring of Q / dout tiles, two consumer warpgroups, and dQ added by bulk reductions
// from a dedicated warp.
//
// Contract (as the single-pass branch of cuda_detail_attn_mma::launch_bwd, but for dq_acc's
// layout): dout, q, k, v bf16 [B, T, H, HD] (row stride H·HD); lse (natural log) and D =
// rowsum(dout ⊙ out) fp32 [B, H, T]; dq_acc B·T·H·HD fp32, already zero (bwd_dot of
// attention.cuh zeroes it), used head-major with swizzled chunks (below); dq, dk, dv bf16
// written with row stride G, dq and dk rotated back by a RoPE table when one is given (dk in
// store_rows, dq in dq_convert<HD, kHeadMajorSw>).
//
// History (H200, B 16, T 1024, hd 64 / 128, test_cuda_attention_wgmma_bwd's timing; the
// mma.sync single pass 0.443 / 1.191 ms): the first wgmma backward, bwd (cp.async into
// no-swizzle tiles, no warp specialisation, each thread adding its dQ with red.global.add),
// ran 0.349 / 0.834 ms, and 0.264 / 0.583 ms with the dq atomics left out (wrong dq), so they
// cost ~25%; a bulk reduction of a staged dQ tile inside bwd did not pay (0.361 / 0.814 ms:
// all 256 threads at a barrier while thread 0 waited for it), one issued by a dedicated
// dQ-writer warp here does: 0.332 / 0.698 ms; with the lse/D rows brought by the consumers
// instead of the producer warp's lanes, 0.2815 / 0.665 ms. bwd was removed after bwd_tma
// replaced it (git log -S launch_bwd_bq finds it).
//
// 384 threads, one block a SM, grid (B·H, key blocks of kBK = 128): blockIdx.y = key block,
// dispatched y-slowest, so every head's first (longest: all later queries attend to it) key
// block starts before any head's second one.
//   warpgroup 0, the producer (setmaxnreg down to 24):
//     warp 0: one thread loads K and V of the block's 128 keys once (full_kv), then per query
//       tile j (i0 = j0 + 64j, < T) into stage j % S of a ring (S = TmaBwdSmem::S: 4 at hd
//       64, 2 at hd 128), after the stage's empty barrier says its previous use is read: Q
//       (full_q) and dout (full_g);
//     warp 1, the dQ writer: per tile waits for the staged dQ (named barrier kBarDqFull + j % 2),
//       adds it into dq_acc with ONE bulk reduction (cp.reduce.async.bulk .add.f32) of the
//       tile's min(64, T − i0) rows, waits until that has read the staging buffer
//       (cp.async.bulk.wait_group.read) and hands it back (kBarDqEmpty + j % 2);
//     warps 2, 3 leave.
//   warpgroups 1, 2, the consumers (setmaxnreg up to 240): consumer w owns keys jw = j0 + 64w ..
//     jw + 63 (M = 64 of every product where keys are the rows), and per tile:
//       Sᵀ = K_w·Qᵀ, dPᵀ = V_w·doutᵀ   SS, both K-major swizzled (qk_issue_sw), one commit group
//                                      each; P = exp2(..) runs while dPᵀ is still in flight
//       dSᵀ = Pᵀ ⊙ (dPᵀ − D)            to the shared dSᵀ tile ([128 keys][64 queries], no-swizzle
//                                      interleave layout of tile_offset; double-buffered by
//                                      j % 2)
//       dV += Pᵀ·dout                  RS (A = Pᵀ packed from the accumulator as the forward
//                                      packs P; pv_issue_sw: dout MN-major swizzled), issued
//                                      before the dSᵀ barrier (named, the 256 consumer threads)
//       dQᵀ = Kᵀ·dSᵀ                   SS, A = Kᵀ: the K tile read MN-major (imm-trans-a; a
//                                      64-hd panel of K is exactly one swizzled MN atom column),
//                                      B = dSᵀ MN-major (imm-trans-b; desc_mn: LBO = 64·16 bytes,
//                                      the next 8 keys, SBO 128), K = the 128 keys
//       dK += dSᵀ·Q                    RS, in flight while dQ is staged
//     dQᵀ is split as hd 64: consumer w all 64 hd × queries 32w..32w+31 (m64n32);
//     hd 128: hd 64w..64w+63 (panel w of K) × all 64 queries (m64n64).
//     A consumer whose keys are all after the tile's queries (consumer 1 on a block's first
//     tile) skips Sᵀ..dK and writes zeros as its dSᵀ rows; it still computes its part of dQ
//     (no k-step of a wgmma is skipped: a wgmma under a branch makes ptxas serialise them).
//
// dQ staging: fp32 [64 queries][HD], two buffers (j % 2). Element (q, c) is stored at
// q·HD + ((c/8) ^ ((q/2) % 4))·8 + c % 8: the 32 lanes of a warp store one accumulator
// register (8 consecutive c, 4 queries 2 apart) to 32 different banks. Global rows keep the
// same permutation (DqLayout::kHeadMajorSw of attention_mma.cuh: tiles start at multiples of
// 64), so the valid rows of a partial last tile are a contiguous prefix; rows past T are never
// added. dq_acc is [B, H, T, HD] (head-major) with that chunk swizzle: launch_bwd_tma converts
// it (dq_convert<HD, kHeadMajorSw>).
//
// Synchronisation (ids of named barriers: id 0 is __syncthreads'):
//   mbarriers, as fwd_tma: full_kv (1 arrival + tx), full_q[s], full_g[s] (1 arrival + tx: the
//     tile's bytes), empty[s] (8 arrivals: lane 0 of every consumer warp once its last wgmma reading the
//     stage completed). Use u = j / S of stage s: consumers wait parity u & 1 of full, the
//     producer parity (u & 1) ^ 1 of empty. Both consumers wait for and release every stage
//     (also a skipping one: it waits first, so that its arrival counts towards the right
//     phase).
//   kBarDs (256): dSᵀ of tile j written (each thread: stores, fence.proxy.async, bar.sync)
//     before any dQ wgmma reads it; it also publishes tile j+1's lse and D rows (below). One barrier a tile suffices with two dSᵀ buffers: tile
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
// lse and D rows of a tile are brought by the consumers themselves, one value a thread, into a
// double buffer: tile j+1's are loaded from global memory at the start of tile j (the load
// hidden behind the Sᵀ and dPᵀ products), stored after their wait and published by tile j's
// dSᵀ barrier; tile 0's before the loop, behind one more barrier. (A row of one head starts at
// bh·T + i0 floats, not 16-byte aligned for odd T: a 1-D TMA of them faulted with an illegal
// instruction on the H200. Stored by the producer warp's lanes and published through the
// full/empty mbarriers, compute-sanitizer's racecheck reported every such store as a hazard.)
// Past T, lse is +∞ and D 0, so P, and with it dSᵀ, is 0 for query columns ≥ T (p_tile also
// masks them); K, V, Q, dout rows past T are zeros (the (HD, H, T, B) tensor maps), and keys
// past T are masked as keys after every valid query (they only occur in tiles that carry the
// causal mask).
//
// Registers (ptxas -v, CUDA 13.0, sm_90a): 168 a thread at launch (__launch_bounds__(384, 1)),
// setmaxnreg 24 (producer warpgroup) / 240 (consumers) as fwd_tma. Noted when bwd_tma was
// written: no spill at hd 64 or 128; the consumers fit in 208 at hd 64 and need ~225-232 at hd
// 128 (spill-free with reg_alloc<232>, 4 bytes spilled at <224>); the producer's and the
// writer's loops are not unrolled (#pragma unroll 1): unrolled, the 24-register warpgroup
// spilled 36 bytes at hd 128. ptxas -v of test_cuda_attention_wgmma_bwd (CUDA 13.0.88, -O3)
// reported 28 bytes of spill stores at hd 64 and 24 at hd 128 (before the lse/D rows moved
// to the consumers); where they sit was not looked into. The per-k-step descriptors are rebuilt from
// opaque() bases each query tile (hoisted, they cost registers).
#include <cstdint>

#include "resbm/ops/cuda/attention_mma.cuh"
#include "resbm/ops/cuda/attention_wgmma.cuh"
#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops::cuda_detail_attn_wgmma_bwd {

using cuda_detail_attn_mma::kLog2e;
using cuda_detail_attn_mma::saddr;
using cuda_detail_attn_wgmma::desc_mn;
using cuda_detail_attn_wgmma::fence_proxy_async;
using cuda_detail_attn_wgmma::fence_regs;
using cuda_detail_attn_wgmma::tile_offset;
using cuda_detail_attn_wgmma::wg_commit;
using cuda_detail_attn_wgmma::wg_wait;
using cuda_detail_attn_wgmma::wgmma_ss_tt;

constexpr int kWarpgroups = 2;         // consumer warpgroups
constexpr int kBK = 64 * kWarpgroups;  // keys per block

// x, opaque to the compiler: applied to the shared-memory base addresses once per query tile,
// so that the descriptors of every k-step (64-bit, loop-invariant) are rebuilt from it next to
// their wgmma instead of being hoisted out of the loop into ~100 live registers.
__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  asm volatile("" : "+r"(x));
  return x;
}

// ---------------------------------------------------------------------------------------------
// Barriers, bulk reductions and the shared memory of bwd_tma

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
// [64][HD]), lse[2], D[2] (64 floats), barriers (full_kv, full_q[S], full_g[S], empty[S]).
template <int HD>
struct TmaBwdSmem {
  static constexpr uint32_t kTileKV = kBK * HD * sizeof(bf16), kTileQ = kTmaBQ * HD * sizeof(bf16);
  static constexpr uint32_t kDs = kBK * kTmaBQ * sizeof(bf16), kDq = kTmaBQ * HD * sizeof(float);
  static constexpr uint32_t kVec = kTmaBQ * sizeof(float);
  static constexpr size_t kFixed =
      1024 + 2 * size_t(kTileKV) + 2 * size_t(kDs) + 2 * size_t(kDq) + 4 * size_t(kVec) + 8;
  static constexpr size_t kPerStage = 2 * size_t(kTileQ) + 3 * 8;
  static constexpr size_t kFit = (cuda_detail_attn_wgmma::kSmemLimit - kFixed) / kPerStage;
  static constexpr int S = kFit < 4 ? int(kFit) : 4;  // stages of the Q / dout ring
  static constexpr uint32_t k = 0, v = kTileKV, q = 2 * kTileKV, g = q + S * kTileQ, ds = g + S * kTileQ,
                            st = ds + 2 * kDs, lse = st + 2 * kDq, d = lse + 2 * kVec, bars = d + 2 * kVec;
  static constexpr size_t kBytes = 1024 + size_t(bars) + 8 * (1 + 3 * size_t(S));
  static_assert(S >= 2, "a ring of at least 2 stages");
  static_assert(kBytes <= cuda_detail_attn_wgmma::kSmemLimit, "shared memory");
  static_assert(q % 1024 == 0 && g % 1024 == 0 && lse % 128 == 0 && kTileQ % 1024 == 0, "TMA destinations aligned");
};

// ---------------------------------------------------------------------------------------------
// The consumers' building blocks (warpgroup-collective where they issue wgmma; the test calls
// dqt_issue directly).

// Pᵀ = exp2(s·sl2 − lse·log2e) in place for the thread's elements (key row g or g + 8 of the
// warp, query column 8n + 2t (+1)); L = the tile's lse row from column 2t. Masked to 0 where
// query < key (8n + (e & 1) < x + 8·(e >> 1), x = (first key of the warp + g) − i0 − 2t; the
// kernel passes x = -8, masking nothing, where every query of the tile is at or after every key
// of the warpgroup: one code path, as two would keep both paths' loads live) and for query
// columns past T (8n + (e & 1) ≥ y = T − i0 − 2t: lse taken as +∞).
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
// tile at ds (8 lanes fill one 128-byte core matrix, no bank conflict).
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
// interleave, MN-major: LBO = 64·16 bytes, the next 8 keys; SBO 128) from ds (the first query
// chunk of the part). N ∈ {32, 64}. Issue only.
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
// query qo + 8n + 2t + (e & 1)) into staging buffer `buf` at st (see the top of the file: o0,
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

// ---------------------------------------------------------------------------------------------

template <int HD>
__global__ void __launch_bounds__(kTmaBwdThreads, 1)
    bwd_tma(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
            const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tg,
            const float* __restrict__ lse, const float* __restrict__ D, float* __restrict__ dq_acc,
            bf16* __restrict__ dk, bf16* __restrict__ dv, int T, int H, const float* __restrict__ rcos, const float* __restrict__ rsin, int64_t G) {
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
        int s = 0;
        uint32_t ph = 0;
#pragma unroll 1
        for (int j = 0; j < ntiles; ++j) {
          const int i0 = j0 + j * BQ;
          W::mbar_wait(empty(s), ph ^ 1u);
          W::mbar_expect_tx(full_q(s), L::kTileQ);
          W::tma_tile<HD, BQ>(q_s + s * L::kTileQ, &tq, full_q(s), i0, b, h);
          W::mbar_expect_tx(full_g(s), L::kTileQ);
          W::tma_tile<HD, BQ>(g_s + s * L::kTileQ, &tg, full_g(s), i0, b, h);
          if (++s == S) s = 0, ph ^= 1u;
        }
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
    // Staging offsets (floats) of the thread's dQᵀ elements (see the top of the file).
    const int cb = 8 * hp + 2 * warp;
    const int o0 = (qo + 2 * t) * HD + (cb ^ t) * 8 + g, o1 = (qo + 2 * t) * HD + ((cb + 1) ^ t) * 8 + g;
    float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) dka[d][e] = dva[d][e] = 0.0f;

    // lse and D rows, double-buffered by tile parity (see the top comment): consumer thread ct
    // < 64 brings lse[c], 64 <= ct < 128 D[c] of column c = ct % 64.
    const int ct = int(threadIdx.x) - 128, col = ct % BQ;
    float* const lv = reinterpret_cast<float*>(sp + (l_s - sb)) + (ct < BQ ? 0 : (d_s - l_s) / 4) + col;
    const float* const src = (ct < BQ ? lse : D) + int64_t(bh) * T + col;
    const float past = ct < BQ ? INFINITY : 0.0f;  // lse, D of a query past T
    const bool brings = ct < 2 * BQ;
    if (brings) lv[0] = j0 + col < T ? src[j0] : past;
    named_sync(kBarDs, kConsumerThreads);  // tile 0's rows

    W::mbar_wait(full_kv, 0);
    int s = 0;
    uint32_t ph = 0;
    for (int j = 0; j < ntiles; ++j) {
      const int i0 = j0 + j * BQ;
      const uint32_t buf = uint32_t(j) & 1u;
      const bool next = brings && j + 1 < ntiles;  // tile j+1's value, stored before tile j's dSᵀ barrier
      const float nv = next && i0 + BQ + col < T ? src[i0 + BQ] : past;
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
        const float* Lr = reinterpret_cast<const float*>(sp + (l_s - sb)) + buf * BQ + 2 * t;
        const float* Dr = reinterpret_cast<const float*>(sp + (d_s - sb)) + buf * BQ + 2 * t;
        // The causal mask where some key of the warpgroup is after some query of the tile.
        const int x = jw + 63 > i0 ? w0 + g - i0 - 2 * t : -8;
        p_tile<BQ>(sa, Lr, x, T - i0 - 2 * t, sl2);
        wg_wait<0>();
        fence_regs(dp);
        fence_regs(sa);
        if (next) lv[(buf ^ 1u) * BQ] = nv;  // no wgmma in flight here
        ds_tile<BQ>(dp, sa, Dr);
        uint32_t ap[BQ / 16][4], as[BQ / 16][4];
        W::pack_p<BQ>(ap, sa);  // Pᵀ and dSᵀ as register A operands
        W::pack_p<BQ>(as, dp);
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
        if (next) lv[(buf ^ 1u) * BQ] = nv;
        fence_proxy_async();
        named_sync(kBarDs, kConsumerThreads);
        W::wg_fence();
        dqt_issue<NQ>(dqt, opaque(kt), opaque(dsb + tile_offset<BQ>(0, qo / 8)));
        wg_commit();
        wg_wait<0>();
        fence_regs(dqt);
        stage_dq<HD, NQ>(stp, o0, o1, dqt, buf);
      }
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

// The backward (the contract at the top): D = rowsum(dout ⊙ out) and a zeroed dq_acc (B·T·H·HD
// floats, used head-major with swizzled chunks, DqLayout::kHeadMajorSw) already there; dq, dk,
// dv written (row stride G), dq and dk rotated back by the RoPE table (rcos, rsin: [≥ T,
// HD/2]) when given. The four tensor maps are encoded on the host each launch. hd ∈ {64, 128};
// needs an sm_90a device and image.
template <int HD>
void launch_bwd_tma(CudaContext& ctx, bf16* dq, float* dq_acc, bf16* dk, bf16* dv, const bf16* dout,
                    const float* lse, const float* D, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                    int64_t T, int64_t H, const float* rcos, const float* rsin, int64_t G) {
  if (B * T * H == 0) return;
  const int64_t blocks = (T + kBK - 1) / kBK;
  RESBM_CHECK(blocks <= 65535, cat("attention backward: T ", T, " is ", blocks, " key blocks of ", kBK, ", above 65535"),
              cat("use sequences of at most ", 65535 * kBK, " tokens"));
  RESBM_CHECK(B * H <= 0x7fffffff, cat("attention backward: B·H ", B * H, " is above 2^31 - 1"), "split the batch");
  cuda_detail_attn_mma::allow_smem_once<bwd_tma<HD>>(TmaBwdSmem<HD>::kBytes);
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
