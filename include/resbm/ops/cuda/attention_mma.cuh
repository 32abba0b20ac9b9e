#pragma once
// Tensor-core kernels of the causal flash attention (attention.cuh owns the API, the
// checks and the D = rowsum(dout ⊙ out) pass): mma.sync.m16n8k16 bf16 → fp32 through
// inline PTX, operands staged in shared memory by cp.async (double-buffered) and read with
// ldmatrix. Every warp owns 16 rows of the block's tile (32 in the forward: two row tiles
// that share each K/V fragment), so softmax statistics stay in the registers of the quad
// that holds a row.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), g = lane/4, t = lane%4:
//   A 16×16: {a0,a1} = (g, 2t..2t+1), {a2,a3} = (g+8, 2t..), {a4,a5} = (g, 2t+8..),
//            {a6,a7} = (g+8, 2t+8..);  B 16×8: {b0,b1} = (k 2t..2t+1, n g), {b2,b3} = k+8;
//   C 16×8:  {c0,c1} = (g, 2t..2t+1), {c2,c3} = (g+8, 2t..).
// So the C fragments of two adjacent 8-column tiles are, packed to bf16, exactly the A
// fragment of a 16-wide k-step: P (or dS) goes from one mma to the next without shared
// memory.
//
// Shared tiles are row-major with a row pitch of HD + 8 elements: 16 bytes of padding move
// consecutive rows 4 banks apart, so ldmatrix's eight 16-byte row reads hit distinct banks.
//
// Backward, two paths (attention.cuh picks one with cuda_attention_deterministic):
//  - single pass (FlashAttention-2, the default): one kernel per key tile walks the query
//    tiles once, computes Sᵀ, dPᵀ and dSᵀ, keeps dk and dv in registers and adds each
//    query tile's dq = dS·k into an fp32 buffer with atomics (dSᵀ goes through shared
//    memory and is read back transposed by ldmatrix.trans as the A operand); a last pass
//    scales it to bf16. 5 matrix products per tile pair, but the order of the fp32 adds
//    into dq varies from run to run (dk, dv are still deterministic).
//  - deterministic: dq is accumulated per query tile over key tiles, dk and dv per key
//    tile over query tiles, each in a fixed order, no atomics; S and dP are computed twice
//    (7 products).
#include <cstdint>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops::cuda_detail_attn_mma {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // query rows per block (dq; forward: kFwdTiles × as many) or key rows (dkdv)
constexpr int kBN = 64;           // key rows per tile (forward, dq)
// Row tiles of 16 per warp in the forward: query tiles of 128 rows, so every K/V fragment
// read from shared memory feeds two mma. Measured on the H200 against 64-row tiles
// (B16 T1024): 0.164 vs 0.168 ms at hd 64, 0.340 vs 0.379 ms at hd 128 (H16), despite
// 84 bytes of spills there.
constexpr int kFwdTiles = 2;
constexpr float kLog2e = 1.4426950408889634f;

template <int HD>
constexpr int pitch() { return HD + 8; }
// Query rows per tile of the dk/dv kernel: 32 at hd 128 keeps its accumulators (dk and dv,
// 16×128 fp32 each per warp) plus Sᵀ and dPᵀ under 255 registers.
template <int HD>
constexpr int dkdv_bq() { return HD == 128 ? 32 : 64; }
// Row pitch of the single pass's dSᵀ tile ([kBM keys][BQ queries]): the same 16 bytes of
// padding as pitch<HD>(), so its ldmatrix.trans reads and the quads' 4-byte stores hit
// distinct banks.
template <int HD>
constexpr int ds_pitch() { return dkdv_bq<HD>() + 8; }

__device__ __forceinline__ uint32_t saddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr(smem)), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// d += a · b
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two adjacent 8-column tiles: d0 += a · (b0, b1), d1 += a · (b2, b3) (one ldmatrix.x4's B).
__device__ __forceinline__ void mma2(float (&d0)[4], float (&d1)[4], const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  mma(d0, a, b[0], b[1]);
  mma(d1, a, b[2], b[3]);
}
__device__ __forceinline__ uint32_t pack(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Lane addresses for ldmatrix.x4 over a row-major shared tile (pitch P elements):
//  a_addr: the A fragment of rows [r0, r0+16) × cols [c0, c0+16) (also the B fragments of
//          two 8-column tiles when read with .trans from a [k][n] tile: rows are k).
//  b_addr: the B fragments (b0b1, b2b3) of two 8-row tiles [r0, r0+8), [r0+8, r0+16) over
//          cols [c0, c0+16) of an [n][k] tile (non-transposed read).
template <int P>
__device__ __forceinline__ uint32_t a_addr(const bf16* tile, int r0, int c0) {
  const int l = threadIdx.x % 32;
  return saddr(tile + (r0 + (l % 8) + ((l / 8) % 2) * 8) * P + c0 + (l / 16) * 8);
}
template <int P>
__device__ __forceinline__ uint32_t b_addr(const bf16* tile, int r0, int c0) {
  const int l = threadIdx.x % 32;
  return saddr(tile + (r0 + (l % 8) + (l / 16) * 8) * P + c0 + ((l / 8) % 2) * 8);
}

// Rows [r0, r0 + ROWS) of one head ([T, ·], row stride ld) into a shared tile; rows past T
// are zero-filled (the source address is clamped so it stays valid).
template <int ROWS, int HD>
__device__ __forceinline__ void load_async(bf16* tile, const bf16* src, int r0, int T, int64_t ld) {
  constexpr int V = HD / 8;
  for (int idx = threadIdx.x; idx < ROWS * V; idx += kThreads) {
    const int r = idx / V, c = idx % V;
    const int row = r0 + r;
    const bf16* g = src + int64_t(row < T ? row : T - 1) * ld + c * 8;
    cp_async16(tile + r * pitch<HD>() + c * 8, g, row < T ? 16 : 0);
  }
}

// S (16 × 64) = A-rows of `as` (16 rows from ar0) · B-rows of `bs` (64 rows)ᵀ over HD.
template <int HD>
__device__ __forceinline__ void qk(float (&s)[8][4], const bf16* as, int ar0, const bf16* bs) {
  constexpr int P = pitch<HD>();
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, a_addr<P>(as, ar0, kk * 16));
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
      uint32_t b[4];
      ldsm_x4(b, b_addr<P>(bs, n * 8, kk * 16));
      mma(s[n], a, b[0], b[1]);
      mma(s[n + 1], a, b[2], b[3]);
    }
  }
}
// Same with a 16 × NQ result over NQ/8 column tiles (the dk/dv kernel's query tile).
template <int HD, int NT>
__device__ __forceinline__ void qk_n(float (&s)[NT][4], const bf16* as, int ar0, const bf16* bs) {
  constexpr int P = pitch<HD>();
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    uint32_t a[4];
    ldsm_x4(a, a_addr<P>(as, ar0, kk * 16));
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      uint32_t b[4];
      ldsm_x4(b, b_addr<P>(bs, n * 8, kk * 16));
      mma(s[n], a, b[0], b[1]);
      mma(s[n + 1], a, b[2], b[3]);
    }
  }
}
// acc (16 × HD) += P (16 × 8·NT, C fragments) · vs (8·NT rows × HD, read transposed).
template <int HD, int NT>
__device__ __forceinline__ void pv(float (&acc)[HD / 8][4], const float (&p)[NT][4], const bf16* vs) {
  constexpr int P = pitch<HD>();
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    const uint32_t a[4] = {pack(p[2 * kk][0], p[2 * kk][1]), pack(p[2 * kk][2], p[2 * kk][3]),
                           pack(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int d = 0; d < HD / 8; d += 2) {
      uint32_t b[4];
      ldsm_x4_t(b, a_addr<P>(vs, kk * 16, d * 8));
      mma(acc[d], a, b[0], b[1]);
      mma(acc[d + 1], a, b[2], b[3]);
    }
  }
}

// Stores 16 rows × HD of fp32 C fragments (times `scale`) as bf16 rows [row0, row0 + 16).
// With a RoPE table (cs, sn: [positions, HD/2], position = row) the rows are first rotated
// back (rope_backward's inverse rotation), which turns the gradient of a rotated q or k
// into that of the projection's output: the pair (i, i + HD/2) of a row sits in fragments
// d and d + HD/16 of the same thread, so the rotation needs no shuffle and saves RoPE's
// own pass over dq and dk.
template <int HD>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t ld, int row0, int T, const float (&acc)[HD / 8][4],
                                           float scale0, float scale1, const float* cs = nullptr,
                                           const float* sn = nullptr) {
  const int l = threadIdx.x % 32, g = l / 4, t = l % 4;
  float o[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[d][e] = acc[d][e] * (e < 2 ? scale0 : scale1);
  if (cs) {
    constexpr int kHalf = HD / 2, kFrags = HD / 16;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + g + 8 * h;
      if (row >= T) continue;
#pragma unroll
      for (int d = 0; d < kFrags; ++d) {
        const int j = d * 8 + 2 * t;
        const float2 c = *reinterpret_cast<const float2*>(cs + int64_t(row) * kHalf + j);
        const float2 s = *reinterpret_cast<const float2*>(sn + int64_t(row) * kHalf + j);
        const float a0 = o[d][2 * h], a1 = o[d][2 * h + 1], b0 = o[d + kFrags][2 * h], b1 = o[d + kFrags][2 * h + 1];
        o[d][2 * h] = a0 * c.x + b0 * s.x;
        o[d][2 * h + 1] = a1 * c.y + b1 * s.y;
        o[d + kFrags][2 * h] = b0 * c.x - a0 * s.x;
        o[d + kFrags][2 * h + 1] = b1 * c.y - a1 * s.y;
      }
    }
  }
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) {
    const int col = d * 8 + 2 * t;
    if (row0 + g < T) *reinterpret_cast<uint32_t*>(dst + int64_t(row0 + g) * ld + col) = pack(o[d][0], o[d][1]);
    if (row0 + g + 8 < T)
      *reinterpret_cast<uint32_t*>(dst + int64_t(row0 + g + 8) * ld + col) = pack(o[d][2], o[d][3]);
  }
}

__device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));  // one red.global.add.v2.f32
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}
// Adds 16 rows × 8·NT columns of fp32 C fragments into dst rows [row0, row0 + 16), columns
// from col0; rows past T are skipped. (Pairing lanes by a shuffle into 4-float atomics, half
// the atomics, measured 1% slower on the H200.)
template <int NT>
__device__ __forceinline__ void add_rows(float* dst, int64_t ld, int row0, int col0, int T, const float (&acc)[NT][4]) {
  const int l = threadIdx.x % 32, g = l / 4, t = l % 4;
#pragma unroll
  for (int d = 0; d < NT; ++d) {
    const int col = col0 + d * 8 + 2 * t;
    if (row0 + g < T) atomic_add2(dst + int64_t(row0 + g) * ld + col, acc[d][0], acc[d][1]);
    if (row0 + g + 8 < T) atomic_add2(dst + int64_t(row0 + g + 8) * ld + col, acc[d][2], acc[d][3]);
  }
}

// Blocks run the longest (last) query tiles first, so the causal triangle's uneven work
// does not leave a tail of long blocks at the end of the grid.
__device__ __forceinline__ int tile_index() { return int(gridDim.x - 1 - blockIdx.x); }

// The forward's MT variant of qk / pv: a warp owns MT row tiles of 16 (rows ar0 + 16·m),
// and every B fragment read from shared memory feeds MT mma instead of one.
template <int HD, int MT>
__device__ __forceinline__ void qk_m(float (&s)[MT][8][4], const bf16* as, int ar0, const bf16* bs) {
  constexpr int P = pitch<HD>();
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[m][n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) ldsm_x4(a[m], a_addr<P>(as, ar0 + 16 * m, kk * 16));
#pragma unroll
    for (int n = 0; n < 8; n += 2) {
      uint32_t b[4];
      ldsm_x4(b, b_addr<P>(bs, n * 8, kk * 16));
#pragma unroll
      for (int m = 0; m < MT; ++m) mma2(s[m][n], s[m][n + 1], a[m], b);
    }
  }
}
template <int HD, int MT>
__device__ __forceinline__ void pv_m(float (&acc)[MT][HD / 8][4], const float (&p)[MT][8][4], const bf16* vs) {
  constexpr int P = pitch<HD>();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      a[m][0] = pack(p[m][2 * kk][0], p[m][2 * kk][1]);
      a[m][1] = pack(p[m][2 * kk][2], p[m][2 * kk][3]);
      a[m][2] = pack(p[m][2 * kk + 1][0], p[m][2 * kk + 1][1]);
      a[m][3] = pack(p[m][2 * kk + 1][2], p[m][2 * kk + 1][3]);
    }
#pragma unroll
    for (int d = 0; d < HD / 8; d += 2) {
      uint32_t b[4];
      ldsm_x4_t(b, a_addr<P>(vs, kk * 16, d * 8));
#pragma unroll
      for (int m = 0; m < MT; ++m) mma2(acc[m][d], acc[m][d + 1], a[m], b);
    }
  }
}

// One key tile of the online softmax (shared with the wgmma forward, attention_wgmma.cuh) for
// the 16 rows from r0 (thread: rows r0+g, r0+g+8) over NT tiles of 8 keys from k0: s (raw
// scores) becomes P relative to the new running max (log2 domain, scale sl2 = log2e/sqrt(hd)),
// the row sums are rescaled, and the factors (c0, c1) that the rows of the output accumulator
// must be scaled by are returned (the caller applies them when it owns the accumulator: the
// pipelined wgmma forward has a P·V product in flight on it at this point).
//   FOLD = false: every score is scaled first (x = s·sl2), P = exp2(x − m);
//   FOLD = true:  the max is taken over the raw scores and scaled once (the same value, sl2 > 0),
//                 P = exp2(fma(s, sl2, −m)): one instruction less a score, rounded differently.
template <int NT, bool FOLD>
__device__ __forceinline__ float2 softmax_p(float (&s)[NT][4], float (&mx)[2], float (&sum)[2], int k0, int r0,
                                            float sl2) {
  const int l = threadIdx.x % 32, g = l / 4, t = l % 4;
  const bool diag = k0 + NT * 8 - 1 > r0;  // some key of the tile is after some row
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = FOLD ? s[n][e] : s[n][e] * sl2;
      const int key = k0 + n * 8 + 2 * t + (e & 1), row = r0 + g + (e >> 1) * 8;
      if (diag && key > row) x = -INFINITY;
      s[n][e] = x;
      if (e < 2) mx0 = fmaxf(mx0, x);
      else mx1 = fmaxf(mx1, x);
    }
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
  }
  if constexpr (FOLD) {
    mx0 *= sl2;
    mx1 *= sl2;
  }
  const float n0 = fmaxf(mx[0], mx0), n1 = fmaxf(mx[1], mx1);
  // A row with no key yet (rows past T, or before k0) keeps -inf: use 0 so exp2 gives 0, not NaN.
  const float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;
  const float c0 = exp2f(mx[0] - u0), c1 = exp2f(mx[1] - u1);
  sum[0] *= c0;
  sum[1] *= c1;
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    if constexpr (FOLD) {
      s[n][0] = exp2f(fmaf(s[n][0], sl2, -u0));
      s[n][1] = exp2f(fmaf(s[n][1], sl2, -u0));
      s[n][2] = exp2f(fmaf(s[n][2], sl2, -u1));
      s[n][3] = exp2f(fmaf(s[n][3], sl2, -u1));
    } else {
      s[n][0] = exp2f(s[n][0] - u0);
      s[n][1] = exp2f(s[n][1] - u0);
      s[n][2] = exp2f(s[n][2] - u1);
      s[n][3] = exp2f(s[n][3] - u1);
    }
    sum[0] += s[n][0] + s[n][1];
    sum[1] += s[n][2] + s[n][3];
  }
  mx[0] = n0;
  mx[1] = n1;
  return make_float2(c0, c1);
}

// The thread's two rows of acc (16 × 8·ND, C fragments) scaled by c.x (row g) and c.y (g + 8).
template <int ND>
__device__ __forceinline__ void scale_rows(float (&acc)[ND][4], float2 c) {
#pragma unroll
  for (int d = 0; d < ND; ++d) {
    acc[d][0] *= c.x;
    acc[d][1] *= c.x;
    acc[d][2] *= c.y;
    acc[d][3] *= c.y;
  }
}

// softmax_p, then the rows of acc (16 × HD, C fragments) scaled by the returned factors.
template <int HD, int NT = kBN / 8, bool FOLD = false>
__device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&acc)[HD / 8][4], float (&mx)[2], float (&sum)[2],
                                             int k0, int r0, float sl2) {
  scale_rows(acc, softmax_p<NT, FOLD>(s, mx, sum, k0, r0, sl2));
}

// The forwards' epilogue for the 16 rows from r0: row sums reduced over the quad, out (rows
// scaled by 1/l, row stride C) and lse (natural log, lse[row]) stored; rows past T (the only
// ones that can have l = 0) are not.
template <int HD>
__device__ __forceinline__ void finish_rows(bf16* out, float* lse, int64_t C, int r0, int T,
                                            const float (&acc)[HD / 8][4], const float (&mx)[2],
                                            const float (&sum)[2]) {
  const int l = int(threadIdx.x) % 32, g = l / 4, t = l % 4;
  float l0 = sum[0], l1 = sum[1];
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o);
  }
  store_rows<HD>(out, C, r0, T, acc, 1.0f / l0, 1.0f / l1);
  if (t == 0) {
    if (r0 + g < T) lse[r0 + g] = (mx[0] + log2f(l0)) / kLog2e;
    if (r0 + g + 8 < T) lse[r0 + g + 8] = (mx[1] + log2f(l1)) / kLog2e;
  }
}

// Query tiles of 64·MT rows: warp w owns rows w·16·MT + [0, 16·MT) of the tile.
template <int HD, int MT>
__global__ void __launch_bounds__(kThreads)
    fwd(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q, const bf16* __restrict__ k,
        const bf16* __restrict__ v, int T, int H) {
  constexpr int P = pitch<HD>(), BM = kBM * MT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + BM * P;  // [2][kBN][P]
  bf16* Vs = Ks + 2 * kBN * P;
  const int warp = threadIdx.x / 32;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = tile_index() * BM, w0 = q0 + warp * 16 * MT;
  const float sl2 = kLog2e / sqrtf(float(HD));

  const int kend = min(T, q0 + BM);
  const int ntiles = (kend + kBN - 1) / kBN;
  load_async<BM, HD>(Qs, q + base, q0, T, C);
  load_async<kBN, HD>(Ks, k + base, 0, T, C);
  load_async<kBN, HD>(Vs, v + base, 0, T, C);
  cp_commit();

  float acc[MT][HD / 8][4];
  float mx[MT][2], sum[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int d = 0; d < HD / 8; ++d)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[m][d][e] = 0.0f;
    mx[m][0] = mx[m][1] = -INFINITY;
    sum[m][0] = sum[m][1] = 0.0f;
  }

  for (int j = 0; j < ntiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < ntiles) {
      load_async<kBN, HD>(Ks + (buf ^ 1) * kBN * P, k + base, (j + 1) * kBN, T, C);
      load_async<kBN, HD>(Vs + (buf ^ 1) * kBN * P, v + base, (j + 1) * kBN, T, C);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int k0 = j * kBN;
    if (k0 <= w0 + 16 * MT - 1) {  // otherwise every key of the tile is after every row of the warp
      float s[MT][8][4];
      qk_m<HD, MT>(s, Qs, warp * 16 * MT, Ks + buf * kBN * P);
#pragma unroll
      for (int m = 0; m < MT; ++m) softmax_step<HD>(s[m], acc[m], mx[m], sum[m], k0, w0 + 16 * m, sl2);
      pv_m<HD, MT>(acc, s, Vs + buf * kBN * P);
    }
    __syncthreads();  // the buffer is refilled two iterations later
  }
#pragma unroll
  for (int m = 0; m < MT; ++m)
    finish_rows<HD>(out + base, lse + int64_t(bh) * T, C, w0 + 16 * m, T, acc[m], mx[m], sum[m]);
}

// dq = scale · Σ_j dS_ij k_j, dS = P ⊙ (dP − D), dP = dout · vᵀ; per query tile.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ dout, const float* __restrict__ lse,
           const float* __restrict__ D, const bf16* __restrict__ q, const bf16* __restrict__ k,
           const bf16* __restrict__ v, int T, int H, const float* __restrict__ rcos, const float* __restrict__ rsin,
           int64_t G) {
  constexpr int P = pitch<HD>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Gs = Qs + kBM * P;
  bf16* Ks = Gs + kBM * P;  // [2][kBN][P]
  bf16* Vs = Ks + 2 * kBN * P;
  const int warp = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = tile_index() * kBM, w0 = q0 + warp * 16;
  const float scale = 1.0f / sqrtf(float(HD)), sl2 = scale * kLog2e;

  const int kend = min(T, q0 + kBM);
  const int ntiles = (kend + kBN - 1) / kBN;
  load_async<kBM, HD>(Qs, q + base, q0, T, C);
  load_async<kBM, HD>(Gs, dout + base, q0, T, C);
  load_async<kBN, HD>(Ks, k + base, 0, T, C);
  load_async<kBN, HD>(Vs, v + base, 0, T, C);
  cp_commit();

  const int r0 = w0 + g, r1 = w0 + g + 8;
  const float L0 = r0 < T ? lse[int64_t(bh) * T + r0] * kLog2e : 0.0f;
  const float L1 = r1 < T ? lse[int64_t(bh) * T + r1] * kLog2e : 0.0f;
  const float D0 = r0 < T ? D[int64_t(bh) * T + r0] : 0.0f;
  const float D1 = r1 < T ? D[int64_t(bh) * T + r1] : 0.0f;
  float acc[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;

  for (int j = 0; j < ntiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < ntiles) {
      load_async<kBN, HD>(Ks + (buf ^ 1) * kBN * P, k + base, (j + 1) * kBN, T, C);
      load_async<kBN, HD>(Vs + (buf ^ 1) * kBN * P, v + base, (j + 1) * kBN, T, C);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const int k0 = j * kBN;
    if (k0 <= w0 + 15) {
      const bf16* Kb = Ks + buf * kBN * P;
      float s[8][4], dp[8][4];
      qk<HD>(s, Qs, warp * 16, Kb);
      qk<HD>(dp, Gs, warp * 16, Vs + buf * kBN * P);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + n * 8 + 2 * t + (e & 1), row = (e >> 1) ? r1 : r0;
          const float p = key <= row && row < T ? exp2f(s[n][e] * sl2 - ((e >> 1) ? L1 : L0)) : 0.0f;
          s[n][e] = p * (dp[n][e] - ((e >> 1) ? D1 : D0));
        }
      pv<HD, 8>(acc, s, Kb);
    }
    __syncthreads();
  }
  store_rows<HD>(dq + int64_t(b) * T * G + int64_t(h) * HD, G, w0, T, acc, scale, scale, rcos, rsin);
}

// dv_j = Σ_i P_ij dout_i,  dk_j = scale · Σ_i dS_ij q_i over queries i >= j; per key tile,
// computed transposed (keys as rows): Sᵀ = k·qᵀ, dPᵀ = v·doutᵀ.
// DQ (the single pass): also dq_acc[i] += Σ_j dS_ij k_j (unscaled, fp32 atomics) for every
// query tile. dSᵀ goes to shared memory; for that product the warps split the query tile
// instead of the keys (warp w: query rows (w % (BQ/16))·16 + [0, 16), head dimensions
// (w / (BQ/16))·DC + [0, DC)), each summing over all kBM keys of the block, so every dq
// element gets one atomic add per key tile. (Blocks of 8 warps, 128 keys, half the atomics
// and Q/dout loads per key: 17% slower at hd 64, 5% at hd 128, measured on the H200.)
template <int HD, bool DQ>
__global__ void __launch_bounds__(kThreads)
    bwd_dkdv(float* __restrict__ dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
             const float* __restrict__ lse, const float* __restrict__ D, const bf16* __restrict__ q,
             const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H, const float* __restrict__ rcos,
             const float* __restrict__ rsin, int64_t G) {
  constexpr int P = pitch<HD>(), BQ = dkdv_bq<HD>(), NT = BQ / 8, PS = ds_pitch<HD>();
  constexpr int RG = BQ / 16, DC = HD * RG / kWarps;  // dq product: row groups, columns per warp
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kBM * P;
  bf16* Qs = Vs + kBM * P;  // [2][BQ][P]
  bf16* Gs = Qs + 2 * BQ * P;
  float* Ls = reinterpret_cast<float*>(Gs + 2 * BQ * P);  // [2][BQ]
  float* Ds = Ls + 2 * BQ;
  bf16* Ss = reinterpret_cast<bf16*>(Ds + 2 * BQ);  // DQ: dSᵀ [kBM][PS]
  const int warp = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  // Unlike the query-tile kernels, the first key tiles carry the most work (every later
  // query attends to them): plain order already runs them first.
  const int j0 = int(blockIdx.x) * kBM, w0 = j0 + warp * 16;  // this warp's first key
  const float scale = 1.0f / sqrtf(float(HD)), sl2 = scale * kLog2e;

  const int ibeg = j0 / BQ * BQ;
  const int ntiles = j0 < T ? (T - ibeg + BQ - 1) / BQ : 0;
  auto stage = [&](int i0, int buf) {
    load_async<BQ, HD>(Qs + buf * BQ * P, q + base, i0, T, C);
    load_async<BQ, HD>(Gs + buf * BQ * P, dout + base, i0, T, C);
    for (int r = threadIdx.x; r < BQ; r += kThreads) {
      const bool in = i0 + r < T;
      Ls[buf * BQ + r] = in ? lse[int64_t(bh) * T + i0 + r] * kLog2e : INFINITY;
      Ds[buf * BQ + r] = in ? D[int64_t(bh) * T + i0 + r] : 0.0f;
    }
  };
  load_async<kBM, HD>(Ks, k + base, j0, T, C);
  load_async<kBM, HD>(Vs, v + base, j0, T, C);
  if (ntiles > 0) stage(ibeg, 0);
  cp_commit();

  float dka[HD / 8][4], dva[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) dka[d][e] = dva[d][e] = 0.0f;

  for (int j = 0; j < ntiles; ++j) {
    const int buf = j & 1, i0 = ibeg + j * BQ;
    if (j + 1 < ntiles) {
      stage(i0 + BQ, buf ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (i0 + BQ - 1 >= w0) {  // otherwise every query of the tile is before every key of the warp
      const bf16* Qb = Qs + buf * BQ * P;
      const bf16* Gb = Gs + buf * BQ * P;
      float s[NT][4], dp[NT][4];
      qk_n<HD, NT>(s, Ks, warp * 16, Qb);
      qk_n<HD, NT>(dp, Vs, warp * 16, Gb);
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = n * 8 + 2 * t + (e & 1), key = w0 + g + (e >> 1) * 8;
          const float p = i0 + c >= key ? exp2f(s[n][e] * sl2 - Ls[buf * BQ + c]) : 0.0f;
          s[n][e] = p;
          dp[n][e] = p * (dp[n][e] - Ds[buf * BQ + c]);
        }
      pv<HD, NT>(dva, s, Gb);
      pv<HD, NT>(dka, dp, Qb);
      if constexpr (DQ) {
        bf16* Sw = Ss + warp * 16 * PS;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          *reinterpret_cast<uint32_t*>(Sw + g * PS + n * 8 + 2 * t) = pack(dp[n][0], dp[n][1]);
          *reinterpret_cast<uint32_t*>(Sw + (g + 8) * PS + n * 8 + 2 * t) = pack(dp[n][2], dp[n][3]);
        }
      }
    } else if constexpr (DQ) {  // dS of these keys is 0 for the whole query tile
      bf16* Sw = Ss + warp * 16 * PS;
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        *reinterpret_cast<uint32_t*>(Sw + g * PS + n * 8 + 2 * t) = 0u;
        *reinterpret_cast<uint32_t*>(Sw + (g + 8) * PS + n * 8 + 2 * t) = 0u;
      }
    }
    // Without DQ: the Q/dout buffer is refilled next iteration. With DQ: dSᵀ is complete;
    // this barrier also orders this iteration's reads of the buffer before its refill, and
    // the next iteration's first barrier orders the reads of Ss below before its rewrite.
    __syncthreads();
    if constexpr (DQ) {
      const int rg = warp % RG, r0 = i0 + rg * 16, c0 = warp / RG * DC;
      // Keys past the tile's last query row of this warp have dS = 0: skip their k-steps.
      const int nk = min(kBM / 16, (r0 + 15 - j0) / 16 + 1);
      if (r0 < T) {
        float acc[DC / 8][4];
#pragma unroll
        for (int d = 0; d < DC / 8; ++d)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kBM / 16; ++kk) {
          if (kk < nk) {
            uint32_t a[4];  // dS rows r0.., keys kk·16.. = dSᵀ read transposed
            ldsm_x4_t(a, b_addr<PS>(Ss, kk * 16, rg * 16));
#pragma unroll
            for (int d = 0; d < DC / 8; d += 2) {
              uint32_t bb[4];
              ldsm_x4_t(bb, a_addr<P>(Ks, kk * 16, c0 + d * 8));
              mma2(acc[d], acc[d + 1], a, bb);
            }
          }
        }
        add_rows<DC / 8>(dq_acc + base, C, r0, c0, T, acc);
      }
    }
  }
  const int64_t gbase = int64_t(b) * T * G + int64_t(h) * HD;  // dk, dv rows are G apart
  store_rows<HD>(dk + gbase, G, w0, T, dka, scale, scale, rcos, rsin);
  store_rows<HD>(dv + gbase, G, w0, T, dva, 1.0f, 1.0f);
}

template <int HD, int MT>
constexpr size_t fwd_smem() { return size_t(kBM * MT + 4 * kBN) * pitch<HD>() * sizeof(bf16); }
template <int HD>
constexpr size_t dq_smem() { return size_t(2 * kBM + 4 * kBN) * pitch<HD>() * sizeof(bf16); }
template <int HD, bool DQ>
constexpr size_t dkdv_smem() {
  return size_t(2 * kBM + 4 * dkdv_bq<HD>()) * pitch<HD>() * sizeof(bf16) + 4 * dkdv_bq<HD>() * sizeof(float) +
         (DQ ? size_t(kBM) * ds_pitch<HD>() * sizeof(bf16) : 0);
}

// Where the fp32 dq accumulator keeps row (b, t, h) and its HD columns:
//  - kTokenMajor [B, T, H, HD] (the mma.sync single pass adds per thread at any row);
//  - kHeadMajorSw [B, H, T, HD] (a whole query tile of one head is contiguous there, so one
//    bulk reduction adds it) with the 8-float chunks of each row swizzled: logical chunk c of
//    position t sits at chunk c ^ ((t >> 1) & 3). bwd_tma's dQ staging tile has this layout, so
//    that its warps' stores into it are free of bank conflicts (see attention_wgmma_bwd.cuh);
//    only whole rows are permuted, so the valid rows of a last, partial query tile stay one
//    contiguous prefix.
enum class DqLayout { kTokenMajor, kHeadMajorSw };

// The accumulator row r (in L's order) as (token b·T + t, head h, position t).
template <DqLayout L>
__device__ __forceinline__ void dq_row(int64_t r, int T, int H, int64_t& token, int& h, int& t) {
  if constexpr (L == DqLayout::kTokenMajor) {
    token = r / H;
    h = int(r - token * H);
    t = int(token % T);
  } else {
    const int64_t bh = r / T;
    t = int(r - bh * T);
    h = int(bh % H);
    token = bh / H * T + t;
  }
}
// The stored chunk of logical 8-column chunk c of a row at position t, and back (an involution).
template <DqLayout L>
__device__ __forceinline__ int dq_chunk(int c, int t) {
  if constexpr (L == DqLayout::kHeadMajorSw) return c ^ ((t >> 1) & 3);
  return c;
}

// dq = bf16(scale · acc), 8 elements (one stored chunk) per step; dq rows (b, t) are G apart.
template <int HD, DqLayout L>
__global__ void dq_convert(bf16* __restrict__ dq, const float* __restrict__ acc, int64_t n8, float scale, int T, int H,
                           int64_t G) {
  constexpr int kSteps = HD / 8;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 a = reinterpret_cast<const float4*>(acc)[2 * i], b = reinterpret_cast<const float4*>(acc)[2 * i + 1];
    const float f[8] = {a.x * scale, a.y * scale, a.z * scale, a.w * scale,
                        b.x * scale, b.y * scale, b.z * scale, b.w * scale};
    const int64_t r = i / kSteps;
    int64_t token;
    int h, t;
    dq_row<L>(r, T, H, token, h, t);
    const int c = dq_chunk<L>(int(i - r * kSteps), t);
    resbm::cuda_detail::st8(dq + token * G + h * HD + c * 8, resbm::cuda_detail::pack8(f));
  }
}

// The same with the RoPE table: 8 pairs (i, i + HD/2) of a row per step, rotated back
// (rope_backward) before the one rounding to bf16.
template <int HD, DqLayout L>
__global__ void dq_convert_rope(bf16* __restrict__ dq, const float* __restrict__ acc, int64_t n8, float scale,
                                const float* __restrict__ cs, const float* __restrict__ sn, int T, int H,
                                int64_t G) {
  constexpr int kHalf = HD / 2, kSteps = HD / 16;  // steps of 8 pairs per row
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / kSteps;
    const int c0 = int(i - r * kSteps), j0 = c0 * 8;  // logical chunk (and column) of the low half
    int64_t token;
    int h, t;
    dq_row<L>(r, T, H, token, h, t);
    const float4* lo = reinterpret_cast<const float4*>(acc + r * HD + dq_chunk<L>(c0, t) * 8);
    const float4* hi = reinterpret_cast<const float4*>(acc + r * HD + dq_chunk<L>(c0 + kSteps, t) * 8);
    const float4* c4 = reinterpret_cast<const float4*>(cs + int64_t(t) * kHalf + j0);
    const float4* s4 = reinterpret_cast<const float4*>(sn + int64_t(t) * kHalf + j0);
    float a[8], b[8], c[8], s[8];
#pragma unroll
    for (int h2 = 0; h2 < 2; ++h2) {
      const float4 av = lo[h2], bv = hi[h2], cv = c4[h2], sv = s4[h2];
      a[4 * h2] = av.x, a[4 * h2 + 1] = av.y, a[4 * h2 + 2] = av.z, a[4 * h2 + 3] = av.w;
      b[4 * h2] = bv.x, b[4 * h2 + 1] = bv.y, b[4 * h2 + 2] = bv.z, b[4 * h2 + 3] = bv.w;
      c[4 * h2] = cv.x, c[4 * h2 + 1] = cv.y, c[4 * h2 + 2] = cv.z, c[4 * h2 + 3] = cv.w;
      s[4 * h2] = sv.x, s[4 * h2 + 1] = sv.y, s[4 * h2 + 2] = sv.z, s[4 * h2 + 3] = sv.w;
    }
    float ol[8], oh[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      ol[e] = scale * (a[e] * c[e] + b[e] * s[e]);
      oh[e] = scale * (b[e] * c[e] - a[e] * s[e]);
    }
    bf16* out = dq + token * G + h * HD + j0;
    resbm::cuda_detail::st8(out, resbm::cuda_detail::pack8(ol));
    resbm::cuda_detail::st8(out + kHalf, resbm::cuda_detail::pack8(oh));
  }
}

// dq from the accumulator (laid out as L), rotated back when a RoPE table is given.
template <int HD, DqLayout L>
void launch_dq_convert(CudaContext& ctx, bf16* dq, const float* acc, int64_t B, int64_t T, int64_t H,
                       const float* rcos, const float* rsin, int64_t G) {
  const float scale = 1.0f / sqrtf(float(HD));
  if (rcos) {
    const int64_t n8 = B * T * H * HD / 16;
    dq_convert_rope<HD, L><<<resbm::cuda_detail::grid_for(n8, 256), 256, 0, ctx.stream>>>(dq, acc, n8, scale, rcos,
                                                                                          rsin, int(T), int(H), G);
  } else {
    const int64_t n8 = B * T * H * HD / 8;
    dq_convert<HD, L><<<resbm::cuda_detail::grid_for(n8, 256), 256, 0, ctx.stream>>>(dq, acc, n8, scale, int(T),
                                                                                     int(H), G);
  }
  RESBM_CUDA_LAUNCH_CHECK();
}

template <class K>
void allow_smem(K* kernel, size_t bytes) {
  RESBM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}
// allow_smem, once per process for each kernel.
template <auto Kernel>
void allow_smem_once(size_t bytes) {
  static const bool done = (allow_smem(Kernel, bytes), true);
  (void)done;
}
// Opts each kernel in to more than 48 KiB of dynamic shared memory, once per process.
template <int HD>
void configure() {
  static const bool done = [] {
    allow_smem(fwd<HD, kFwdTiles>, fwd_smem<HD, kFwdTiles>());
    allow_smem(bwd_dq<HD>, dq_smem<HD>());
    allow_smem(bwd_dkdv<HD, false>, dkdv_smem<HD, false>());
    allow_smem(bwd_dkdv<HD, true>, dkdv_smem<HD, true>());
    return true;
  }();
  (void)done;
}

template <int HD>
void launch_fwd(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                int64_t T, int64_t H) {
  configure<HD>();
  constexpr int BM = kBM * kFwdTiles;
  const dim3 grid(unsigned((T + BM - 1) / BM), unsigned(B * H));
  fwd<HD, kFwdTiles><<<grid, kThreads, fwd_smem<HD, kFwdTiles>(), ctx.stream>>>(out, lse, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

// D must already hold rowsum(dout ⊙ out). dq_acc: null for the deterministic two kernels,
// else the single pass's fp32 dq accumulator ([B, T, H, HD], already zero). rcos, rsin:
// null, or a RoPE table ([≥ T, HD/2]) to rotate dq and dk back with before they are stored.
// G: elements between consecutive (b, t) rows of dq, dk and dv.
template <int HD>
void launch_bwd(CudaContext& ctx, bf16* dq, float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                const float* D, const bf16* q, const bf16* k, const bf16* v, int64_t B, int64_t T, int64_t H,
                const float* rcos, const float* rsin, int64_t G) {
  configure<HD>();
  const dim3 grid(unsigned((T + kBM - 1) / kBM), unsigned(B * H));
  if (dq_acc) {
    bwd_dkdv<HD, true><<<grid, kThreads, dkdv_smem<HD, true>(), ctx.stream>>>(dq_acc, dk, dv, dout, lse, D, q, k, v,
                                                                              int(T), int(H), rcos, rsin, G);
    RESBM_CUDA_LAUNCH_CHECK();
    launch_dq_convert<HD, DqLayout::kTokenMajor>(ctx, dq, dq_acc, B, T, H, rcos, rsin, G);
    return;
  }
  bwd_dq<HD><<<grid, kThreads, dq_smem<HD>(), ctx.stream>>>(dq, dout, lse, D, q, k, v, int(T), int(H), rcos, rsin,
                                                             G);
  RESBM_CUDA_LAUNCH_CHECK();
  bwd_dkdv<HD, false><<<grid, kThreads, dkdv_smem<HD, false>(), ctx.stream>>>(nullptr, dk, dv, dout, lse, D, q, k, v,
                                                                              int(T), int(H), rcos, rsin, G);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops::cuda_detail_attn_mma
