#pragma once
// Muon's Newton–Schulz iteration on the GPU, the CPU's optim::newton_schulz5 on cuBLASLt:
//   X = in / (‖in‖_F + 1e-7), made wide (transposed when rows > cols), then `steps` times
//     A = X·Xᵀ;  B = b·A + c·A·A;  X = a·X + B·X      (a, b, c) = (3.4445, −4.7750, 2.0315)
//   out = X, transposed back.
// In bf16 with fp32 accumulation, as the reference implementation (Keller Jordan's
// zeropower_via_newtonschulz5 runs in bf16): X, A and B are bf16 matrices, every product an
// ops::gemm / gemm_add with fp32 accumulation, the norm a deterministic fp32 → double sum
// left on the device (no host sync). The result differs from the CPU's fp32 iteration by
// bf16 rounding (~1e-2 relative; the quintic's fixed point is a band of singular values
// [0.7, 1.2], not 1, so rounding does not accumulate across steps).
//
// The wide X is kept r8 × c8, both sizes rounded up to 8 with zero rows and columns, so every
// GEMM has 16-byte rows whatever the matrix (a codec's fc2 is 2 × 256): zero rows of X give
// zero rows and columns of A and B and stay zero, zero columns stay zero, so the padding
// changes nothing. Loading (scale, transpose, pad) and storing (transpose back, unpad) are one
// pass each.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "resbm/ops/cuda/common.cuh"
#include "resbm/ops/cuda/matmul.cuh"
#include "resbm/ops/cuda/sum_squares.cuh"

namespace resbm::ops {

// Working memory of newton_schulz5 (device), sized once for the largest matrix so that an
// optimizer step never allocates.
class CudaNewtonSchulzScratch {
 public:
  // Grows (never shrinks) to fit a rows x cols matrix; contents are not kept.
  void reserve(int64_t rows, int64_t cols) {
    RESBM_CHECK(rows >= 0 && cols >= 0, cat("Newton-Schulz matrix ", rows, " x ", cols, " is negative"),
                "pass sizes >= 0");
    const auto [r, c] = padded(rows, cols);
    if (size_t(r * c) > x_.size()) {
      x_.resize(size_t(r * c));
      y_.resize(size_t(r * c));
    }
    if (size_t(r * r) > a_.size()) {
      a_.resize(size_t(r * r));
      b_.resize(size_t(r * r));
    }
    if (partials_.size() < sum_squares_partials(1)) partials_.resize(sum_squares_partials(1));
  }
  bool fits(int64_t rows, int64_t cols) const {
    const auto [r, c] = padded(rows, cols);
    return size_t(r * c) <= x_.size() && size_t(r * r) <= a_.size() && partials_.size() >= sum_squares_partials(1);
  }

  // The wide orientation's sizes, rounded up to 8: {r8, c8}.
  static std::pair<int64_t, int64_t> padded(int64_t rows, int64_t cols) {
    const int64_t r = std::min(rows, cols), c = std::max(rows, cols);
    return {(r + 7) / 8 * 8, (c + 7) / 8 * 8};
  }

  // The iterates X, Y (r8 x c8), A, B (r8 x r8) and the norm's partials.
  bf16* x() { return x_.data(); }
  bf16* y() { return y_.data(); }
  bf16* a() { return a_.data(); }
  bf16* b() { return b_.data(); }
  double* partials() { return partials_.data(); }

 private:
  DeviceBuffer<bf16> x_, y_, a_, b_;
  DeviceBuffer<double> partials_;
};

namespace cuda_detail_ns {
// X[i, j] (r8 x c8, row-major) = in(i, j) / (sqrt(sq) + 1e-7) in the wide orientation (in
// transposed when tall), 0 in the padding; every element is written.
__global__ void load(bf16* __restrict__ x, const float* __restrict__ in, const double* __restrict__ sq, int64_t rows,
                     int64_t cols, int64_t r8, int64_t c8) {
  const bool tall = rows > cols;
  const int64_t r = tall ? cols : rows, c = tall ? rows : cols;
  const float scale = float(1.0 / (sqrt(*sq) + 1e-7));  // the CPU's: in double, then rounded
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < r8 * c8; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / c8, j = e % c8;
    float v = 0.0f;
    if (i < r && j < c) v = (tall ? in[j * r + i] : in[i * c + j]) * scale;
    resbm::cuda_detail::stf(x + e, v);
  }
}

// out (rows x cols) = X without its padding, transposed back when tall.
__global__ void store(bf16* __restrict__ out, const bf16* __restrict__ x, int64_t rows, int64_t cols, int64_t c8) {
  const bool tall = rows > cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * cols;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e % cols;
    out[e] = tall ? x[j * c8 + i] : x[i * c8 + j];
  }
}
}  // namespace cuda_detail_ns

// out [rows, cols] (bf16) = NewtonSchulz5(in [rows, cols], fp32), row-major; asynchronous.
inline void newton_schulz5(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<const float> in, int steps,
                           CudaNewtonSchulzScratch& scratch) {
  RESBM_CHECK(in.rank == 2, cat("Newton-Schulz input of rank ", in.rank, ", not a matrix"),
              "pass a [rows, cols] tensor");
  const int64_t rows = in.size(0), cols = in.size(1);
  expect_shape(out, {rows, cols}, "Newton-Schulz output");
  RESBM_CHECK(steps >= 0, cat("Newton-Schulz step count ", steps, " is negative"), "pass steps >= 0, e.g. 5");
  RESBM_CHECK(scratch.fits(rows, cols), cat("Newton-Schulz scratch is too small for a ", rows, " x ", cols, " matrix"),
              "reserve(rows, cols) the scratch for the largest matrix first");
  if (rows * cols == 0) return;
  const auto [r8, c8] = CudaNewtonSchulzScratch::padded(rows, cols);
  const CudaTensor<const float> whole(in.data, {rows * cols});
  const double* sq = sum_squares_on_device(ctx, std::span(&whole, 1), scratch.partials());
  bf16 *x = scratch.x(), *y = scratch.y(), *a = scratch.a(), *b = scratch.b();
  cuda_detail_ns::load<<<cuda_detail::grid_for(r8 * c8, 256), 256, 0, ctx.stream>>>(x, in.data, sq, rows, cols, r8,
                                                                                    c8);
  RESBM_CUDA_LAUNCH_CHECK();
  const float ca = 3.4445f, cb = -4.7750f, cc = 2.0315f;
  for (int it = 0; it < steps; ++it) {
    gemm<bf16>(ctx, false, true, r8, r8, c8, 1.0f, x, c8, x, c8, 0.0f, a, r8);  // A = X·Xᵀ
    gemm_add<bf16>(ctx, false, false, r8, r8, r8, cc, a, r8, a, r8, a, b, r8, cb);   // B = c·A·A + b·A
    gemm_add<bf16>(ctx, false, false, r8, c8, r8, 1.0f, b, r8, x, c8, x, y, c8, ca);  // Y = B·X + a·X
    std::swap(x, y);
  }
  cuda_detail_ns::store<<<cuda_detail::grid_for(rows * cols, 256), 256, 0, ctx.stream>>>(out.data, x, rows, cols, c8);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
