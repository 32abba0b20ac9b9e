#pragma once
// What the CUDA tests share. Including this is what makes a CUDA test skip (exit 77) where
// there is no GPU, so a test cannot leave the gate out. Inputs are bf16-rounded Philox draws
// so that host references and kernels read the same values; outputs are poisoned (NaN, or
// 0x80 wire bytes with a guard past the end) so that an element a kernel never writes fails.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "resbm/core/context.hpp"
#include "resbm/core/dtype.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/ops/cpu/ops.hpp"
#include "resbm/ops/cuda/context.cuh"
#include "support/catch.hpp"
#include "support/errors.hpp"

namespace resbm::test {

// Leaves before Catch2 starts, with the code ctest reports as skipped (CI has no GPU).
struct GpuGate {
  GpuGate() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      std::printf("no CUDA device: skipped\n");
      std::fflush(stdout);
      std::_Exit(77);
    }
  }
};
inline const GpuGate gpu_gate;

// One device context for the whole executable: plans and scratch are reused across tests.
inline CudaContext& ctx() {
  static CudaContext c(0);
  return c;
}
inline Context& host() {
  static Context c(0);
  return c;
}

// Each draw takes a fresh Philox stream, so no two inputs of a run are correlated.
inline uint64_t next_stream() {
  static uint64_t s = 1000;
  return s++;
}

// normal(shift, scale) values, rounded to bf16 so host and device see the same inputs.
inline std::vector<float> randn(size_t n, float scale = 1.0f, float shift = 0.0f) {
  const uint64_t s = next_stream();
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = round_bf16(shift + scale * Philox::normal(0x5eed, s, i));
  return v;
}
inline std::vector<int32_t> rand_ids(size_t n, int32_t V) {
  const uint64_t s = next_stream();
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(Philox::bits64(0x5eed, s, i) % uint64_t(V));
  return v;
}

inline std::vector<bf16> to_bf16(const std::vector<float>& f) {
  std::vector<bf16> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = bf16::from_float(f[i]);
  return b;
}
inline std::vector<float> to_float(const std::vector<bf16>& b) {
  std::vector<float> f(b.size());
  for (size_t i = 0; i < b.size(); ++i) f[i] = b[i].to_float();
  return f;
}

// h, followed by `extra` poisoned (0xff) elements: slack a kernel must not read as data,
// or what keeps the buffer from being empty (a null pointer) when h is.
template <class T>
DeviceBuffer<T> upload(const std::vector<T>& h, size_t extra = 0) {
  DeviceBuffer<T> d(h.size() + extra);
  if (extra) d.fill_bytes(0xff);
  d.from_host(h.data(), h.size());
  return d;
}
inline DeviceBuffer<bf16> upload_bf16(const std::vector<float>& h) { return upload(to_bf16(h)); }

template <class T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> d(n);
  d.fill_bytes(0xff);  // NaN as float and as bf16
  return d;
}

// The first n elements at p (device memory, float or bf16) as floats, after ctx()'s work.
template <class T>
std::vector<float> download(const T* p, size_t n) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>);
  ctx().synchronize();
  std::vector<T> h(n);
  if (n) RESBM_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  if constexpr (std::is_same_v<T, float>)
    return h;
  else
    return to_float(h);
}
template <class T>
std::vector<float> download(const DeviceBuffer<T>& d, size_t n) {
  REQUIRE(n <= d.size());
  return download(d.data(), n);
}
template <class T>
std::vector<float> download(const DeviceBuffer<T>& d) {
  return download(d.data(), d.size());
}

// ‖a − b‖ / ‖b‖ in double; infinite when a holds a NaN or an infinity. ‖b‖² is taken as at
// least n · min_ms, since a relative error against a reference that is only rounding noise
// says nothing about a kernel; with min_ms 0, an all-zero reference gives ‖a − b‖.
inline double rel_err(const float* a, const float* b, size_t n, double min_ms = 0) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    const double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  den = std::max(den, double(n) * min_ms);
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b, double min_ms = 0) {
  REQUIRE(a.size() == b.size());
  return rel_err(a.data(), b.data(), a.size(), min_ms);
}

// Below this mean square (inputs are unit normals: RMS 1e-4) a reference counts as zero: at
// T = 1 the exact dq and dk are 0, the CPU's rounding leaves ~1e-8 and the GPU's fp32 ~5e-8
// there, and a relative error against rounding noise says nothing about the kernel.
constexpr double kNoise = 1e-8;
constexpr double kBf16 = 1e-2;  // outputs rounded to bf16 (unit roundoff 2^-9 ≈ 2e-3)
constexpr double kF32 = 1e-5;   // fp32 outputs from bf16 inputs

// rel_err(out, ref, kNoise) printed (the errors are the tests' record) and bounded.
#define CHECK_REL(out, ref, bound)                                                          \
  do {                                                                                      \
    const double e_ = rel_err(out, ref, resbm::test::kNoise);                               \
    std::printf("  %-46s rel err %.3e (bound %.0e)\n", #out, e_, double(bound));             \
    CHECK(e_ < (bound));                                                                    \
  } while (0)

// Wire buffers: 0x80 is never a code (codes are in [-127, 127]) and 0x80808080 is a
// negative scale, so poisoned bytes left in place cannot pass for a payload; the guard of
// kGuard bytes past the payload catches overruns.
inline constexpr size_t kGuard = 64;
inline constexpr std::byte kPoison{0x80};
inline DeviceBuffer<std::byte> poisoned_wire(size_t bytes) {
  DeviceBuffer<std::byte> d(bytes + kGuard);
  d.fill_bytes(int(kPoison));
  return d;
}
inline std::vector<std::byte> download_bytes(const DeviceBuffer<std::byte>& d) {
  ctx().synchronize();
  return d.to_host();
}
// Index of the first byte of got that differs from want, or past want's bytes no longer
// holds the poison; -1 where there is none.
inline int64_t first_diff(const std::vector<std::byte>& got, const std::vector<std::byte>& want) {
  REQUIRE(got.size() >= want.size());
  for (size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) return int64_t(i);
  for (size_t i = want.size(); i < got.size(); ++i)
    if (got[i] != kPoison) return int64_t(i);
  return -1;
}

// Natural-log log-sum-exp of the scaled causal scores, [B, H, T], in double.
inline std::vector<float> reference_lse(const std::vector<float>& q, const std::vector<float>& k, int64_t B, int64_t T,
                                        int64_t H, int64_t hd) {
  std::vector<float> out(size_t(B * H * T));
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> s(static_cast<size_t>(T));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        double m = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double d = 0;
          for (int64_t x = 0; x < hd; ++x)
            d += double(q[size_t(((b * T + i) * H + h) * hd + x)]) * double(k[size_t(((b * T + j) * H + h) * hd + x)]);
          s[size_t(j)] = d * scale;
          m = std::max(m, s[size_t(j)]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(s[size_t(j)] - m);
        out[size_t((b * H + h) * T + i)] = float(m + std::log(sum));
      }
  return out;
}

// Random attention inputs q, k, v, dout (unit normals, bf16-rounded, [B, T, H, hd]) and the
// CPU op's output and gradients (of ⟨dout, out⟩): what the attention tests compare against.
struct AttentionReference {
  std::vector<float> q, k, v, dout, out, dq, dk, dv;
};
inline AttentionReference attention_reference(int64_t B, int64_t T, int64_t H, int64_t hd) {
  const size_t n = size_t(B * T * H * hd);
  AttentionReference r{randn(n), randn(n), randn(n), randn(n), std::vector<float>(n), std::vector<float>(n, 0.0f),
                       std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f)};
  std::vector<float> cache(size_t(ops::attention_cache_size(B, T, H)));
  auto T4 = [&](std::vector<float>& x) { return Tensor<float>(x.data(), {B, T, H, hd}); };
  auto C4 = [&](const std::vector<float>& x) { return Tensor<const float>(x.data(), {B, T, H, hd}); };
  ops::attention_forward<float>(host(), T4(r.out), Tensor<float>(cache.data(), {int64_t(cache.size())}), C4(r.q),
                                C4(r.k), C4(r.v));
  ops::attention_backward<float>(host(), T4(r.dq), T4(r.dk), T4(r.dv), C4(r.dout),
                                 Tensor<const float>(cache.data(), {int64_t(cache.size())}), C4(r.q), C4(r.k),
                                 C4(r.v), C4(r.out));
  return r;
}

// Gradient p (0 dq, 1 dk, 2 dv) out of the three written into one buffer (all): rows of C
// elements, row stride G, gradient p starting p·off elements in.
inline std::vector<float> gradient(const std::vector<float>& all, size_t rows, size_t C, size_t G, size_t off, int p) {
  std::vector<float> r(rows * C);
  for (size_t row = 0; row < rows; ++row)
    for (size_t c = 0; c < C; ++c) r[row * C + c] = all[size_t(p) * off + row * G + c];
  return r;
}

// x[i] = a bf16 in [-2, 2) from a hash of i: inputs for the timings without a host round trip.
static __global__ void fill_hash(bf16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    x[i] = bf16::from_float(float(h & 0xffff) / 16384.0f - 2.0f);
  }
}

// Mean ms of f() over reps runs on ctx()'s stream, after one warm-up run.
template <class F>
float time_ms(F&& f, int reps) {
  f();  // warm-up (also the one-time smem opt-in)
  cudaEvent_t a, b;
  RESBM_CUDA_CHECK(cudaEventCreate(&a));
  RESBM_CUDA_CHECK(cudaEventCreate(&b));
  RESBM_CUDA_CHECK(cudaEventRecord(a, ctx().stream));
  for (int i = 0; i < reps; ++i) f();
  RESBM_CUDA_CHECK(cudaEventRecord(b, ctx().stream));
  RESBM_CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  RESBM_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  RESBM_CUDA_CHECK(cudaEventDestroy(a));
  RESBM_CUDA_CHECK(cudaEventDestroy(b));
  return ms / float(reps);
}

// The first element of got off want by more than atol + rtol·|want| (or not finite), as a
// flat index (-1 if none), and how many are. Diagnostics only: the bounds are rel_err's.
struct Mismatch {
  int64_t first = -1, count = 0;
};
inline Mismatch find_mismatch(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol) {
  Mismatch m;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (!std::isfinite(got[i]) || d > atol + rtol * std::fabs(double(want[i]))) {
      if (m.first < 0) m.first = int64_t(i);
      ++m.count;
    }
  }
  return m;
}

}  // namespace resbm::test
