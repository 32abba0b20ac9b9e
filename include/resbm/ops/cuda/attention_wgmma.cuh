#pragma once
// Hopper (sm_90a) forward of the causal flash attention on warpgroup MMA (wgmma), FA3-lite:
// no TMA, no warp specialisation. Same inputs, outputs and conventions as the mma.sync
// forward of attention_mma.cuh (q, k, v, out bf16 [B, T, H, hd], row stride H·hd; lse fp32
// [B, H, T], the natural-log log-sum-exp of the scaled scores; rows past T are not written).
//
// A block of 2 warpgroups (256 threads) owns 128 query rows: warpgroup w rows 64w..64w+63.
// Q is loaded once; K/V tiles of BN keys rotate through 3 shared-memory slots (cp.async).
// Per key tile and warpgroup (the two products and the softmax pipelined: see fwd_pipe):
//   S (64 × BN, fp32 registers) = Q · Kᵀ   wgmma m64nBNk16, A = Q and B = K from shared
//                                           memory, both K-major (hd contiguous), HD/16 k-steps
//   online softmax on S in registers (the causal mask only on tiles that reach past the
//   warp's first row; tiles after the warpgroup's last row are skipped)
//   O (64 × HD, fp32 registers) += P · V   wgmma m64nHDk16, A = P from registers (bf16 pairs
//                                           packed from S), B = V from shared memory, stored
//                                           [keys][hd]: MN-major, so imm-trans-b = 1
//
// Fragment layouts (CUTLASS cute/atom/mma_traits_sm90_gmma.hpp: CLayout_64xN =
// ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)), ALayout_64x16 = CLayout_64x16), with
// g = lane/4, t = lane%4 and warp i of the warpgroup:
//   accumulator d[n][0..1] = (row 16i+g,   cols 8n+2t, 8n+2t+1),
//               d[n][2..3] = (row 16i+g+8, same cols)          (the mma.sync C layout per warp)
//   register A (k-step of 16): a0 = (16i+g, 2t..2t+1), a1 = (16i+g+8, 2t..), a2 = (16i+g, 2t+8..),
//               a3 = (16i+g+8, 2t+8..)                          (the mma.sync A layout per warp)
// so the A operand of keys 16kk..16kk+15 is pack(d[2kk][0..1]), pack(d[2kk][2..3]),
// pack(d[2kk+1][0..1]), pack(d[2kk+1][2..3]) of S: P never leaves the registers.
//
// Shared memory: no swizzle (layout type 0, "interleave"). A tile of rows of W bf16 is cut into
// core matrices of 8 rows × 16 bytes, each 128 contiguous bytes (row r%8 at 16·(r%8));
// core matrix (r/8, c) for 16-byte chunk c sits at (r/8)·(W·16) + c·128 (tile_offset). In a
// matrix descriptor (PTX ISA "Matrix Descriptor Format"; CUTLASS make_gmma_desc) the leading
// byte offset (LBO) is the step between core matrices along K and the stride byte offset (SBO)
// the step along M/N, for both majors in the interleave layout (CUTLASS: K-major
// ((8,m),(T,2k)):((1T,SBO),(1,LBO)), MN-major ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), T = 8
// bf16 = 16 bytes). Hence
//   Q, K (K-major, K = hd along a row):      LBO = 128 (next chunk), SBO = W·16 (next 8 rows)
//   V    (MN-major, K = keys = the rows):    LBO = W·16 (next 8 keys), SBO = 128 (next 8 hd)
// and a k-step moves the start address by 2 chunks (256 bytes) for Q and K, by 16 rows
// (2·W·16 bytes) for V.
//
// Ordering: cp.async writes shared memory through the generic proxy and wgmma reads it
// through the async proxy, so every thread runs fence.proxy.async after its copies landed
// and before the barrier that precedes the wgmma reads. wgmma.fence precedes each batch of
// wgmma whose register operands (accumulators, A) were touched by ordinary instructions;
// a wgmma.wait_group follows each batch within the same branch (a wgmma in flight across a
// branch makes ptxas serialise every wgmma of the kernel, warning C7520), and an empty asm on
// every accumulator and A-operand register (fence_regs, CUTLASS's warpgroup_fence_operand)
// keeps the compiler from touching them between issue and wait.
#include <cstdint>

#include "resbm/ops/cuda/attention_mma.cuh"
#include "resbm/ops/cuda/common.cuh"

// wgmma exists on sm_90a only; elsewhere the kernel traps (it is never built into a plain
// sm_90 or older image in this project: CMAKE_CUDA_ARCHITECTURES defaults to 90a).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RESBM_ATTN_WGMMA 1
#else
#define RESBM_ATTN_WGMMA 0
#endif

namespace resbm::ops::cuda_detail_attn_wgmma {

using cuda_detail_attn_mma::cp_async16;
using cuda_detail_attn_mma::cp_commit;
using cuda_detail_attn_mma::cp_wait;
using cuda_detail_attn_mma::kLog2e;
using cuda_detail_attn_mma::pack;
using cuda_detail_attn_mma::saddr;

constexpr int kWarpgroups = 2, kThreads = 128 * kWarpgroups;
constexpr int kBM = 64 * kWarpgroups;  // query rows per block
// ---------------------------------------------------------------------------------------------
// Shared-memory layout and matrix descriptors

// Byte offset of 16-byte chunk c (elements 8c..8c+7) of row r in a tile whose rows hold W
// bf16 (see the top comment).
template <int W>
__host__ __device__ constexpr uint32_t tile_offset(int r, int c) {
  return uint32_t((r / 8) * (W * 16) + c * 128 + (r % 8) * 16);
}

// 64-bit wgmma matrix descriptor: start address >> 4 in bits 0-13, LBO >> 4 in 16-29, SBO >> 4
// in 32-45, base offset 0 (bits 49-51), layout type 0 = no swizzle (bits 62-63).
__host__ __device__ constexpr uint64_t make_desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return uint64_t((smem_addr >> 4) & 0x3FFFu) | (uint64_t((lbo >> 4) & 0x3FFFu) << 16) |
         (uint64_t((sbo >> 4) & 0x3FFFu) << 32);
}
// K-major operand (A = Q, B = K): rows are M or N, each row W elements of K.
template <int W>
__host__ __device__ constexpr uint64_t desc_k(uint32_t smem_addr) {
  return make_desc(smem_addr, 128, W * 16);
}
// MN-major B operand (V): rows are K (keys), each row W elements of N (hd).
template <int W>
__host__ __device__ constexpr uint64_t desc_mn(uint32_t smem_addr) {
  return make_desc(smem_addr, W * 16, 128);
}

// Rows [r0, r0 + ROWS) of one head ([T, ·], row stride ld, HD bf16 a row) into a shared tile
// laid out by tile_offset<HD>; rows past T are zero-filled (source clamped, src-size 0, as
// load_async does). Eight consecutive threads fill one core matrix (128 contiguous bytes,
// no bank conflict); a warp reads 64 contiguous bytes of each of 8 rows.
template <int ROWS, int HD, int NT = kThreads>
__device__ __forceinline__ void load_tile(unsigned char* tile, const bf16* src, int r0, int T, int64_t ld) {
  constexpr int V = HD / 8;
  static_assert(ROWS % 8 == 0 && (ROWS * V) % NT == 0, "whole core matrices, every thread the same count");
#pragma unroll
  for (int i = 0; i < ROWS * V / NT; ++i) {
    const int idx = int(threadIdx.x) + i * NT;
    const int r = (idx / (8 * V)) * 8 + idx % 8, c = (idx / 8) % V;
    const int row = r0 + r;
    const bf16* g = src + int64_t(row < T ? row : T - 1) * ld + c * 8;
    cp_async16(tile + tile_offset<HD>(r, c), g, row < T ? 16 : 0);
  }
}

// ---------------------------------------------------------------------------------------------
// wgmma primitives (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"; operand
// order as CUTLASS cute/arch/mma_sm90_gmma.hpp)

__device__ __forceinline__ void fence_proxy_async() {
#if RESBM_ATTN_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_fence() {
#if RESBM_ATTN_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if RESBM_ATTN_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#if RESBM_ATTN_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Pins every accumulator register after a wait (nothing is emitted).
template <int NT>
__device__ __forceinline__ void fence_regs(float (&d)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[n][e])::"memory");
}

// The accumulator d[N/8][4] as asm operands in register order (c: "+f" or "=f").
#define RESBM_WG_ACC8(c, n) \
  c(d[n][0]), c(d[n][1]), c(d[n][2]), c(d[n][3]), c(d[n + 1][0]), c(d[n + 1][1]), c(d[n + 1][2]), c(d[n + 1][3])
#define RESBM_WG_ACC32(c) RESBM_WG_ACC8(c, 0), RESBM_WG_ACC8(c, 2), RESBM_WG_ACC8(c, 4), RESBM_WG_ACC8(c, 6)
#define RESBM_WG_ACC64(c) \
  RESBM_WG_ACC32(c), RESBM_WG_ACC8(c, 8), RESBM_WG_ACC8(c, 10), RESBM_WG_ACC8(c, 12), RESBM_WG_ACC8(c, 14)
#define RESBM_WG_REGS32                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "      \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define RESBM_WG_REGS64                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "      \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 × N) = [ACC: d +] A · Bᵀ; A (64 × 16) and B (N × 16) from K-major descriptors. Without
// ACC the accumulator is write-only (scale-d = 0), so the old S is dead for the compiler.
template <int N, bool ACC>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t da, uint64_t db) {
  static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
#if RESBM_ATTN_WGMMA
  if constexpr (N == 64 && ACC) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " RESBM_WG_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : RESBM_WG_ACC32("+f")
        : "l"(da), "l"(db), "r"(1));
  } else if constexpr (N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " RESBM_WG_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : RESBM_WG_ACC32("=f")
        : "l"(da), "l"(db), "r"(0));
  } else if constexpr (ACC) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " RESBM_WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : RESBM_WG_ACC64("+f")
        : "l"(da), "l"(db), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " RESBM_WG_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : RESBM_WG_ACC64("=f")
        : "l"(da), "l"(db), "r"(0));
  }
#else
  (void)d, (void)da, (void)db;
#endif
}

// d (64 × N) += A · B; A (64 × 16 bf16) from registers (a[4], the register-A layout), B
// (16 × N) from an MN-major descriptor (imm-trans-b = 1).
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t db) {
  static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
#if RESBM_ATTN_WGMMA
  if constexpr (N == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " RESBM_WG_REGS32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : RESBM_WG_ACC32("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " RESBM_WG_REGS64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : RESBM_WG_ACC64("+f")
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  }
#else
  (void)d, (void)a, (void)db;
#endif
}

#undef RESBM_WG_ACC8
#undef RESBM_WG_ACC32
#undef RESBM_WG_ACC64
#undef RESBM_WG_REGS32
#undef RESBM_WG_REGS64

// ---------------------------------------------------------------------------------------------
// The two products of a key tile (warpgroup-collective; the tests call them directly)

// s (64 × BN) = A · Bᵀ over HD: A = 64 rows from a_addr, B = BN rows from b_addr, both shared
// tiles of HD-element rows (tile_offset<HD>) starting at a core-matrix row (multiple of 8).
// Issue only: the caller fences before (wg_fence), commits, waits and pins s after.
template <int HD, int BN>
__device__ __forceinline__ void qk_issue(float (&s)[BN / 8][4], uint32_t a_addr, uint32_t b_addr) {
  wgmma_ss<BN, false>(s, desc_k<HD>(a_addr), desc_k<HD>(b_addr));
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk)
    wgmma_ss<BN, true>(s, desc_k<HD>(a_addr + kk * 256), desc_k<HD>(b_addr + kk * 256));
}

// o (64 × HD) += P (64 × BN, a[BN/16] register-A k-steps) · V (BN rows of HD at v_addr). Issue only.
template <int HD, int BN>
__device__ __forceinline__ void pv_issue(float (&o)[HD / 8][4], const uint32_t (&a)[BN / 16][4], uint32_t v_addr) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs<HD>(o, a[kk], desc_mn<HD>(v_addr + tile_offset<HD>(16 * kk, 0)));
}

// The register-A k-steps of P (64 × BN in the accumulator layout, rounded to bf16).
template <int BN>
__device__ __forceinline__ void pack_p(uint32_t (&a)[BN / 16][4], const float (&p)[BN / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    a[kk][0] = pack(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
}

// Pins registers of the A operand (see fence_regs).
template <int KS>
__device__ __forceinline__ void fence_regs(uint32_t (&a)[KS][4]) {
#pragma unroll
  for (int n = 0; n < KS; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[n][e])::"memory");
}

// qk_issue, committed and waited for.
template <int HD, int BN>
__device__ __forceinline__ void qk(float (&s)[BN / 8][4], uint32_t a_addr, uint32_t b_addr) {
  wg_fence();
  qk_issue<HD, BN>(s, a_addr, b_addr);
  wg_commit();
  wg_wait<0>();
  fence_regs(s);
}

// o (64 × HD) += p (64 × BN, accumulator layout, rounded to bf16) · V (BN rows of HD at v_addr),
// committed and waited for.
template <int HD, int BN>
__device__ __forceinline__ void pv(float (&o)[HD / 8][4], const float (&p)[BN / 8][4], uint32_t v_addr) {
  uint32_t a[BN / 16][4];
  pack_p<BN>(a, p);
  fence_regs(o);
  wg_fence();
  pv_issue<HD, BN>(o, a, v_addr);
  wg_commit();
  wg_wait<0>();
  fence_regs(o);
}

// The schedule of a key tile's two products and its softmax (FA3 = Shah et al. 2024,
// "FlashAttention-3", §3.2, Algorithm 2): in step j the warpgroup issues S(j) = Q·K(j)ᵀ, then
// O += P(j−1)·V(j−1) (P carried from the previous step as packed bf16), waits for S(j) only
// (wait_group 1), runs the softmax of tile j while the P·V product is still in flight, then
// waits for it (wait_group 0), rescales O by the new max and packs P(j). K and V tiles rotate
// through 3 shared slots: V(j−1) is read in step j while tile j+1 is loaded. Measured on the
// H200 in one run (B 16, T 1024; test_cuda_attention_wgmma's timing, commit 7726988) against
// the serial schedule (S, wait, softmax, P·V, wait) and FA3's ping-pong of the two warpgroups
// on named barriers (§3.1, with one __syncthreads a tile left for the cp.async ring), both
// since removed: hd 64 0.154 / 0.172 / 0.154 ms (64-key tiles; 128-key tiles 0.19–0.20),
// hd 128 0.385 / 0.433 / 0.404 ms; mma.sync 0.163 and 0.342 ms.

// Blocks a SM for __launch_bounds__: 2 where S, O and P fit in 128 registers (hd 64 with 64-key
// tiles: 32 + 32 + 16), so that two blocks, not synchronised with each other, overlap one's
// softmax with the other's wgmma; else 1 (up to 255 registers).
template <int HD, int BN>
constexpr int min_blocks() {
  return HD == 64 && BN == 64 ? 2 : 1;
}

// K/V slots in shared memory: V(j−1) is read while tile j+1 loads.
constexpr int kSlots = 3;

template <int HD, int BN>
constexpr size_t fwd_smem() {
  return size_t(kBM + 2 * kSlots * BN) * HD * sizeof(bf16);  // Q, then K[slots], then V[slots]
}

// Row sums reduced over the quad, out (rows w0.., scaled by 1/l) and lse (natural log) stored;
// rows past T (the only ones that can have l = 0) are not.
template <int HD>
__device__ __forceinline__ void finish(bf16* out, float* lse, int64_t C, int w0, int T, const float (&o)[HD / 8][4],
                                       const float (&mx)[2], const float (&sum)[2]) {
  const int l = int(threadIdx.x) % 32, g = l / 4, t = l % 4;
  float l0 = sum[0], l1 = sum[1];
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  cuda_detail_attn_mma::store_rows<HD>(out, C, w0, T, o, 1.0f / l0, 1.0f / l1);
  if (t == 0) {
    if (w0 + g < T) lse[w0 + g] = (mx[0] + log2f(l0)) / kLog2e;
    if (w0 + g + 8 < T) lse[w0 + g + 8] = (mx[1] + log2f(l1)) / kLog2e;
  }
}

// Block step j = 0..ntiles: tile j's K/V have landed (all threads: cp.async wait, proxy fence,
// barrier), tile j+1 is loaded into slot (j+1)%3 (its last readers, QK(j−2) and PV(j−2), were
// waited for by every warpgroup before this barrier), then the warpgroup runs QK(j) if j < nw
// (its own tile count: tiles after its last row are skipped) and PV(j−1) if 1 <= j <= nw.
template <int HD, int BN>
__global__ void __launch_bounds__(kThreads, min_blocks<HD, BN>())
    fwd_pipe(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q, const bf16* __restrict__ k,
             const bf16* __restrict__ v, int T, int H) {
  static_assert(HD == 64 || HD == 128, "hd 64 or 128");
  static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128");
#if RESBM_ATTN_WGMMA
  constexpr uint32_t kTileK = BN * HD * sizeof(bf16);
  extern __shared__ __align__(128) unsigned char attn_wgmma_smem[];
  unsigned char* Qs = attn_wgmma_smem;
  unsigned char* Ks = Qs + kBM * HD * sizeof(bf16);  // [3][BN rows]
  unsigned char* Vs = Ks + kSlots * kTileK;          // [3][BN rows]
  const int wg = int(threadIdx.x) / 128, warp = (int(threadIdx.x) / 32) % 4;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = cuda_detail_attn_mma::tile_index() * kBM;
  const int wg0 = q0 + 64 * wg, w0 = wg0 + 16 * warp;  // first row of the warpgroup, of the warp
  const float sl2 = kLog2e / sqrtf(float(HD));

  const int ntiles = (min(T, q0 + kBM) + BN - 1) / BN;
  // Tiles this warpgroup needs (warpgroup-uniform): those with a key at or before its last row,
  // none if it has no row before T.
  const int nw = wg0 < T ? min(ntiles, (wg0 + 63) / BN + 1) : 0;
  load_tile<kBM, HD>(Qs, q + base, q0, T, C);
  load_tile<BN, HD>(Ks, k + base, 0, T, C);
  load_tile<BN, HD>(Vs, v + base, 0, T, C);
  cp_commit();

  const uint32_t q_addr = saddr(Qs) + tile_offset<HD>(64 * wg, 0);
  const uint32_t k_addr = saddr(Ks), v_addr = saddr(Vs);
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[d][e] = 0.0f;
  float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
  float s[BN / 8][4];
  uint32_t p[BN / 16][4];  // P of the previous tile, packed: the A operand of its P·V
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk)
#pragma unroll
    for (int e = 0; e < 4; ++e) p[kk][e] = 0u;

  int slot = 0;  // j % 3
  for (int j = 0; j <= ntiles; ++j) {
    const int prev = slot == 0 ? kSlots - 1 : slot - 1, next = slot == kSlots - 1 ? 0 : slot + 1;
    if (j < ntiles) {
      cp_wait<0>();
      fence_proxy_async();  // this thread's cp.async writes, visible to the async proxy (wgmma)
      __syncthreads();
      if (j + 1 < ntiles) {
        load_tile<BN, HD>(Ks + next * kTileK, k + base, (j + 1) * BN, T, C);
        load_tile<BN, HD>(Vs + next * kTileK, v + base, (j + 1) * BN, T, C);
        cp_commit();
      }
    }
    // Three self-contained (issued and waited for within the branch) forms of the step, so that
    // no wgmma is in flight across a branch: ptxas would serialise them all (C7520). The
    // conditions are warpgroup-uniform.
    if (j >= 1 && j < nw) {        // QK(j) and PV(j-1): the steady state
      fence_regs(o);
      fence_regs(p);
      wg_fence();
      qk_issue<HD, BN>(s, q_addr, k_addr + slot * kTileK);
      wg_commit();
      pv_issue<HD, BN>(o, p, v_addr + prev * kTileK);
      wg_commit();
      wg_wait<1>();                    // S(j) done; P(j-1)·V(j-1) may still run
      fence_regs(s);
      const float2 c = cuda_detail_attn_mma::softmax_p<BN / 8, true>(s, mx, sum, j * BN, w0, sl2);
      wg_wait<0>();
      fence_regs(o);
      fence_regs(p);
      fence_regs(s);  // the packing below after the wait: p is the A operand of the product just waited for
#pragma unroll
      for (int d = 0; d < HD / 8; ++d) {
        o[d][0] *= c.x;
        o[d][1] *= c.x;
        o[d][2] *= c.y;
        o[d][3] *= c.y;
      }
      pack_p<BN>(p, s);
    } else if (j == 0 && nw > 0) {  // QK(0) only (o is still 0: no rescaling)
      wg_fence();
      qk_issue<HD, BN>(s, q_addr, k_addr + slot * kTileK);
      wg_commit();
      wg_wait<0>();
      fence_regs(s);
      cuda_detail_attn_mma::softmax_p<BN / 8, true>(s, mx, sum, 0, w0, sl2);
      pack_p<BN>(p, s);
    } else if (j >= 1 && j == nw) {  // PV(nw-1) only
      fence_regs(o);
      fence_regs(p);
      wg_fence();
      pv_issue<HD, BN>(o, p, v_addr + prev * kTileK);
      wg_commit();
      wg_wait<0>();
      fence_regs(o);
    }
    slot = next;
  }
  finish<HD>(out + base, lse + int64_t(bh) * T, C, w0, T, o, mx, sum);
#elif defined(__CUDA_ARCH__)
  (void)out, (void)lse, (void)q, (void)k, (void)v, (void)T, (void)H;
  __trap();  // built for a target without wgmma
#endif
}

// Opts the kernel in to its dynamic shared memory (> 48 KiB), once per process.
template <int HD, int BN>
void configure() {
  static const bool done = [] {
    cuda_detail_attn_mma::allow_smem(fwd_pipe<HD, BN>, fwd_smem<HD, BN>());
    return true;
  }();
  (void)done;
}

// The forward with BN-key tiles (64 or 128; launch_fwd: 64, faster in the run above).
template <int HD, int BN>
void launch_fwd_bn(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                   int64_t T, int64_t H) {
  if (B * T * H == 0) return;
  configure<HD, BN>();
  const dim3 grid(unsigned((T + kBM - 1) / kBM), unsigned(B * H));
  fwd_pipe<HD, BN><<<grid, kThreads, fwd_smem<HD, BN>(), ctx.stream>>>(out, lse, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

// Same contract as cuda_detail_attn_mma::launch_fwd: out [B, T, H, HD] bf16, lse [B, H, T] fp32.
// hd ∈ {64, 128}; needs an sm_90a device and image.
template <int HD>
void launch_fwd(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                int64_t T, int64_t H) {
  launch_fwd_bn<HD, 64>(ctx, out, lse, q, k, v, B, T, H);
}

}  // namespace resbm::ops::cuda_detail_attn_wgmma
