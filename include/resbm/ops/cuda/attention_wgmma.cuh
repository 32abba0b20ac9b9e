#pragma once
// Hopper (sm_90a) forward of the causal flash attention on warpgroup MMA (wgmma), fwd_tma
// (launch_fwd_tma), with the same inputs, outputs and conventions as the mma.sync forward of
// attention_mma.cuh (q, k, v, out bf16 [B, T, H, hd], row stride H·hd; lse fp32 [B, H, T], the
// natural-log log-sum-exp of the scaled scores; rows past T are not written); and the wgmma
// primitives that the backward of attention_wgmma_bwd.cuh shares with it (the interleave
// layout and its descriptors, the wgmma instructions, fences and the epilogue).
//
// History (H200, B 16, T 1024, test_cuda_attention_wgmma's timing): the first forward here,
// fwd_pipe (cp.async into interleave tiles, 3 K/V slots, no producer warp), ran the pipelined
// schedule below at hd 64 0.154 ms, hd 128 0.385 ms, against 0.172 / 0.433 for the serial one
// and 0.154 / 0.404 for FA3's ping-pong of the two warpgroups (commit 7726988); fwd_tma replaced
// it (hd 64 0.126 against 0.153 ms, hd 128 0.227 against 0.384; mma.sync 0.161 / 0.347).
//
// fwd_tma. 384 threads, one block a SM: warpgroup 0 is the producer (setmaxnreg down to 24
// registers; one thread issues every load, the other 127 leave), warpgroups 1 and 2 consume
// (setmaxnreg up to 240) and own 64 query rows each of the block's 128. Per key tile of BN keys
// and consumer warpgroup:
//   S (64 × BN, fp32 registers) = Q · Kᵀ   wgmma m64nBNk16, A = Q and B = K from shared
//                                           memory, both K-major (hd contiguous), HD/16 k-steps
//   online softmax on S in registers (softmax_p of attention_mma.cuh; the causal mask only on
//   tiles that reach past the warp's first row; tiles after the warpgroup's last row are skipped)
//   O (64 × HD, fp32 registers) += P · V   wgmma m64nHDk16, A = P from registers (bf16 pairs
//                                           packed from S), B = V from shared memory, stored
//                                           [keys][hd]: MN-major, so imm-trans-b = 1
// pipelined as FA3's Algorithm 2 (Shah et al. 2024, "FlashAttention-3", §3.2): in step j the
// warpgroup issues S(j) = Q·K(j)ᵀ, then O += P(j−1)·V(j−1) (P carried from the previous step as
// packed bf16), waits for S(j) only (wait_group 1), runs the softmax of tile j while the P·V
// product is still in flight, then waits for it (wait_group 0), rescales O by the new max and
// packs P(j); finish_rows writes the rows and lse. What the hardware does for it:
//   loads   TMA (cp.async.bulk.tensor.4d) from tensor maps built on the host, q, k, v each
//           viewed as (hd, H, T, B) so that rows past T read as zeros; Q once (128 rows),
//           then K and V tiles of BN keys into a ring of tma_stages() stages (2 to 8: as
//           many as fit in 227 KiB), in key order, as far ahead as the ring allows.
//   layout  128-byte swizzle (wgmma layout type 1): a tile is hd/64 panels of rows × 64
//           columns (one TMA box each, 128 bytes a row), a panel made of 1024-byte atoms of
//           8 rows in which 16-byte chunk c of row r sits at chunk c ^ (r % 8). Every tile
//           and panel starts 1024-byte aligned, so the descriptors' base offset is 0.
//             Q, K (K-major): SBO 1024 (8 rows), LBO unused (1); k-step kk starts at panel
//                             kk/4, +32·(kk%4) bytes inside the rows;
//             V (MN-major):   SBO 1024 (8 keys), LBO = the panel stride BN·128 (the next 64
//                             hd columns, read by the n128 product at hd 128); k-step kk
//                             starts 2048·kk bytes (16 keys) further.
//   sync    mbarriers, no block-wide barrier after the setup. Per stage a full barrier for K
//           and one for V (1 arrival: the producer's arrive.expect_tx with the tile's bytes,
//           completed by the TMA's complete_tx) and an empty barrier for each (8 arrivals:
//           lane 0 of every consumer warp once its wait_group on the last wgmma reading the
//           tile returned: K after QK(j), V after PV(j)). Parities: use u = j / S of a stage
//           waits for phase u of its full barrier (parity u & 1) and, in the producer, for
//           phase u − 1 of its empty barrier (parity (u & 1) ^ 1; a fresh barrier passes
//           parity 1 at once). A warpgroup releases the tiles it skips (past its last row)
//           after waiting for them to land, so every stage gets its 8 arrivals per use.
//   order   TMA writes and wgmma reads are both async-proxy accesses ordered by the
//           mbarriers (complete_tx → wait → wgmma; wgmma wait_group → arrive → wait → TMA);
//           no proxy fence is needed. The barrier waits are spin loops, so they sit before a
//           step's first wgmma, never between a wgmma and its wait_group (C7520, below); the
//           releases are predicated arrivals, not branches.
//   grid    (B·H, query tiles), the query tile reversed: every head's last (longest) tile is
//           dispatched before any head's first one.
//
// Fragment layouts (CUTLASS cute/atom/mma_traits_sm90_gmma.hpp: CLayout_64xN =
// ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)), ALayout_64x16 = CLayout_64x16), with
// g = lane/4, t = lane%4 and warp i of the warpgroup:
//   accumulator d[n][0..1] = (row 16i+g,   cols 8n+2t, 8n+2t+1),
//               d[n][2..3] = (row 16i+g+8, same cols)          (the mma.sync C layout per warp)
//   register A (k-step of 16): a0 = (16i+g, 2t..2t+1), a1 = (16i+g+8, 2t..), a2 = (16i+g, 2t+8..),
//               a3 = (16i+g+8, 2t+8..)                          (the mma.sync A layout per warp)
// so the A operand of keys 16kk..16kk+15 is pack(d[2kk][0..1]), pack(d[2kk][2..3]),
// pack(d[2kk+1][0..1]), pack(d[2kk+1][2..3]) of S (pack_p): P never leaves the registers.
//
// Shared primitives (the backward of attention_wgmma_bwd.cuh stores its dSᵀ tile in this
// layout). Shared memory without swizzle (layout type 0, "interleave"): a tile of rows of W
// bf16 is cut into core matrices of 8 rows × 16 bytes, each 128 contiguous bytes (row r%8 at
// 16·(r%8)); core matrix (r/8, c) for 16-byte chunk c sits at (r/8)·(W·16) + c·128
// (tile_offset). In a matrix descriptor (PTX ISA "Matrix Descriptor Format"; CUTLASS
// make_gmma_desc) the leading byte offset (LBO) is the step between core matrices along K and
// the stride byte offset (SBO) the step along M/N, for both majors in the interleave layout
// (CUTLASS: K-major ((8,m),(T,2k)):((1T,SBO),(1,LBO)), MN-major
// ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)), T = 8 bf16 = 16 bytes). Hence
//   K-major (K along a row; the test's desc_k): LBO = 128 (next chunk), SBO = W·16 (next 8 rows)
//   MN-major (K = the rows, desc_mn):          LBO = W·16 (next 8 rows), SBO = 128 (next 8 columns)
// and a k-step of 16 moves the start address by 2 chunks (256 bytes) for a K-major operand, by
// 16 rows (2·W·16 bytes) for an MN-major one.
//
// Ordering: ordinary stores (the backward's dSᵀ tile, the tests' cp.async) write shared memory
// through the generic proxy and wgmma reads it through the async proxy, so every writing
// thread runs fence.proxy.async before the barrier that precedes the wgmma reads. wgmma.fence
// precedes each batch of wgmma whose register operands (accumulators, A) were touched by
// ordinary instructions; a wgmma.wait_group follows each batch within the same branch (a wgmma
// in flight across a branch makes ptxas serialise every wgmma of the kernel, warning C7520),
// and an empty asm on every accumulator and A-operand register (fence_regs, CUTLASS's
// warpgroup_fence_operand) keeps the compiler from touching them between issue and wait.
#include <cuda.h>  // CUtensorMap and its enums (no driver library is linked: see encode_tiled)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

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

using cuda_detail_attn_mma::kLog2e;
using cuda_detail_attn_mma::pack;
using cuda_detail_attn_mma::saddr;

// Warpgroups computing a block's rows (fwd_tma's consumers), their threads, and the query rows
// of a block.
constexpr int kWarpgroups = 2, kThreads = 128 * kWarpgroups;
constexpr int kBM = 64 * kWarpgroups;

// ---------------------------------------------------------------------------------------------
// Interleave (no-swizzle) tiles: layout and matrix descriptors (the backward's dSᵀ tile)

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
// MN-major B operand (V): rows are K (keys), each row W elements of N (hd).
template <int W>
__host__ __device__ constexpr uint64_t desc_mn(uint32_t smem_addr) {
  return make_desc(smem_addr, W * 16, 128);
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
#define RESBM_WG_ACC16(c) RESBM_WG_ACC8(c, 0), RESBM_WG_ACC8(c, 2)
#define RESBM_WG_REGS16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
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

// d (64 × N) = [ACC: d +] A · B with A (64 × 16) and B (16 × N) both from MN-major descriptors
// (imm-trans-a = imm-trans-b = 1): the backward's dQᵀ product. N ∈ {32, 64, 128}.
// SHAPE, REGS, the operand numbers of the two descriptors and the scale-d flag, the constraint.
#define RESBM_WG_SS_TT(SHAPE, REGS, NA, NB, NS, ACCS, CONS, SCALE)                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #NS ", 0;\n"                                   \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32.bf16.bf16 " REGS ", %" #NA ", %" #NB  \
               ", p, 1, 1, 1, 1;\n}\n"                                                             \
               : ACCS(CONS)                                                                        \
               : "l"(da), "l"(db), "r"(SCALE))
template <int N, bool ACC>
__device__ __forceinline__ void wgmma_ss_tt(float (&d)[N / 8][4], uint64_t da, uint64_t db) {
  static_assert(N == 32 || N == 64 || N == 128, "m64n32k16, m64n64k16 or m64n128k16");
#if RESBM_ATTN_WGMMA
  if constexpr (N == 32 && ACC) RESBM_WG_SS_TT("m64n32k16", RESBM_WG_REGS16, 16, 17, 18, RESBM_WG_ACC16, "+f", 1);
  else if constexpr (N == 32) RESBM_WG_SS_TT("m64n32k16", RESBM_WG_REGS16, 16, 17, 18, RESBM_WG_ACC16, "=f", 0);
  else if constexpr (N == 64 && ACC) RESBM_WG_SS_TT("m64n64k16", RESBM_WG_REGS32, 32, 33, 34, RESBM_WG_ACC32, "+f", 1);
  else if constexpr (N == 64) RESBM_WG_SS_TT("m64n64k16", RESBM_WG_REGS32, 32, 33, 34, RESBM_WG_ACC32, "=f", 0);
  else if constexpr (ACC) RESBM_WG_SS_TT("m64n128k16", RESBM_WG_REGS64, 64, 65, 66, RESBM_WG_ACC64, "+f", 1);
  else RESBM_WG_SS_TT("m64n128k16", RESBM_WG_REGS64, 64, 65, 66, RESBM_WG_ACC64, "=f", 0);
#else
  (void)d, (void)da, (void)db;
#endif
}

#undef RESBM_WG_SS_TT
#undef RESBM_WG_ACC8
#undef RESBM_WG_ACC16
#undef RESBM_WG_REGS16
#undef RESBM_WG_ACC32
#undef RESBM_WG_ACC64
#undef RESBM_WG_REGS32
#undef RESBM_WG_REGS64

// ---------------------------------------------------------------------------------------------
// Register operands

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

// =============================================================================================
// fwd_tma: TMA loads into 128-byte-swizzled tiles, a producer warp, mbarrier rings (see the
// top comment)

// ---------------------------------------------------------------------------------------------
// Swizzled tiles and their matrix descriptors

// A tile of R rows × HD bf16 is HD/64 panels of R rows × 64 (128 bytes a row), panel p at
// p·R·128; 8 rows form a 1024-byte swizzle atom (16-byte chunk c of row r stored at chunk
// c ^ (r % 8)), which is what TMA writes with CU_TENSOR_MAP_SWIZZLE_128B and a 64-column box.
constexpr uint32_t kPanelCols = 64, kRowBytes = 128, kAtomBytes = 8 * kRowBytes;

// Layout type 1 (128-byte swizzle) in bits 62-63; base offset 0 because every atom the
// descriptors start in is 1024-byte aligned (the start address moves by 32-byte k-steps
// inside a row, which the hardware swizzles like any other address bit 4-6).
constexpr uint64_t kSwizzle128 = uint64_t(1) << 62;
// K-major (Q as A, K as B): SBO = one atom (the next 8 rows); LBO is not used by swizzled
// K-major layouts (a k-step of 16 elements never leaves a 128-byte row) and set to 1 as
// CUTLASS does.
__host__ __device__ constexpr uint64_t desc_sw_k(uint32_t smem_addr) {
  return make_desc(smem_addr, 16, kAtomBytes) | kSwizzle128;
}
// MN-major B (V, rows = keys = K, 64 hd columns a panel): SBO = one atom (the next 8 keys),
// LBO = the panel stride R·128 (the next 64 hd columns, used by the n128 product at hd 128).
// CUTLASS make_gmma_desc<Major::MN>, B128: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)).
template <int R>
__host__ __device__ constexpr uint64_t desc_sw_mn(uint32_t smem_addr) {
  return make_desc(smem_addr, R * kRowBytes, kAtomBytes) | kSwizzle128;
}
// The descriptor of the same layout kb bytes further (the start address field is the low
// 14 bits of addr >> 4; shared addresses are below 2^18, so the add never carries out).
__device__ __forceinline__ uint64_t desc_add(uint64_t d, uint32_t kb) { return d + uint64_t(kb >> 4); }

// s (64 × BN) = A · Bᵀ over HD, A = 64 rows at a_addr of a swizzled tile of AR rows (a_addr =
// tile + 128·first row, the row a multiple of 8), B = a swizzled tile of BN rows at b_addr.
// K-step kk reads columns 16kk..16kk+15: panel kk/4, 32 bytes a k-step inside its rows.
// Issue only: the caller fences before (wg_fence), commits, waits and pins s after.
template <int HD, int BN, int AR>
__device__ __forceinline__ void qk_issue_sw(float (&s)[BN / 8][4], uint32_t a_addr, uint32_t b_addr) {
  const uint64_t da = desc_sw_k(a_addr), db = desc_sw_k(b_addr);
  wgmma_ss<BN, false>(s, da, db);
#pragma unroll
  for (int kk = 1; kk < HD / 16; ++kk)
    wgmma_ss<BN, true>(s, desc_add(da, (kk / 4) * AR * kRowBytes + (kk % 4) * 32),
                       desc_add(db, (kk / 4) * BN * kRowBytes + (kk % 4) * 32));
}

// o (64 × HD) += P (a[BN/16] register-A k-steps) · V, V a swizzled tile of BN rows at v_addr;
// k-step kk = keys 16kk.. = two atoms further. Issue only.
template <int HD, int BN>
__device__ __forceinline__ void pv_issue_sw(float (&o)[HD / 8][4], const uint32_t (&a)[BN / 16][4], uint32_t v_addr) {
  const uint64_t dv = desc_sw_mn<BN>(v_addr);
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) wgmma_rs<HD>(o, a[kk], desc_add(dv, kk * 2 * kAtomBytes));
}

// ---------------------------------------------------------------------------------------------
// mbarrier, TMA and register-reconfiguration primitives (PTX ISA "mbarrier", "cp.async.bulk.
// tensor", "setmaxnreg"; the forms CUTLASS's cutlass/arch/barrier.h and copy_sm90_tma.hpp use)

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
#if RESBM_ATTN_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#else
  (void)bar, (void)count;
#endif
}
// Makes the initialised barriers visible to the async proxy (TMA's complete_tx) as well.
__device__ __forceinline__ void mbar_fence_init() {
#if RESBM_ATTN_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// The producer's arrival on a full barrier, announcing the bytes its TMA loads will complete.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
#if RESBM_ATTN_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
  (void)bar, (void)bytes;
#endif
}
// Until the phase of the given parity has completed (a barrier starts in phase 0, so parity 1
// passes at once: the producer's first wait on each empty barrier). The spin loop lives inside
// the asm block: its labels are local to the braces.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
#if RESBM_ATTN_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nRESBM_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra RESBM_MBAR_DONE;\nbra RESBM_MBAR_WAIT;\nRESBM_MBAR_DONE:\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#else
  (void)bar, (void)parity;
#endif
}
// One arrival where pred holds: a predicated instruction, not a branch, so it may sit between
// a wgmma's issue and its wait (a branch there makes ptxas serialise every wgmma, C7520).
__device__ __forceinline__ void mbar_arrive_if(uint32_t bar, bool pred) {
#if RESBM_ATTN_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(bar),
      "r"(uint32_t(pred))
      : "memory");
#else
  (void)bar, (void)pred;
#endif
}
// The box at coordinates (c0, c1, c2, c3) of a 4-D tensor map into shared memory at dst,
// completing on bar. `map` is the address of a __grid_constant__ kernel parameter.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2,
                                         int c3) {
#if RESBM_ATTN_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#else
  (void)dst, (void)map, (void)bar, (void)c0, (void)c1, (void)c2, (void)c3;
#endif
}
__device__ __forceinline__ void tma_prefetch(const CUtensorMap* map) {
#if RESBM_ATTN_WGMMA
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#else
  (void)map;
#endif
}
// All rows [row0, row0 + rows) (rows = the map's box) of head (b, h), every 64-column panel,
// into the swizzled tile at dst (rows past T arrive as zeros: TMA fills what lies outside the
// tensor, and T is a dimension of the map).
template <int HD, int R>
__device__ __forceinline__ void tma_tile(uint32_t dst, const CUtensorMap* map, uint32_t bar, int row0, int b, int h) {
#pragma unroll
  for (int pnl = 0; pnl < HD / int(kPanelCols); ++pnl)
    tma_load(dst + pnl * R * kRowBytes, map, bar, pnl * int(kPanelCols), h, row0, b);
}
template <int N>
__device__ __forceinline__ void reg_dealloc() {
#if RESBM_ATTN_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void reg_alloc() {
#if RESBM_ATTN_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ---------------------------------------------------------------------------------------------
// The kernel

// Warpgroup 0 produces (one thread issues every TMA load; the others leave at once),
// warpgroups 1..2 consume, 64 query rows each. Registers: 24 for the producer and
// 240 for the consumers (FA3's split for two consumer warpgroups) add up to the 168 a thread
// that __launch_bounds__(384, 1) grants at launch: 24·128 + 240·256 = 168·384.
constexpr int kTmaThreads = 128 * (kWarpgroups + 1);
constexpr int kProducerRegs = 24, kConsumerRegs = 240;
static_assert(kProducerRegs * 128 + kConsumerRegs * 128 * kWarpgroups <= 65536, "the register file of a SM");
// Empty-barrier arrivals a stage needs: lane 0 of every consumer warp, after its own
// wait_group on the last wgmma that read the stage.
constexpr uint32_t kEmptyArrivals = 4 * kWarpgroups;
constexpr size_t kSmemLimit = 227 * 1024;  // dynamic shared memory a block may opt in to (sm_90)

template <int HD, int BN>
constexpr uint32_t tma_tile_bytes() {
  return uint32_t(BN) * HD * sizeof(bf16);
}
// K/V stages of the ring: as many as fit (a step of the two products takes ~0.3-1 µs, an L2
// load about 1 µs, so the producer should run several tiles ahead), at most 8.
template <int HD, int BN>
constexpr int tma_stages() {
  const size_t q = size_t(kBM) * HD * sizeof(bf16), room = kSmemLimit - q - 2048;
  const size_t n = room / (2 * size_t(tma_tile_bytes<HD, BN>()));
  return int(n < 8 ? n : 8);
}
// Q, K[stages], V[stages], then the barriers (full Q, full K[stages], full V[stages], empty
// K[stages], empty V[stages]), plus 1024 bytes to align the base to a swizzle atom.
template <int HD, int BN>
constexpr size_t tma_smem() {
  return 1024 + size_t(kBM) * HD * sizeof(bf16) + 2 * size_t(tma_stages<HD, BN>()) * tma_tile_bytes<HD, BN>() +
         8 * (1 + 4 * size_t(tma_stages<HD, BN>()));
}

// Grid (B·H, query tiles): blockIdx.x the head, query tile gridDim.y − 1 − blockIdx.y, so the
// blocks (dispatched x fastest) start with every head's last, longest tile (longest
// processing time first) and end with the short first tiles.
template <int HD, int BN>
__global__ void __launch_bounds__(kTmaThreads, 1)
    fwd_tma(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
            const __grid_constant__ CUtensorMap tv, bf16* __restrict__ out, float* __restrict__ lse, int T, int H) {
  static_assert(HD == 64 || HD == 128, "hd 64 or 128");
  static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128");
#if RESBM_ATTN_WGMMA
  constexpr int S = tma_stages<HD, BN>();
  static_assert(S >= 2, "a ring of at least 2 stages");
  static_assert(tma_smem<HD, BN>() <= kSmemLimit, "shared memory");
  constexpr uint32_t kQBytes = uint32_t(kBM) * HD * sizeof(bf16), kTile = tma_tile_bytes<HD, BN>();
  extern __shared__ __align__(1024) unsigned char attn_tma_smem[];
  const uint32_t q_s = (saddr(attn_tma_smem) + kAtomBytes - 1) & ~(kAtomBytes - 1);
  const uint32_t k_s = q_s + kQBytes, v_s = k_s + S * kTile, bars = v_s + S * kTile;
  const uint32_t full_q = bars;
  auto full_k = [&](int s) { return bars + 8 * (1 + s); };
  auto full_v = [&](int s) { return bars + 8 * (1 + S + s); };
  auto empty_k = [&](int s) { return bars + 8 * (1 + 2 * S + s); };
  auto empty_v = [&](int s) { return bars + 8 * (1 + 3 * S + s); };

  const int bh = blockIdx.x, b = bh / H, h = bh % H;
  const int q0 = int(gridDim.y - 1 - blockIdx.y) * kBM;
  const int ntiles = (min(T, q0 + kBM) + BN - 1) / BN;  // key tiles of the block
  const int wg = int(threadIdx.x) / 128;

  if (threadIdx.x == 0) {
    tma_prefetch(&tq);
    tma_prefetch(&tk);
    tma_prefetch(&tv);
    mbar_init(full_q, 1);
    for (int s = 0; s < S; ++s) {
      mbar_init(full_k(s), 1);
      mbar_init(full_v(s), 1);
      mbar_init(empty_k(s), kEmptyArrivals);
      mbar_init(empty_v(s), kEmptyArrivals);
    }
    mbar_fence_init();
  }
  __syncthreads();  // the last block-wide barrier: the producer's idle threads leave below

  if (wg == 0) {
    reg_dealloc<kProducerRegs>();
    if (threadIdx.x == 0) {
      mbar_expect_tx(full_q, kQBytes);
      tma_tile<HD, kBM>(q_s, &tq, full_q, q0, b, h);
      // Tile j goes to stage j % S once every consumer warp has released tile j − S there
      // (use u = j / S of the stage waits for phase u − 1 of its empty barrier: parity
      // (u & 1) ^ 1, which passes at once for u = 0).
      int s = 0;
      uint32_t ph = 0;
      for (int j = 0; j < ntiles; ++j) {
        mbar_wait(empty_k(s), ph ^ 1u);
        mbar_expect_tx(full_k(s), kTile);
        tma_tile<HD, BN>(k_s + s * kTile, &tk, full_k(s), j * BN, b, h);
        mbar_wait(empty_v(s), ph ^ 1u);
        mbar_expect_tx(full_v(s), kTile);
        tma_tile<HD, BN>(v_s + s * kTile, &tv, full_v(s), j * BN, b, h);
        if (++s == S) s = 0, ph ^= 1u;
      }
    }
  } else {
    reg_alloc<kConsumerRegs>();
    const int cw = wg - 1, warp = (int(threadIdx.x) / 32) % 4;
    const bool lane0 = threadIdx.x % 32 == 0;
    const int64_t C = int64_t(H) * HD;
    const int wg0 = q0 + 64 * cw, w0 = wg0 + 16 * warp;  // first row of the warpgroup, of the warp
    const float sl2 = kLog2e / sqrtf(float(HD));
    // Tiles this warpgroup computes with (warpgroup-uniform): those with a key at or before its
    // last row, none if it has no row before T.
    const int nw = wg0 < T ? min(ntiles, (wg0 + 63) / BN + 1) : 0;
    const uint32_t q_addr = q_s + 64 * cw * kRowBytes;

    float o[HD / 8][4];
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[d][e] = 0.0f;
    float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
    float s[BN / 8][4];
    uint32_t p[BN / 16][4];  // P of the previous tile, packed: the A operand of its P·V

    // Stage and phase parity of the next K tile to read, and of the next V tile.
    int ks = 0, vs = 0;
    uint32_t kph = 0, vph = 0;
    if (nw > 0) {
      // QK(0) alone (o is still 0: no rescaling)
      mbar_wait(full_q, 0);
      mbar_wait(full_k(0), 0);
      wg_fence();
      qk_issue_sw<HD, BN, kBM>(s, q_addr, k_s);
      wg_commit();
      wg_wait<0>();
      fence_regs(s);
      mbar_arrive_if(empty_k(0), lane0);
      ks = 1;  // S >= 2: still phase 0
      cuda_detail_attn_mma::softmax_p<BN / 8, true>(s, mx, sum, 0, w0, sl2);
      pack_p<BN>(p, s);
      // Step j: QK(j) and PV(j−1) in flight together, the softmax of tile j under PV(j−1) (the
      // top comment). Both tiles are waited for before the first issue: the waits are spin loops
      // (branches), which must not separate a wgmma from its wait_group.
      for (int j = 1; j < nw; ++j) {
        mbar_wait(full_k(ks), kph);
        mbar_wait(full_v(vs), vph);
        fence_regs(o);
        fence_regs(p);
        wg_fence();
        qk_issue_sw<HD, BN, kBM>(s, q_addr, k_s + ks * kTile);
        wg_commit();
        pv_issue_sw<HD, BN>(o, p, v_s + vs * kTile);
        wg_commit();
        wg_wait<1>();  // S(j) done; P(j-1)·V(j-1) may still run
        fence_regs(s);
        mbar_arrive_if(empty_k(ks), lane0);  // K(j) read for the last time
        const float2 c = cuda_detail_attn_mma::softmax_p<BN / 8, true>(s, mx, sum, j * BN, w0, sl2);
        wg_wait<0>();
        fence_regs(o);
        fence_regs(p);
        fence_regs(s);
        mbar_arrive_if(empty_v(vs), lane0);  // V(j-1) too
        cuda_detail_attn_mma::scale_rows(o, c);
        pack_p<BN>(p, s);
        if (++ks == S) ks = 0, kph ^= 1u;
        if (++vs == S) vs = 0, vph ^= 1u;
      }
      // PV(nw−1) alone
      mbar_wait(full_v(vs), vph);
      fence_regs(o);
      fence_regs(p);
      wg_fence();
      pv_issue_sw<HD, BN>(o, p, v_s + vs * kTile);
      wg_commit();
      wg_wait<0>();
      fence_regs(o);
      mbar_arrive_if(empty_v(vs), lane0);
      if (++vs == S) vs = 0, vph ^= 1u;
    }
    // Tiles past this warpgroup's last row (at most one, or all where it has no row before
    // T) are released unread, after they landed: the producer counts every consumer warp's
    // arrival before it reuses a stage, and an arrival before the load would count towards
    // the stage's previous use.
    for (int j = nw; j < ntiles; ++j) {
      mbar_wait(full_k(ks), kph);
      mbar_arrive_if(empty_k(ks), lane0);
      mbar_wait(full_v(vs), vph);
      mbar_arrive_if(empty_v(vs), lane0);
      if (++ks == S) ks = 0, kph ^= 1u;
      if (++vs == S) vs = 0, vph ^= 1u;
    }
    cuda_detail_attn_mma::finish_rows<HD>(out + int64_t(b) * T * C + int64_t(h) * HD, lse + int64_t(bh) * T, C, w0,
                                          T, o, mx, sum);
  }
#elif defined(__CUDA_ARCH__)
  (void)tq, (void)tk, (void)tv, (void)out, (void)lse, (void)T, (void)H;
  __trap();  // built for a target without wgmma
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side

// cuTensorMapEncodeTiled from the driver the runtime already loaded (no -lcuda), once.
inline PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    RESBM_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &found));
    RESBM_CHECK(found == cudaDriverEntryPointSuccess && f != nullptr, "cuTensorMapEncodeTiled is not in the driver",
                "install an NVIDIA driver of CUDA 12.0 or newer, or set ops::cuda_attention_wgmma = false");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// The tensor map of x ([B, T, H, HD] bf16, row stride H·HD) as the 4-D tensor (HD, H, T, B)
// with a box of (64, 1, rows, 1): one 64-column panel of `rows` rows of one head, written
// 128-byte swizzled. T is a dimension of its own, so a box that reaches past T reads zeros
// rather than the next sequence's rows.
template <int HD>
CUtensorMap tensor_map(const bf16* x, int64_t B, int64_t T, int64_t H, int rows) {
  CUtensorMap m;
  const cuuint64_t dim[4] = {cuuint64_t(HD), cuuint64_t(H), cuuint64_t(T), cuuint64_t(B)};
  const cuuint64_t stride[3] = {cuuint64_t(HD) * sizeof(bf16), cuuint64_t(H * HD) * sizeof(bf16),
                                cuuint64_t(T * H * HD) * sizeof(bf16)};
  const cuuint32_t box[4] = {kPanelCols, 1, cuuint32_t(rows), 1}, step[4] = {1, 1, 1, 1};
  const CUresult r = encode_tiled()(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<bf16*>(x), dim, stride, box,
                                    step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  RESBM_CHECK(r == CUDA_SUCCESS, cat("cuTensorMapEncodeTiled failed with CUresult ", int(r), " (B ", B, ", T ", T,
                                     ", H ", H, ", hd ", HD, ", box rows ", rows, ")"),
              "pass 16-byte aligned q, k, v with at most 2^32 rows");
  return m;
}

// fwd_tma with BN-key tiles (64 or 128). The three tensor maps are encoded on the host each
// launch (host work only, about a microsecond each) and travel as kernel parameters.
template <int HD, int BN>
void launch_fwd_tma_bn(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                       int64_t B, int64_t T, int64_t H) {
  if (B * T * H == 0) return;
  const int64_t tiles = (T + kBM - 1) / kBM;
  RESBM_CHECK(tiles <= 65535, cat("attention forward: T ", T, " is ", tiles, " query tiles of ", kBM, ", above 65535"),
              cat("use sequences of at most ", 65535 * kBM, " tokens"));
  RESBM_CHECK(B * H <= 0x7fffffff, cat("attention forward: B·H ", B * H, " is above 2^31 - 1"), "split the batch");
  cuda_detail_attn_mma::allow_smem_once<fwd_tma<HD, BN>>(tma_smem<HD, BN>());
  const CUtensorMap tq = tensor_map<HD>(q, B, T, H, kBM), tk = tensor_map<HD>(k, B, T, H, BN),
                    tv = tensor_map<HD>(v, B, T, H, BN);
  const dim3 grid(unsigned(B * H), unsigned(tiles));
  fwd_tma<HD, BN><<<grid, kTmaThreads, tma_smem<HD, BN>(), ctx.stream>>>(tq, tk, tv, out, lse, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

// Same contract as cuda_detail_attn_mma::launch_fwd; hd ∈ {64, 128}, an sm_90a device and
// image. 128-key tiles (FA3's choice for causal hd 64 and 128; both are in the test's timing).
template <int HD>
void launch_fwd_tma(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                    int64_t T, int64_t H) {
  launch_fwd_tma_bn<HD, 128>(ctx, out, lse, q, k, v, B, T, H);
}

}  // namespace resbm::ops::cuda_detail_attn_wgmma
