#pragma once
// Muon's Newton–Schulz iteration on the GPU, the CPU's optim::newton_schulz5 on cuBLASLt, for
// one matrix or a batch of equal ones (every step one batched GEMM for the whole batch):
//   X = in / (‖in‖_F + 1e-7), made wide (transposed when rows > cols), then `steps` times
//     A = X·Xᵀ;  B = b·A + c·A·A;  X = a·X + B·X      (a, b, c) = (3.4445, −4.7750, 2.0315)
//   out = X, transposed back.
// In bf16 with fp32 accumulation, as the reference implementation (Keller Jordan's
// zeropower_via_newtonschulz5 runs in bf16): X, A and B are bf16 matrices, every product an
// ops::gemm_batched / gemm_add_batched with fp32 accumulation, each norm a deterministic
// fp32 → double sum left on the device (no host sync). The result differs from the CPU's fp32
// iteration by bf16 rounding: ~2e-3 relative after one step, ~1e-2 after five (the quintic
// leaves the singular values in a band [0.7, 1.2] where its slope reaches ~1.5, so a rounding
// difference can grow a little each step; test_cuda_muon has the measured figures).
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

// The most matrices one newton_schulz5 call takes: its passes put the matrix in blockIdx.y.
inline constexpr int64_t kMaxNewtonSchulzBatch = 65535;

// Working memory of newton_schulz5 (device), sized once for the largest batch so that an
// optimizer step never allocates.
class CudaNewtonSchulzScratch {
 public:
  // Grows (never shrinks) to fit `count` rows x cols matrices; contents are not kept.
  void reserve(int64_t rows, int64_t cols, int64_t count = 1) {
    RESBM_CHECK(rows >= 0 && cols >= 0 && count >= 0,
                cat("Newton-Schulz batch of ", count, " ", rows, " x ", cols, " matrices is negative"),
                "pass sizes >= 0");
    const Sizes n = sizes(rows, cols, count);
    if (n.xy > x_.size()) {
      x_.resize(n.xy);
      y_.resize(n.xy);
    }
    if (n.ab > a_.size()) {
      a_.resize(n.ab);
      b_.resize(n.ab);
    }
    if (n.partials > partials_.size()) partials_.resize(n.partials);
  }
  bool fits(int64_t rows, int64_t cols, int64_t count = 1) const {
    const Sizes n = sizes(rows, cols, count);
    return n.xy <= x_.size() && n.ab <= a_.size() && n.partials <= partials_.size();
  }

  // The wide orientation's sizes, rounded up to 8: {r8, c8}.
  static std::pair<int64_t, int64_t> padded(int64_t rows, int64_t cols) {
    const int64_t r = std::min(rows, cols), c = std::max(rows, cols);
    return {(r + 7) / 8 * 8, (c + 7) / 8 * 8};
  }

  // The iterates X, Y (count x r8 x c8), A, B (count x r8 x r8) and the norms' partials.
  bf16* x() { return x_.data(); }
  bf16* y() { return y_.data(); }
  bf16* a() { return a_.data(); }
  bf16* b() { return b_.data(); }
  double* partials() { return partials_.data(); }

 private:
  struct Sizes {
    size_t xy, ab, partials;  // elements of each of X and Y, of each of A and B, of the partials
  };
  static Sizes sizes(int64_t rows, int64_t cols, int64_t count) {
    const auto [r, c] = padded(rows, cols);
    return {size_t(count * r * c), size_t(count * r * r), sum_squares_partials(size_t(count))};
  }

  DeviceBuffer<bf16> x_, y_, a_, b_;
  DeviceBuffer<double> partials_;
};

namespace cuda_detail_ns {
// Matrix m = blockIdx.y: X_m[i, j] (r8 x c8, row-major) = in_m(i, j) / (sqrt(sq[m]) + 1e-7)
// in the wide orientation (in transposed when tall), 0 in the padding; every element is
// written.
__global__ void load(bf16* __restrict__ x, const float* __restrict__ in, const double* __restrict__ sq, int64_t rows,
                     int64_t cols, int64_t r8, int64_t c8) {
  const int64_t m = blockIdx.y;
  x += m * r8 * c8;
  in += m * rows * cols;
  const bool tall = rows > cols;
  const int64_t r = tall ? cols : rows, c = tall ? rows : cols;
  const float scale = float(1.0 / (sqrt(sq[m]) + 1e-7));  // the CPU's: in double, then rounded
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < r8 * c8; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / c8, j = e % c8;
    float v = 0.0f;
    if (i < r && j < c) v = (tall ? in[j * r + i] : in[i * c + j]) * scale;
    resbm::cuda_detail::stf(x + e, v);
  }
}

// Matrix m = blockIdx.y: out_m (rows x cols) = X_m without its padding, transposed back when
// tall.
__global__ void store(bf16* __restrict__ out, const bf16* __restrict__ x, int64_t rows, int64_t cols, int64_t r8,
                      int64_t c8) {
  const int64_t m = blockIdx.y;
  out += m * rows * cols;
  x += m * r8 * c8;
  const bool tall = rows > cols;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < rows * cols;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e % cols;
    out[e] = tall ? x[j * c8 + i] : x[i * c8 + j];
  }
}
}  // namespace cuda_detail_ns

// out = NewtonSchulz5(in), fp32 in, bf16 out, each matrix on its own: [rows, cols] or a
// batch [count, rows, cols] (row-major, contiguous), whose matrices share every launch
// (batched GEMMs: Muon's q, k, v, o of all layers are one batch); asynchronous.
inline void newton_schulz5(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<const float> in, int steps,
                           CudaNewtonSchulzScratch& scratch) {
  RESBM_CHECK(in.rank == 2 || in.rank == 3,
              cat("Newton-Schulz input of rank ", in.rank, ", not a matrix or a batch of matrices"),
              "pass a [rows, cols] or [count, rows, cols] tensor");
  const int64_t count = in.rank == 3 ? in.size(0) : 1, rows = in.size(in.rank - 2), cols = in.size(in.rank - 1);
  RESBM_CHECK(out.numel() == count * rows * cols && out.size(out.rank - 1) == cols,
              cat("Newton-Schulz output ", shape_str(out.shape, out.rank), " for an input ",
                  shape_str(in.shape, in.rank)),
              "pass an output of the input's shape");
  RESBM_CHECK(steps >= 0, cat("Newton-Schulz step count ", steps, " is negative"), "pass steps >= 0, e.g. 5");
  RESBM_CHECK(count <= kMaxNewtonSchulzBatch,
              cat("Newton-Schulz batch of ", count, " matrices is above ", kMaxNewtonSchulzBatch,
                  " (a grid dimension)"),
              "split the batch");
  RESBM_CHECK(scratch.fits(rows, cols, count),
              cat("Newton-Schulz scratch is too small for ", count, " ", rows, " x ", cols, " matrices"),
              "reserve(rows, cols, count) the scratch for the largest batch first");
  if (count * rows * cols == 0) return;
  const auto [r8, c8] = CudaNewtonSchulzScratch::padded(rows, cols);
  const double* sq = sum_squares_each_on_device(ctx, in.data, rows * cols, rows * cols, int(count), scratch.partials());
  bf16 *x = scratch.x(), *y = scratch.y(), *a = scratch.a(), *b = scratch.b();
  const dim3 grid(cuda_detail::grid_for(r8 * c8, 256, 4096), unsigned(count));
  cuda_detail_ns::load<<<grid, 256, 0, ctx.stream>>>(x, in.data, sq, rows, cols, r8, c8);
  RESBM_CUDA_LAUNCH_CHECK();
  const float ca = 3.4445f, cb = -4.7750f, cc = 2.0315f;
  const int64_t sx = r8 * c8, sa = r8 * r8;
  for (int it = 0; it < steps; ++it) {
    gemm_batched<bf16>(ctx, false, true, r8, r8, c8, 1.0f, x, c8, sx, x, c8, sx, 0.0f, a, r8, sa, count);  // A = X·Xᵀ
    gemm_add_batched<bf16>(ctx, false, false, r8, r8, r8, cc, a, r8, sa, a, r8, sa, cb, a, b, r8, sa,
                           count);  // B = c·A·A + b·A
    gemm_add_batched<bf16>(ctx, false, false, r8, c8, r8, 1.0f, b, r8, sa, x, c8, sx, ca, x, y, c8, sx,
                           count);  // Y = B·X + a·X
    std::swap(x, y);
  }
  cuda_detail_ns::store<<<dim3(cuda_detail::grid_for(rows * cols, 256, 4096), unsigned(count)), 256, 0, ctx.stream>>>(
      out.data, x, rows, cols, r8, c8);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
