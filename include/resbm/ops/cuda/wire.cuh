#pragma once
// The codec's wire on the GPU: encode a [tokens, width] code (fp32 or bf16 on the device)
// into exactly the bytes of the CPU wire policies (codec/wire/*.hpp) and decode them back,
// for Int8Grouped<G>, Int8PerToken and Bf16Wire. Plus the encoder's output fused with its
// quantisation, `fused_linear_encode`: z = act·Wᵀ (+ x[:, :r] for the Truncate identity)
// computed on tensor cores and quantised into the wire in the same kernel, so the
// [tokens, r] code never goes to memory.
//
// Byte-exact with the CPU (tests/cuda/test_cuda_wire.cu compares bytes):
// - The GPU is little-endian, so fp32 scales and bf16 values are stored as they are: the
//   CPU's explicit little-endian bytes.
// - scale = absmax / 127 by IEEE division (__fdiv_rn). The CPU rounds x / scale in double
//   (nearbyint, ties to even). Here the quotient is x times rcp.approx(scale), within 3 ulp
//   of x / scale, rounded by the 1.5·2^23 trick (code_of); that can round differently from
//   the double only within 2^-10 of a half-integer (|q| <= 127.0001, so an ulp is 2^-17),
//   and those values (about one in 500), like every value of a group with a subnormal
//   scale, are redone by double division (code_slow). Double division for every value
//   would cost ~10 DFMA each, about as long as reading the value from memory.
// - A zero group has scale 0 and codes 0; a scale that underflows to 0 gives codes 0 too.
// Not valid under --use_fast_math (flush-to-zero would change subnormal scales).
//
// Errors, as the CPU's: a non-finite input (and, for bf16, a finite value that rounds to
// infinity) is "<wire>: non-finite value at token t (column c)", a payload that decodes to
// a non-finite value "<wire>: payload decodes to a non-finite value at token t". Kernels
// cannot throw, so each launch takes a CudaWireStatus: the kernels atomicMin the flattened
// index of any bad value into it (so the report names the first bad value, as the CPU's
// sequential loop does), and status.check(ctx) reads it back (it synchronises the stream)
// and throws (collect(), one sync, raise() check many statuses at once). Until then the
// launch is asynchronous; the bytes of a failed encode are unspecified. One status holds one launch: check() before launching with it again.
//
// Kernels (all grid-stride, one launch each):
// - int8 encode/decode, groups of a power of two G with VEC <= G <= 32·VEC (VEC = 4 fp32 or
//   8 bf16 values = one 16-byte load per thread): each thread owns VEC consecutive values
//   of the flattened payload, the G/VEC threads of a group reduce the absmax by warp
//   shuffles, the first writes the scale, each writes its VEC codes. Loads and stores of a
//   warp are contiguous. This covers Int8Grouped<16/64> (the presets) and Int8PerToken at
//   widths 4..128 (fp32) or 8..256 (bf16).
// - any other group (G = 3, per-token width 2, ...): one thread per group, scalar.
// - Bf16Wire: one thread per value.
// - fused_linear_encode: see the comment that opens its section below (per-warp units, or
//   block tiles for groups that 16 tokens do not hold whole).
// The lanes kernels load kUnroll vectors per thread before using any, for bytes in flight.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <type_traits>

#include "resbm/codec/wire/bf16.hpp"
#include "resbm/codec/wire/common.hpp"
#include "resbm/codec/wire/int8_grouped.hpp"
#include "resbm/codec/wire/int8_per_token.hpp"
#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

// Where the wire kernels report the first bad value of one launch (see the header comment).
// The launch itself adds no stream work for it (a graph of encodes holds only kernels):
// the flag is reset when made and by check(), which reads it anyway.
class CudaWireStatus {
 public:
  CudaWireStatus() : first_bad_(1) {
    first_bad_.fill_bytes(0xff);  // no bad index; the legacy stream orders it before later work
    void* host = nullptr;
    RESBM_CUDA_CHECK(cudaMallocHost(&host, sizeof(unsigned long long)));
    read_.reset(static_cast<unsigned long long*>(host));
    RESBM_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // Called by each wire launch (after its argument checks): remembers how to word the error.
  unsigned long long* arm(const char* wire, int64_t width, bool decoding) {
    RESBM_CHECK(!armed_ && !collected_,
                cat("CudaWireStatus still holds the unchecked outcome of a ", wire_,
                    decoding_ ? " decode" : " encode"),
                "call status.check(ctx) after each wire encode or decode before reusing the status, "
                "or give each launch its own");
    armed_ = true;
    wire_ = wire;
    width_ = width;
    decoding_ = decoding;
    return first_bad_.data();
  }

  // Waits for ctx.stream, resets the flag; throws the CPU wire's Error if the launch met a
  // bad value.
  void check(CudaContext& ctx) {
    collect(ctx);
    ctx.synchronize();
    raise();
  }

  // check() in two halves, so that many statuses cost one synchronisation: collect() on
  // each (queues the read-back into pinned memory and the reset on ctx.stream), then
  // ctx.synchronize(), then raise() on each.
  void collect(CudaContext& ctx) {
    if (!armed_) return;
    armed_ = false;
    collected_ = true;
    RESBM_CUDA_CHECK(
        cudaMemcpyAsync(read_.get(), first_bad_.data(), sizeof(unsigned long long), cudaMemcpyDeviceToHost, ctx.stream));
    first_bad_.fill_bytes(0xff, ctx.stream);
  }
  void raise() {
    if (!collected_) return;
    collected_ = false;
    const unsigned long long bad = *read_;
    if (bad == ~0ull) return;
    if (decoding_) codec::wire_detail::corrupt(wire_, int64_t(bad), width_);
    codec::wire_detail::non_finite(wire_, int64_t(bad), width_);
  }

  bool armed() const { return armed_; }

 private:
  struct FreeHost {
    void operator()(unsigned long long* p) const { cudaFreeHost(p); }
  };
  DeviceBuffer<unsigned long long> first_bad_;
  std::unique_ptr<unsigned long long, FreeHost> read_;  // pinned: the copy stays asynchronous
  bool armed_ = false, collected_ = false, decoding_ = false;
  const char* wire_ = "";
  int64_t width_ = 0;
};

namespace cuda_detail_wire {

using resbm::cuda_detail::ldf;
using resbm::cuda_detail::stf;
constexpr int kQmax = 127;
constexpr int kThreads = 256;

__device__ __forceinline__ void flag(unsigned long long* bad, int64_t index) {
  atomicMin(bad, static_cast<unsigned long long>(index));
}

// The code of x at scale s, as the CPU's clamp(nearbyint(double(x) / double(s))), by
// double division: the slow path, for values near a tie and groups with a tiny scale.
__device__ __forceinline__ uint32_t code_slow(float x, float s) {
  if (!(s > 0.0f)) return 0;
  int k = int(rint(__ddiv_rn(double(x), double(s))));
  k = k < -kQmax ? -kQmax : (k > kQmax ? kQmax : k);
  return uint32_t(k) & 0xffu;
}

// One group's scale s = absmax / 127 (IEEE division: these are the wire's bytes) and what
// the fast path needs: an approximate reciprocal (rcp.approx, <= 1 ulp), or 0 with `slow`
// set when s is below the normal range (1/s would overflow) so every value takes the slow
// path. A zero group gets s = inv = 0: every code 0.
struct Scale {
  float s, inv;
  bool slow;
};
__device__ __forceinline__ Scale make_scale(float m) {
  Scale sc;
  sc.s = __fdiv_rn(m, float(kQmax));
  sc.slow = sc.s > 0.0f && sc.s < 1.17549435e-38f;
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(sc.s));
  sc.inv = sc.s >= 1.17549435e-38f ? r : 0.0f;
  return sc;
}

// The code byte of x (in the low 8 bits; the rest is junk). q = x·inv is within 3 ulp of
// x/s (|q| <= 127.0001, ulp 2^-17), so it rounds to the CPU's integer unless it lies within
// 2^-10 of a half-integer: those values (about one in 500) take the slow path. Rounding is
// by adding 1.5·2^23 (ties to even for |q| < 2^22): the sum's low byte is then the code in
// two's complement, and no clamp is needed (|q| < 127.5 for a normal scale). All of it on
// the fp32 pipe, none on the conversion unit (16 per clock) that rintf and a cast would
// take twice a value.
__device__ __forceinline__ uint32_t code_of(float x, const Scale& sc) {
  constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23
  const float q = __fmul_rn(x, sc.inv);
  const float big = __fadd_rn(q, kMagic);
  const float d = __fsub_rn(q, __fsub_rn(big, kMagic));  // q minus its rounding, in [-0.5, 0.5]
  if (sc.slow || fabsf(d) > 0.5f - 0.0009765625f) return code_slow(x, sc.s);
  return __float_as_uint(big);
}

// Four codes into one little-endian word (byte k = code of value k).
__device__ __forceinline__ uint32_t pack_codes(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  return __byte_perm(__byte_perm(c0, c1, 0x0040), __byte_perm(c2, c3, 0x0040), 0x5410);
}

// max(m, |v|), NaN-propagating (fmaxf drops NaN), so one test per vector finds a bad value.
__device__ __forceinline__ float max_abs_nan(float m, float v) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(m), "f"(fabsf(v)));
  return r;
}

// VEC consecutive values as fp32: one 16-byte load.
__device__ __forceinline__ void load_vec(const float* p, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(p);
  v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
}
__device__ __forceinline__ void load_vec(const bf16* p, float (&v)[8]) {
  resbm::cuda_detail::unpack8(*reinterpret_cast<const resbm::cuda_detail::Pack8*>(p), v);
}
__device__ __forceinline__ void store_vec(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store_vec(bf16* p, const float (&v)[8]) {
  *reinterpret_cast<resbm::cuda_detail::Pack8*>(p) = resbm::cuda_detail::pack8(v);
}

// The lanes path of the int8 encode, shared by the plain and the fused kernels. This
// thread holds the `valid` (<= VEC) values v of the flattened payload starting at e (a
// multiple of VEC); the group of 2^shift values is held by 2^shift / VEC consecutive,
// aligned lanes. Every lane of the warp must call it (shuffles), valid = 0 included.
template <int VEC>
__device__ __forceinline__ void quantize_lanes(const float (&v)[VEC], int valid, int64_t e, int shift,
                                               float* __restrict__ scales, uint8_t* __restrict__ codes,
                                               unsigned long long* bad) {
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < VEC; ++k)
    if (k < valid) m = max_abs_nan(m, v[k]);
  if (!(m <= 3.40282347e38f)) {  // a NaN or an infinity among them: find which (rare)
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      if (k < valid && !isfinite(v[k])) flag(bad, e + k);
  }
  for (int o = (1 << shift) / VEC / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (valid <= 0) return;
  const Scale sc = make_scale(m);
  if ((e & ((int64_t(1) << shift) - 1)) == 0) scales[e >> shift] = sc.s;
  if (valid == VEC) {
#pragma unroll
    for (int w = 0; w < VEC / 4; ++w)  // e is a multiple of 4 and codes 4-aligned
      reinterpret_cast<uint32_t*>(codes + e)[w] = pack_codes(code_of(v[4 * w], sc), code_of(v[4 * w + 1], sc),
                                                             code_of(v[4 * w + 2], sc), code_of(v[4 * w + 3], sc));
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k)  // unrolled: v stays in registers (no dynamic index)
      if (k < valid) codes[e + k] = uint8_t(code_of(v[k], sc));
  }
}

// kUnroll vectors per thread per step, loaded before any is used: 64 bytes in flight per
// thread rather than 16 on large payloads (unroll_for picks 4 there); small ones (a 16k-token
// code is 128 KiB at r = 2) take one vector a thread, to spread over more SMs.

template <class T, int VEC, int kUnroll>
__global__ void int8_encode_lanes(const T* __restrict__ x, int64_t n, int shift, float* __restrict__ scales,
                                  uint8_t* __restrict__ codes, unsigned long long* bad) {
  const int64_t layer = int64_t(blockDim.x) * VEC;  // values one vector of every thread covers
  const int64_t step = int64_t(gridDim.x) * layer * kUnroll;
  // The bound is the same for the whole block, so every lane reaches the shuffles.
  for (int64_t base = int64_t(blockIdx.x) * layer * kUnroll; base < n; base += step) {
    float v[kUnroll][VEC];
    int valid[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * layer + int64_t(threadIdx.x) * VEC;
      valid[u] = n - e >= VEC ? VEC : (n > e ? int(n - e) : 0);
      if (valid[u] == VEC) {
        load_vec(x + e, v[u]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[u][k] = k < valid[u] ? ldf(x + e + k) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      quantize_lanes<VEC>(v[u], valid[u], base + u * layer + int64_t(threadIdx.x) * VEC, shift, scales, codes, bad);
  }
}

// Any group size (0 included: Int8PerToken at width 0 still writes one zero scale a token).
template <class T>
__global__ void int8_encode_groups(const T* __restrict__ x, int64_t n, int64_t group, int64_t ngroups,
                                   float* __restrict__ scales, uint8_t* __restrict__ codes,
                                   unsigned long long* bad) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < ngroups; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t begin = g * group, end = begin + group < n ? begin + group : n;
    float m = 0.0f;
    for (int64_t i = begin; i < end; ++i) {
      const float v = ldf(x + i);
      if (!isfinite(v)) flag(bad, i);
      m = fmaxf(m, fabsf(v));
    }
    const Scale sc = make_scale(m);
    scales[g] = sc.s;
    for (int64_t i = begin; i < end; ++i) codes[i] = uint8_t(code_of(ldf(x + i), sc));
  }
}

// y = code · scale (one fp32 product, then the output's rounding: bf16 output equals the
// CPU's fp32 result rounded to nearest even). A non-finite scale flags the group's start.
template <class T, int VEC, int kUnroll>
__global__ void int8_decode_lanes(const float* __restrict__ scales, const uint8_t* __restrict__ codes, int64_t n,
                                  int shift, T* __restrict__ y, unsigned long long* bad) {
  const int64_t layer = int64_t(blockDim.x) * VEC;
  const int64_t step = int64_t(gridDim.x) * layer * kUnroll;
  for (int64_t base = int64_t(blockIdx.x) * layer * kUnroll; base < n; base += step) {
    uint32_t words[kUnroll][VEC / 4];
    float s[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // loads first
      const int64_t e = base + u * layer + int64_t(threadIdx.x) * VEC;
      s[u] = e < n ? scales[e >> shift] : 0.0f;
#pragma unroll
      for (int w = 0; w < VEC / 4; ++w)
        words[u][w] = n - e >= VEC ? reinterpret_cast<const uint32_t*>(codes + e)[w] : 0u;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u * layer + int64_t(threadIdx.x) * VEC;
      if (e >= n) continue;
      if (!isfinite(s[u])) flag(bad, (e >> shift) << shift);
      if (n - e >= VEC) {
        float v[VEC];
#pragma unroll
        for (int w = 0; w < VEC / 4; ++w)
#pragma unroll
          for (int k = 0; k < 4; ++k) v[4 * w + k] = __fmul_rn(float(int8_t(uint8_t(words[u][w] >> (8 * k)))), s[u]);
        store_vec(y + e, v);
      } else {
        for (int k = 0; e + k < n; ++k) stf(y + e + k, __fmul_rn(float(int8_t(codes[e + k])), s[u]));
      }
    }
  }
}

template <class T>
__global__ void int8_decode_groups(const float* __restrict__ scales, const uint8_t* __restrict__ codes, int64_t n,
                                   int64_t group, int64_t ngroups, T* __restrict__ y, unsigned long long* bad) {
  for (int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; g < ngroups; g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t begin = g * group, end = begin + group < n ? begin + group : n;
    const float s = scales[g];
    if (!isfinite(s)) flag(bad, begin);
    for (int64_t i = begin; i < end; ++i) stf(y + i, __fmul_rn(float(int8_t(codes[i])), s));
  }
}

// Bf16Wire: resbm::bf16's own rounding (the CPU's bits, NaN included); a non-finite input
// or a finite one that rounds to infinity is flagged.
template <class T>
__global__ void bf16_encode(const T* __restrict__ x, int64_t n, uint16_t* __restrict__ out, unsigned long long* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = ldf(x + i);
    const bf16 b = bf16::from_float(v);
    if (!isfinite(v) || !isfinite(b.to_float())) flag(bad, i);
    out[i] = b.bits;
  }
}
template <class T>
__global__ void bf16_decode(const uint16_t* __restrict__ in, int64_t n, T* __restrict__ y, unsigned long long* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = bf16::from_bits(in[i]).to_float();
    if (!isfinite(v)) flag(bad, i);
    stf(y + i, v);
  }
}

// The same with VEC values (16 bytes of x or y) per thread and step, for 16-byte aligned
// tensors of a whole number of vectors: the scalar kernels' 2-byte accesses ran the dense
// boundary's passes at a fraction of the memory bandwidth.
template <int VEC>
struct Bits;  // VEC wire values (2 bytes each) as one access
template <>
struct alignas(16) Bits<8> {
  uint16_t b[8];
};
template <>
struct alignas(8) Bits<4> {
  uint16_t b[4];
};
template <class T, int VEC = 16 / int(sizeof(T))>
__global__ void bf16_encode_vec(const T* __restrict__ x, int64_t nv, Bits<VEC>* __restrict__ out,
                                unsigned long long* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    float v[VEC];
    load_vec(x + i * VEC, v);
    Bits<VEC> w;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const bf16 b = bf16::from_float(v[k]);
      if (!isfinite(v[k]) || !isfinite(b.to_float())) flag(bad, i * VEC + k);
      w.b[k] = b.bits;
    }
    out[i] = w;
  }
}
template <class T, int VEC = 16 / int(sizeof(T))>
__global__ void bf16_decode_vec(const Bits<VEC>* __restrict__ in, int64_t nv, T* __restrict__ y,
                                unsigned long long* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nv; i += int64_t(gridDim.x) * blockDim.x) {
    const Bits<VEC> w = in[i];
    float v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      v[k] = bf16::from_bits(w.b[k]).to_float();
      if (!isfinite(v[k])) flag(bad, i * VEC + k);
    }
    store_vec(y + i * VEC, v);
  }
}
template <class T>
bool bf16_vec_ok(const T* x, const void* wire, int64_t n) {
  constexpr int vec = 16 / int(sizeof(T));
  return n % vec == 0 && cuda_detail::aligned16(x) && reinterpret_cast<uintptr_t>(wire) % (2 * vec) == 0;
}

// ---- fused_linear_encode ---------------------------------------------------------------
// z[16, r] of 16 tokens = act[16, H] · W[r, H]ᵀ is one warp's unit: mma.m16n8k16 (bf16 in,
// fp32 accumulate; NT = ceil(r/8) n-tiles, rows of W past r zero), plus the residual's first
// r columns. W is staged once per (persistent) block in shared memory by cp.async while the
// first activations load. act is read once, straight from global memory into the A
// fragments.
//
// When the 16r values of a unit hold whole groups (16r a multiple of the group: always for
// Int8Grouped<16> and Int8PerToken, for Int8Grouped<64> at r % 4 == 0), each warp
// quantises its own unit from a private 16r-float slice of shared memory and moves on:
// warps never wait for each other, so one warp's loads overlap another's arithmetic
// (fused_linear_int8_warps). Otherwise the block's warps fill a shared tile of `tile`
// tokens that holds whole groups, then quantise it together (fused_linear_int8_tiles).
//
// Fragment trick: the k order inside one mma is free as long as A and B agree. Lane
// (g, t) loads 16 contiguous bytes, k = kb + 8t .. kb + 8t + 7, of its rows g and g + 8
// (and of row g of the W n-tile), and uses k 8t+0..3 as the fragment's k {2t, 2t+1, 2t+8,
// 2t+9} of one mma and 8t+4..7 as those of a second: 32 k per two mmas, with 16-byte loads
// that cover each row's 64 bytes per quad, instead of 4-byte fragment loads.
//
// The W rows in shared memory are H + pad elements apart, the pad making the pitch an odd
// multiple of 64 bytes: the 8 lanes of one 16-byte access phase, (g, g+1) x t = 0..3, then
// hit 32 distinct banks.
constexpr int kFusedWarps = 4;
constexpr int kFusedThreads = 32 * kFusedWarps;
constexpr int kFusedMaxRank = 64;
constexpr int kFusedMaxTileValues = 12288;           // 48 KiB of fp32 z per block (tiles kernel)
constexpr size_t kFusedMaxSmem = size_t(200) << 10;  // z + W; above it W is read from L1/L2

__host__ __device__ constexpr int fused_w_pitch(int H) { return (H * 2) % 128 == 0 ? H + 32 : H; }

__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  // Not volatile: a pure function of its registers, so the compiler may schedule the loads
  // that feed it early.
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 ld16(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

struct FusedArgs {
  const bf16* __restrict__ act;
  int64_t N;
  int H, r;
  const bf16* __restrict__ w;
  const bf16* __restrict__ resid;  // null: no identity path
  int64_t ld_resid;
  int64_t group;
  int shift;  // log2(group) for the lanes path, else -1
  float* __restrict__ scales;
  uint8_t* __restrict__ codes;
  float* __restrict__ z_out;  // null: z is not stored
  unsigned long long* bad;
};

// Stages W (rows r..8·NT zero) into shared memory with cp.async; wait with cp.async.wait_group.
template <int NT>
__device__ __forceinline__ void stage_w(const FusedArgs& p, bf16* ws) {
  const int chunks = p.H / 8, pitch = fused_w_pitch(p.H);  // 16-byte chunks of a row
  for (int i = threadIdx.x; i < NT * 8 * chunks; i += blockDim.x) {
    const int row = i / chunks, c = i % chunks;
    bf16* dst = ws + row * pitch + c * 8;
    if (row < p.r)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                       static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
                   "l"(p.w + int64_t(row) * p.H + c * 8));
    else
      *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// The A fragments of rows row0 and row0 + 8 (zeros past N), k in [kc, kc + 256).
__device__ __forceinline__ void load_a(const FusedArgs& p, int64_t row0, int kc, int t, uint4 (&a0)[8],
                                       uint4 (&a1)[8]) {
  const int64_t row1 = row0 + 8;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int k = kc + 32 * j + 8 * t;
    const bool ink = kc + 32 * j < p.H;
    a0[j] = row0 < p.N && ink ? ld16(p.act + row0 * p.H + k) : make_uint4(0, 0, 0, 0);
    a1[j] = row1 < p.N && ink ? ld16(p.act + row1 * p.H + k) : make_uint4(0, 0, 0, 0);
  }
}

// acc += A[16, kc..kc+256) · W[8·NT, kc..kc+256)ᵀ
template <int NT, bool kWShared>
__device__ __forceinline__ void mma_chunk(const FusedArgs& p, const bf16* ws, int kc, int g, int t,
                                          const uint4 (&a0)[8], const uint4 (&a1)[8], float (&acc)[NT][4]) {
  const int pitch = fused_w_pitch(p.H);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (kc + 32 * j >= p.H) break;
    const int k = kc + 32 * j + 8 * t;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int row = nt * 8 + g;
      uint4 b;
      if constexpr (kWShared)
        b = *reinterpret_cast<const uint4*>(ws + row * pitch + k);
      else
        b = row < p.r ? ld16(p.w + int64_t(row) * p.H + k) : make_uint4(0, 0, 0, 0);
      mma_bf16(acc[nt], a0[j].x, a1[j].x, a0[j].y, a1[j].y, b.x, b.y);
      mma_bf16(acc[nt], a0[j].z, a1[j].z, a0[j].w, a1[j].w, b.z, b.w);
    }
  }
}

// The residual's values under this lane's C fragments: (g, 2t..2t+1) and (g + 8, 2t..2t+1)
// of each 8-column n-tile, two bf16 packed a word (zeros past r or N). All loads are issued
// before any is used, and before the mmas: they are DRAM round trips, and issued between
// the z stores (which the compiler must assume alias them) they would run one at a time.
template <int NT>
__device__ __forceinline__ void load_resid(const FusedArgs& p, int64_t row0, int t, uint32_t (&rv)[NT][2]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + 8 * h;
      const int col = nt * 8 + 2 * t;
      const auto* q = reinterpret_cast<const unsigned short*>(p.resid + row * p.ld_resid + col);
      uint32_t lo = 0, hi = 0;
      if (p.resid && row < p.N && col < p.r) lo = __ldg(q);
      if (p.resid && row < p.N && col + 1 < p.r) hi = __ldg(q + 1);
      rv[nt][h] = lo | hi << 16;
    }
}

// The C fragments plus the residual into zs[(lrow0 + local row)·r + col] (zeros for rows
// past N); z_out too if asked.
template <int NT>
__device__ __forceinline__ void store_z(const FusedArgs& p, const float (&acc)[NT][4], const uint32_t (&rv)[NT][2],
                                        int64_t row0, float* zs, int lrow0, int g, int t) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + 8 * h;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = nt * 8 + 2 * t + c;
        if (col >= p.r) continue;
        float z = 0.0f;
        if (row < p.N) {
          z = acc[nt][2 * h + c];
          if (p.resid) z = __fadd_rn(z, __uint_as_float((c ? rv[nt][h] >> 16 : rv[nt][h] & 0xffffu) << 16));
          if (p.z_out) p.z_out[row * p.r + col] = z;
        }
        zs[(lrow0 + g + 8 * h) * p.r + col] = z;
      }
    }
}

// Quantises `span` values of z (shared memory, whole groups, starting at flattened index
// e0; those at or past n are padding) with `nthr` threads, this one `tid`. The lanes path
// needs all nthr threads (whole warps) to call it.
__device__ __forceinline__ void quantize_span(const FusedArgs& p, const float* zs, int span, int64_t e0, int64_t n,
                                              int tid, int nthr) {
  const int count = n - e0 < span ? int(n - e0) : span;
  if (p.shift >= 0) {
    // The loop bound is the same for every caller, so every lane reaches the shuffles.
    for (int base = 0; base < span; base += nthr * 4) {
      const int le = base + tid * 4;
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (le < span) {
        const float4 f = *reinterpret_cast<const float4*>(zs + le);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
      }
      const int valid = count - le >= 4 ? 4 : (count > le ? count - le : 0);
      quantize_lanes<4>(v, valid, e0 + le, p.shift, p.scales, p.codes, p.bad);
    }
  } else {
    for (int j = tid; int64_t(j) * p.group < count; j += nthr) {
      const int begin = int(j * p.group), end = begin + p.group < count ? int(begin + p.group) : count;
      float m = 0.0f;
      for (int i = begin; i < end; ++i) {
        if (!isfinite(zs[i])) flag(p.bad, e0 + i);
        m = fmaxf(m, fabsf(zs[i]));
      }
      const Scale sc = make_scale(m);
      p.scales[(e0 + begin) / p.group] = sc.s;
      for (int i = begin; i < end; ++i) p.codes[e0 + i] = uint8_t(code_of(zs[i], sc));
    }
  }
}

// What the per-warp kernel does to the A fragments of a unit's rows between their loads and
// the mmas: nothing (act is the Linear's input), or a caller's row transform, such as the
// codec's encoder applying its hidden layer's rstd ⊙ and SiLU to P = h · w1gᵀ
// (codec/cuda/residual_bottleneck.cuh). A transform provides
//   Row                                   what it keeps per unit (loaded with the residual)
//   load(p, row0, Row&)                   for rows row0 and row0 + 8
//   apply(p, row0, kc, t, Row, a0, a1)    on the fragments load_a brought for k in [kc, kc + 256)
struct PlainA {
  struct Row {};
  __device__ __forceinline__ void load(const FusedArgs&, int64_t, Row&) const {}
  __device__ __forceinline__ void apply(const FusedArgs&, int64_t, int, int, const Row&, uint4 (&)[8],
                                        uint4 (&)[8]) const {}
};

// Each warp: 16-token units u = its global warp index, + the number of warps, ...; z of a
// unit in its own 16r floats of shared memory, quantised by the warp alone.
// 4 blocks (16 warps) an SM fit in 128 registers a thread, except at NT = 8 (r > 32),
// whose 32 accumulators would then spill: 3 blocks there.
template <int NT, bool kWShared, class A = PlainA>
__global__ void __launch_bounds__(kFusedThreads, NT == 8 ? 3 : 4) fused_linear_int8_warps(FusedArgs p, A a_op = {}) {
  extern __shared__ float4 smem4[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float* zw = reinterpret_cast<float*>(smem4) + warp * 16 * p.r;
  bf16* ws = reinterpret_cast<bf16*>(reinterpret_cast<float*>(smem4) + kFusedWarps * 16 * p.r);
  if constexpr (kWShared) stage_w<NT>(p, ws);
  const int64_t units = (p.N + 15) / 16, n = p.N * p.r;
  const int64_t stride = int64_t(gridDim.x) * kFusedWarps;
  int64_t u = int64_t(blockIdx.x) * kFusedWarps + warp;
  uint4 a0[8], a1[8];
  uint32_t rv[NT][2];
  typename A::Row ar;
  load_a(p, u * 16 + g, 0, t, a0, a1);  // in flight while W arrives
  load_resid<NT>(p, u * 16 + g, t, rv);
  a_op.load(p, u * 16 + g, ar);
  if constexpr (kWShared) {
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();  // every thread passes here once, before any unit
  }
  for (bool first = true; u < units; u += stride) {
    const int64_t row0 = u * 16 + g;
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
    for (int kc = 0; kc < p.H; kc += 256) {
      if (!first || kc > 0) load_a(p, row0, kc, t, a0, a1);
      if (!first && kc == 0) {
        load_resid<NT>(p, row0, t, rv);
        a_op.load(p, row0, ar);
      }
      a_op.apply(p, row0, kc, t, ar, a0, a1);
      mma_chunk<NT, kWShared>(p, ws, kc, g, t, a0, a1, acc);
    }
    first = false;
    // (Loading the next unit's A here, to overlap this one's quantisation, would hold 64
    // more registers through it: spills at NT = 8. Other warps fill that time instead.)
    store_z<NT>(p, acc, rv, row0, zw, 0, g, t);
    __syncwarp();
    quantize_span(p, zw, 16 * p.r, u * 16 * p.r, n, lane, 32);
    __syncwarp();  // zw is rewritten by the next unit
  }
}

// The block fills a shared tile of `tile` tokens (holding whole groups), then quantises it.
template <int NT, bool kWShared>
__global__ void __launch_bounds__(kFusedThreads) fused_linear_int8_tiles(FusedArgs p, int tile) {
  extern __shared__ float4 smem4[];
  float* zs = reinterpret_cast<float*>(smem4);
  bf16* ws = reinterpret_cast<bf16*>(zs + tile * p.r);  // tile·r is a multiple of 16
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  if constexpr (kWShared) {
    stage_w<NT>(p, ws);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
  }
  const int64_t n = p.N * p.r;
  for (int64_t tok0 = int64_t(blockIdx.x) * tile; tok0 < p.N; tok0 += int64_t(gridDim.x) * tile) {
    for (int sub = warp; sub < tile / 16; sub += kFusedWarps) {
      const int64_t row0 = tok0 + sub * 16 + g;
      float acc[NT][4];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
      uint32_t rv[NT][2];
      for (int kc = 0; kc < p.H; kc += 256) {
        uint4 a0[8], a1[8];
        load_a(p, row0, kc, t, a0, a1);
        if (kc == 0) load_resid<NT>(p, row0, t, rv);
        mma_chunk<NT, kWShared>(p, ws, kc, g, t, a0, a1, acc);
      }
      store_z<NT>(p, acc, rv, row0, zs, sub * 16, g, t);
    }
    __syncthreads();
    quantize_span(p, zs, tile * p.r, tok0 * p.r, n, int(threadIdx.x), kFusedThreads);
    __syncthreads();  // zs is rewritten by the next tile
  }
}

// The int8 policies as (group, ngroups) of the flattened payload, as the CPU computes them.
template <class W>
struct Int8Groups {};  // no int8 kernels for W
template <int G>
struct Int8Groups<codec::Int8Grouped<G>> {
  static int64_t group(int64_t, int64_t) { return G; }
  static int64_t count(int64_t tokens, int64_t width) { return (tokens * width + G - 1) / G; }
};
template <>
struct Int8Groups<codec::Int8PerToken> {
  static int64_t group(int64_t, int64_t width) { return width; }
  static int64_t count(int64_t tokens, int64_t) { return tokens; }
};
template <class W>
concept CudaInt8Wire = requires(int64_t a) { Int8Groups<W>::group(a, a); };
template <class W>
concept CudaWire = CudaInt8Wire<W> || std::is_same_v<W, codec::Bf16Wire>;

// Vectors per thread: 4 once the payload fills every SM with 4 vectors per thread (132 SMs
// x 2048 threads x 4 on an H200), else 1.
inline int unroll_for(int64_t vectors, const CudaContext& ctx) {
  return vectors >= int64_t(ctx.props.multiProcessorCount) * 2048 * 4 ? 4 : 1;
}

// log2(group) if the lanes path takes groups of this size with VEC values per thread, else -1.
inline int lanes_shift(int64_t group, int vec) {
  if (group < vec || group > 32 * vec || (group & (group - 1)) != 0) return -1;
  int s = 0;
  while ((int64_t(1) << s) < group) ++s;
  return s;
}

inline void check_wire_buffer(const char* wire, const std::byte* p, int64_t have, size_t need, const char* what) {
  RESBM_CHECK(have >= 0 && size_t(have) >= need,
              cat(wire, ": ", what, " of ", have, " bytes for a payload of ", need), "pass W::bytes(tokens, width) bytes");
  RESBM_CHECK(need == 0 || (reinterpret_cast<uintptr_t>(p) & 3u) == 0,
              cat(wire, ": ", what, " is not 4-byte aligned"), "pass a DeviceBuffer or a 4-byte aligned offset into one");
}

}  // namespace cuda_detail_wire

// Encodes x [tokens, width] (fp32 or bf16) into wire (device bytes, at least
// W::bytes(tokens, width) of them; exactly that many are written): the CPU's W::encode
// bytes. Asynchronous on ctx.stream; status.check(ctx) reports a non-finite input.
template <class W, class T>
  requires(cuda_detail_wire::CudaWire<W> && (std::is_same_v<T, float> || std::is_same_v<T, bf16>))
void wire_encode(CudaContext& ctx, CudaWireStatus& status, CudaTensor<const T> x, CudaTensor<std::byte> wire) {
  using namespace cuda_detail_wire;
  RESBM_CHECK(x.rank == 2, cat(W::name, ": wire_encode takes a [tokens, width] input, not rank ", x.rank),
              "view the code as [tokens, width]");
  const int64_t tokens = x.size(0), width = x.size(1), n = tokens * width;
  const size_t need = W::bytes(tokens, width);
  check_wire_buffer(W::name, wire.data, wire.numel(), need, "wire buffer");
  unsigned long long* bad = status.arm(W::name, width, false);
  if constexpr (std::is_same_v<W, codec::Bf16Wire>) {
    if (n == 0) return;
    constexpr int vec = 16 / int(sizeof(T));
    if (bf16_vec_ok(x.data, wire.data, n))
      bf16_encode_vec<T><<<cuda_detail::grid_for(n / vec, kThreads), kThreads, 0, ctx.stream>>>(
          x.data, n / vec, reinterpret_cast<Bits<vec>*>(wire.data), bad);
    else
      bf16_encode<T><<<cuda_detail::grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(
          x.data, n, reinterpret_cast<uint16_t*>(wire.data), bad);
  } else {
    const int64_t group = Int8Groups<W>::group(tokens, width), ngroups = Int8Groups<W>::count(tokens, width);
    if (ngroups == 0) return;
    auto* scales = reinterpret_cast<float*>(wire.data);
    auto* codes = reinterpret_cast<uint8_t*>(wire.data) + 4 * ngroups;
    constexpr int vec = 16 / int(sizeof(T));
    const int shift = lanes_shift(group, vec);
    if (shift >= 0 && cuda_detail::aligned16(x.data)) {
      const int64_t vectors = (n + vec - 1) / vec;
      if (unroll_for(vectors, ctx) == 4)
        int8_encode_lanes<T, vec, 4><<<cuda_detail::grid_for((vectors + 3) / 4, kThreads), kThreads, 0, ctx.stream>>>(
            x.data, n, shift, scales, codes, bad);
      else
        int8_encode_lanes<T, vec, 1><<<cuda_detail::grid_for(vectors, kThreads), kThreads, 0, ctx.stream>>>(
            x.data, n, shift, scales, codes, bad);
    } else {
      int8_encode_groups<T><<<cuda_detail::grid_for(ngroups, kThreads), kThreads, 0, ctx.stream>>>(
          x.data, n, group, ngroups, scales, codes, bad);
    }
  }
  RESBM_CUDA_LAUNCH_CHECK();
}

// Decodes W's payload (device bytes, at least W::bytes(tokens, width)) into y [tokens,
// width] (fp32: the CPU's W::decode bit for bit; bf16: that rounded to nearest even).
// Asynchronous; status.check(ctx) reports a payload that decodes to a non-finite value.
template <class W, class T>
  requires(cuda_detail_wire::CudaWire<W> && (std::is_same_v<T, float> || std::is_same_v<T, bf16>))
void wire_decode(CudaContext& ctx, CudaWireStatus& status, CudaTensor<const std::byte> wire, CudaTensor<T> y) {
  using namespace cuda_detail_wire;
  RESBM_CHECK(y.rank == 2, cat(W::name, ": wire_decode writes a [tokens, width] output, not rank ", y.rank),
              "view the output as [tokens, width]");
  const int64_t tokens = y.size(0), width = y.size(1), n = tokens * width;
  const size_t need = W::bytes(tokens, width);
  check_wire_buffer(W::name, wire.data, wire.numel(), need, "payload");
  unsigned long long* bad = status.arm(W::name, width, true);
  if constexpr (std::is_same_v<W, codec::Bf16Wire>) {
    if (n == 0) return;
    constexpr int vec = 16 / int(sizeof(T));
    if (bf16_vec_ok<T>(y.data, wire.data, n))
      bf16_decode_vec<T><<<cuda_detail::grid_for(n / vec, kThreads), kThreads, 0, ctx.stream>>>(
          reinterpret_cast<const Bits<vec>*>(wire.data), n / vec, y.data, bad);
    else
      bf16_decode<T><<<cuda_detail::grid_for(n, kThreads), kThreads, 0, ctx.stream>>>(
          reinterpret_cast<const uint16_t*>(wire.data), n, y.data, bad);
  } else {
    const int64_t group = Int8Groups<W>::group(tokens, width), ngroups = Int8Groups<W>::count(tokens, width);
    if (ngroups == 0) return;
    const auto* scales = reinterpret_cast<const float*>(wire.data);
    const auto* codes = reinterpret_cast<const uint8_t*>(wire.data) + 4 * ngroups;
    constexpr int vec = 16 / int(sizeof(T));
    const int shift = lanes_shift(group, vec);
    if (shift >= 0 && cuda_detail::aligned16(y.data)) {
      const int64_t vectors = (n + vec - 1) / vec;
      if (unroll_for(vectors, ctx) == 4)
        int8_decode_lanes<T, vec, 4><<<cuda_detail::grid_for((vectors + 3) / 4, kThreads), kThreads, 0, ctx.stream>>>(
            scales, codes, n, shift, y.data, bad);
      else
        int8_decode_lanes<T, vec, 1><<<cuda_detail::grid_for(vectors, kThreads), kThreads, 0, ctx.stream>>>(
            scales, codes, n, shift, y.data, bad);
    } else {
      int8_decode_groups<T><<<cuda_detail::grid_for(ngroups, kThreads), kThreads, 0, ctx.stream>>>(
          scales, codes, n, group, ngroups, y.data, bad);
    }
  }
  RESBM_CUDA_LAUNCH_CHECK();
}

// The encoder's last Linear fused with the forward wire, for W = Int8Grouped<G> or
// Int8PerToken:
//   z = act · weightᵀ (+ residual[:, :r] when residual has data: the Truncate identity)
//   wire = W::encode(z)                                         (bytes as the CPU's)
// act [N, H] and weight [r, H] bf16, H a multiple of 32, 1 <= r <= 64; residual [N, d]
// bf16 with d >= r, or an empty tensor. z is accumulated in fp32 on tensor cores and never
// stored, unless z_out [N, r] (fp32) is passed: then it is written too, and the wire equals
// the CPU's W::encode of z_out byte for byte (the test's check). z itself differs from a
// CPU GEMM by fp32 summation order only. Asynchronous; status.check(ctx) reports a
// non-finite z.
// With a row transform `a_op` (see cuda_detail_wire::PlainA), act is the transform's input
// and z = a_op(act) · weightᵀ (...); only where 16 tokens hold whole groups of W
// (fused_per_warp<W>(N, r): the per-warp kernel), else an Error.
template <class W>
  requires cuda_detail_wire::CudaInt8Wire<W>
bool fused_per_warp(int64_t N, int64_t r) {
  return (16 * r) % cuda_detail_wire::Int8Groups<W>::group(N, r) == 0;
}
template <class W, class A = cuda_detail_wire::PlainA>
  requires cuda_detail_wire::CudaInt8Wire<W>
void fused_linear_encode(CudaContext& ctx, CudaWireStatus& status, CudaTensor<const bf16> act,
                         CudaTensor<const bf16> weight, CudaTensor<const bf16> residual, CudaTensor<std::byte> wire,
                         CudaTensor<float> z_out = {}, A a_op = {}) {
  using namespace cuda_detail_wire;
  const int64_t N = act.size(0), H = act.size(1), r = weight.size(0);
  expect_shape(act, {N, H}, "fused encoder input");
  expect_shape(weight, {r, H}, "fused encoder weight");
  RESBM_CHECK(r >= 1 && r <= kFusedMaxRank, cat("fused_linear_encode: rank ", r, " is outside 1..", kFusedMaxRank),
              "use ops::matmul_forward and ops::wire_encode for wider codes");
  RESBM_CHECK(H % 32 == 0, cat("fused_linear_encode: input width ", H, " is not a multiple of 32"),
              "use ops::matmul_forward and ops::wire_encode, or pad the hidden width to a multiple of 32");
  RESBM_CHECK(cuda_detail::aligned16(act.data) && cuda_detail::aligned16(weight.data),
              "fused_linear_encode: input or weight is not 16-byte aligned", "pass views at 16-byte aligned offsets");
  int64_t ld_resid = 0;
  if (residual.data) {
    RESBM_CHECK(residual.rank == 2 && residual.size(0) == N && residual.size(1) >= r,
                cat("fused_linear_encode: residual has shape ", shape_str(residual.shape, residual.rank),
                    " but [", N, ", >= ", r, "] was expected"),
                "pass the encoder's input h [tokens, d_model], or an empty tensor for NoIdentity");
    ld_resid = residual.size(1);
  }
  if (z_out.data) expect_shape(z_out, {N, r}, "fused encoder output z");
  const int64_t group = Int8Groups<W>::group(N, r), ngroups = Int8Groups<W>::count(N, r);
  const size_t need = W::bytes(N, r);
  check_wire_buffer(W::name, wire.data, wire.numel(), need, "wire buffer");
  // Per-warp units when 16 tokens hold whole groups; else tiles that do: a multiple of the
  // smallest 16-token multiple that holds whole groups, at least 64 tokens.
  const bool per_warp = fused_per_warp<W>(N, r);
  constexpr bool kPlain = std::is_same_v<A, PlainA>;
  RESBM_CHECK(kPlain || per_warp,
              cat("fused_linear_encode: a row transform needs 16-token units that hold whole groups; groups of ",
                  group, " at rank ", r, " do not"),
              "check ops::fused_per_warp<W>(N, r) first and apply the transform in a pass of its own otherwise");
  const int64_t unit = 16 * (group / std::gcd(group, 16 * r));
  const int64_t tile = per_warp ? 16 : unit * ((16 * kFusedWarps + unit - 1) / unit);
  RESBM_CHECK(tile * r <= kFusedMaxTileValues,
              cat("fused_linear_encode: groups of ", group, " at rank ", r, " need tiles of ", tile,
                  " tokens, more than fit in shared memory"),
              "use ops::matmul_forward and ops::wire_encode for this group size");
  unsigned long long* bad = status.arm(W::name, r, false);
  if (N == 0) return;
  FusedArgs p{act.data, N, int(H), int(r), weight.data, residual.data, ld_resid, group, lanes_shift(group, 4),
              reinterpret_cast<float*>(wire.data), reinterpret_cast<uint8_t*>(wire.data) + 4 * ngroups,
              z_out.data, bad};
  auto launch = [&]<int NT>() {
    const size_t z_bytes = size_t(per_warp ? kFusedWarps * 16 * r : tile * r) * sizeof(float);
    const size_t w_bytes = size_t(NT * 8) * size_t(fused_w_pitch(int(H))) * sizeof(bf16);
    const bool shared_w = z_bytes + w_bytes <= kFusedMaxSmem;
    const size_t smem = shared_w ? z_bytes + w_bytes : z_bytes;
    auto go = [&](auto kernel, auto... extra) {
      if (smem > (size_t(48) << 10))
        RESBM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      // Persistent: as many blocks as fit at once (W is staged once per block), at most
      // one per 4 units (or tile).
      int per_sm = 0;
      RESBM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kFusedThreads, smem));
      const int64_t resident = int64_t(std::max(per_sm, 1)) * ctx.props.multiProcessorCount;
      const int64_t work = per_warp ? (N + 16 * kFusedWarps - 1) / (16 * kFusedWarps) : (N + tile - 1) / tile;
      const unsigned grid = unsigned(std::min(work, resident));
      kernel<<<grid, kFusedThreads, smem, ctx.stream>>>(p, extra...);
    };
    if (per_warp)
      shared_w ? go(fused_linear_int8_warps<NT, true, A>, a_op) : go(fused_linear_int8_warps<NT, false, A>, a_op);
    else if constexpr (kPlain)  // a transform always has per_warp (checked above)
      shared_w ? go(fused_linear_int8_tiles<NT, true>, int(tile)) : go(fused_linear_int8_tiles<NT, false>, int(tile));
  };
  if (r <= 8)
    launch.template operator()<1>();
  else if (r <= 16)
    launch.template operator()<2>();
  else if (r <= 32)
    launch.template operator()<4>();
  else
    launch.template operator()<8>();
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
