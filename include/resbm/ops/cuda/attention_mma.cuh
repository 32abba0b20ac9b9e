#pragma once
// Tensor-core kernels of the causal flash attention (attention.cuh owns the API, the
// checks and the D = rowsum(dout ⊙ out) pass): mma.sync.m16n8k16 bf16 → fp32 through
// inline PTX, operands staged in shared memory by cp.async (double-buffered) and read with
// ldmatrix. Every warp owns 16 rows of the block's tile, so softmax statistics stay in the
// registers of the quad that holds a row.
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
// Deterministic: dq is accumulated per query tile over key tiles, dk and dv per key tile
// over query tiles, each in a fixed order; no atomics.
#include <cstdint>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops::cuda_detail_attn_mma {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // query rows per block (forward, dq) or key rows (dkdv)
constexpr int kBN = 64;           // key rows per tile (forward, dq)
constexpr float kLog2e = 1.4426950408889634f;

template <int HD>
constexpr int pitch() { return HD + 8; }
// Query rows per tile of the dk/dv kernel: 32 at hd 128 keeps its accumulators (dk and dv,
// 16×128 fp32 each per warp) plus Sᵀ and dPᵀ under 255 registers.
template <int HD>
constexpr int dkdv_bq() { return HD == 128 ? 32 : 64; }

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
template <int HD>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t ld, int row0, int T, const float (&acc)[HD / 8][4],
                                           float scale0, float scale1) {
  const int l = threadIdx.x % 32, g = l / 4, t = l % 4;
#pragma unroll
  for (int d = 0; d < HD / 8; ++d) {
    const int col = d * 8 + 2 * t;
    if (row0 + g < T)
      *reinterpret_cast<uint32_t*>(dst + int64_t(row0 + g) * ld + col) = pack(acc[d][0] * scale0, acc[d][1] * scale0);
    if (row0 + g + 8 < T)
      *reinterpret_cast<uint32_t*>(dst + int64_t(row0 + g + 8) * ld + col) =
          pack(acc[d][2] * scale1, acc[d][3] * scale1);
  }
}

// Blocks run the longest (last) query tiles first, so the causal triangle's uneven work
// does not leave a tail of long blocks at the end of the grid.
__device__ __forceinline__ int tile_index() { return int(gridDim.x - 1 - blockIdx.x); }

template <int HD>
__global__ void __launch_bounds__(kThreads)
    fwd(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ q, const bf16* __restrict__ k,
        const bf16* __restrict__ v, int T, int H) {
  constexpr int P = pitch<HD>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kBM * P;  // [2][kBN][P]
  bf16* Vs = Ks + 2 * kBN * P;
  const int warp = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, t = l % 4;
  const int bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t C = int64_t(H) * HD;
  const int64_t base = int64_t(b) * T * C + int64_t(h) * HD;
  const int q0 = tile_index() * kBM, w0 = q0 + warp * 16;
  const float sl2 = kLog2e / sqrtf(float(HD));

  const int kend = min(T, q0 + kBM);
  const int ntiles = (kend + kBN - 1) / kBN;
  load_async<kBM, HD>(Qs, q + base, q0, T, C);
  load_async<kBN, HD>(Ks, k + base, 0, T, C);
  load_async<kBN, HD>(Vs, v + base, 0, T, C);
  cp_commit();

  float acc[HD / 8][4];
#pragma unroll
  for (int d = 0; d < HD / 8; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[d][e] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

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
    if (k0 <= w0 + 15) {  // otherwise every key of the tile is after every row of the warp
      float s[8][4];
      qk<HD>(s, Qs, warp * 16, Ks + buf * kBN * P);
      const bool diag = k0 + kBN - 1 > w0;
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[n][e] * sl2;
          const int key = k0 + n * 8 + 2 * t + (e & 1), row = w0 + g + (e >> 1) * 8;
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
      const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
      // A row with no key yet (only rows past T) keeps -inf: use 0 so exp2 gives 0, not NaN.
      const float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;
      const float c0 = exp2f(m0 - u0), c1 = exp2f(m1 - u1);
      l0 *= c0;
      l1 *= c1;
#pragma unroll
      for (int d = 0; d < HD / 8; ++d) {
        acc[d][0] *= c0;
        acc[d][1] *= c0;
        acc[d][2] *= c1;
        acc[d][3] *= c1;
      }
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s[n][0] = exp2f(s[n][0] - u0);
        s[n][1] = exp2f(s[n][1] - u0);
        s[n][2] = exp2f(s[n][2] - u1);
        s[n][3] = exp2f(s[n][3] - u1);
        l0 += s[n][0] + s[n][1];
        l1 += s[n][2] + s[n][3];
      }
      m0 = n0;
      m1 = n1;
      pv<HD, 8>(acc, s, Vs + buf * kBN * P);
    }
    __syncthreads();  // the buffer is refilled two iterations later
  }
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, o);
    l1 += __shfl_xor_sync(0xffffffffu, l1, o);
  }
  store_rows<HD>(out + base, C, w0, T, acc, 1.0f / l0, 1.0f / l1);
  if (t == 0) {
    if (w0 + g < T) lse[int64_t(bh) * T + w0 + g] = (m0 + log2f(l0)) / kLog2e;
    if (w0 + g + 8 < T) lse[int64_t(bh) * T + w0 + g + 8] = (m1 + log2f(l1)) / kLog2e;
  }
}

// dq = scale · Σ_j dS_ij k_j, dS = P ⊙ (dP − D), dP = dout · vᵀ; per query tile.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    bwd_dq(bf16* __restrict__ dq, const bf16* __restrict__ dout, const float* __restrict__ lse,
           const float* __restrict__ D, const bf16* __restrict__ q, const bf16* __restrict__ k,
           const bf16* __restrict__ v, int T, int H) {
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
  store_rows<HD>(dq + base, C, w0, T, acc, scale, scale);
}

// dv_j = Σ_i P_ij dout_i,  dk_j = scale · Σ_i dS_ij q_i over queries i >= j; per key tile,
// computed transposed (keys as rows): Sᵀ = k·qᵀ, dPᵀ = v·doutᵀ.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    bwd_dkdv(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
             const float* __restrict__ lse, const float* __restrict__ D, const bf16* __restrict__ q,
             const bf16* __restrict__ k, const bf16* __restrict__ v, int T, int H) {
  constexpr int P = pitch<HD>(), BQ = dkdv_bq<HD>(), NT = BQ / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kBM * P;
  bf16* Qs = Vs + kBM * P;  // [2][BQ][P]
  bf16* Gs = Qs + 2 * BQ * P;
  float* Ls = reinterpret_cast<float*>(Gs + 2 * BQ * P);  // [2][BQ]
  float* Ds = Ls + 2 * BQ;
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
    }
    __syncthreads();
  }
  store_rows<HD>(dk + base, C, w0, T, dka, scale, scale);
  store_rows<HD>(dv + base, C, w0, T, dva, 1.0f, 1.0f);
}

template <int HD>
constexpr size_t fwd_smem() { return size_t(kBM + 4 * kBN) * pitch<HD>() * sizeof(bf16); }
template <int HD>
constexpr size_t dq_smem() { return size_t(2 * kBM + 4 * kBN) * pitch<HD>() * sizeof(bf16); }
template <int HD>
constexpr size_t dkdv_smem() {
  return size_t(2 * kBM + 4 * dkdv_bq<HD>()) * pitch<HD>() * sizeof(bf16) + 4 * dkdv_bq<HD>() * sizeof(float);
}

// Opts each kernel in to more than 48 KiB of dynamic shared memory, once per process.
template <int HD>
void configure() {
  static const bool done = [] {
    RESBM_CUDA_CHECK(cudaFuncSetAttribute(fwd<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(fwd_smem<HD>())));
    RESBM_CUDA_CHECK(cudaFuncSetAttribute(bwd_dq<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dq_smem<HD>())));
    RESBM_CUDA_CHECK(
        cudaFuncSetAttribute(bwd_dkdv<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dkdv_smem<HD>())));
    return true;
  }();
  (void)done;
}

template <int HD>
void launch_fwd(CudaContext& ctx, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B,
                int64_t T, int64_t H) {
  configure<HD>();
  const dim3 grid(unsigned((T + kBM - 1) / kBM), unsigned(B * H));
  fwd<HD><<<grid, kThreads, fwd_smem<HD>(), ctx.stream>>>(out, lse, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

// D must already hold rowsum(dout ⊙ out).
template <int HD>
void launch_bwd(CudaContext& ctx, bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D,
                const bf16* q, const bf16* k, const bf16* v, int64_t B, int64_t T, int64_t H) {
  configure<HD>();
  const dim3 grid(unsigned((T + kBM - 1) / kBM), unsigned(B * H));
  bwd_dq<HD><<<grid, kThreads, dq_smem<HD>(), ctx.stream>>>(dq, dout, lse, D, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
  bwd_dkdv<HD><<<grid, kThreads, dkdv_smem<HD>(), ctx.stream>>>(dk, dv, dout, lse, D, q, k, v, int(T), int(H));
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops::cuda_detail_attn_mma
