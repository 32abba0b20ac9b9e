#pragma once
// Σ x² over one or more flat fp32 arrays, in double, deterministic: a fixed grid per array,
// each block writes one partial, and one warp adds all partials in a fixed order, so the
// result does not vary from run to run. One read-back (synchronises): the global-norm clip
// of a model, or of every stage and codec half of a pipeline, costs one round trip
// (sum_squares_each_on_device: one sum for each of several equal arrays, left on the device).
#include <cmath>
#include <span>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_sumsq {
constexpr int kBlocks = 1024, kThreads = 256;

// Block b of array y (blockIdx.y; array y at x + y·stride) writes out[y·gridDim.x + b].
__global__ void partial(double* __restrict__ out, const float* __restrict__ x, int64_t n, int64_t stride = 0) {
  __shared__ double sh[kThreads];
  x += blockIdx.y * stride;
  out += blockIdx.y * gridDim.x;
  double s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = x[i];
    s += v * v;
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (int(threadIdx.x) < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

// One warp a block: lane l adds partials l, l+32, ... of block x's n (at partials + x·n) in
// order, then a fixed butterfly, into out[x].
__global__ void final_sum(double* __restrict__ out, const double* __restrict__ partials, int n) {
  partials += int64_t(blockIdx.x) * n;
  out += blockIdx.x;
  double s = 0;
  for (int i = int(threadIdx.x); i < n; i += 32) s += partials[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x == 0) *out = s;
}
}  // namespace cuda_detail_sumsq

// Partials needed by sum_squares_each_on_device for `arrays` arrays (the last `arrays` hold
// the results).
constexpr size_t sum_squares_partials(size_t arrays) { return arrays * size_t(cuda_detail_sumsq::kBlocks + 1); }

// Σ x² of each of `count` arrays of n floats, stride apart from `x`, into
// partials[count · kBlocks + i] for array i (partials: device memory of
// sum_squares_partials(count) doubles; the results are its last `count`).
inline const double* sum_squares_each_on_device(CudaContext& ctx, const float* x, int64_t n, int64_t stride,
                                                int count, double* partials) {
  using namespace cuda_detail_sumsq;
  if (count == 0) return partials;
  partial<<<dim3(kBlocks, unsigned(count)), kThreads, 0, ctx.stream>>>(partials, x, n, stride);
  RESBM_CUDA_LAUNCH_CHECK();
  final_sum<<<unsigned(count), 32, 0, ctx.stream>>>(partials + size_t(count) * kBlocks, partials, kBlocks);
  RESBM_CUDA_LAUNCH_CHECK();
  return partials + size_t(count) * kBlocks;
}

inline double sum_squares(CudaContext& ctx, std::span<const CudaTensor<const float>> arrays) {
  using namespace cuda_detail_sumsq;
  const size_t k = arrays.size();
  auto* partials = static_cast<double*>(ctx.scratch((k * kBlocks + 1) * sizeof(double)));
  size_t i = 0;
  for (const CudaTensor<const float>& a : arrays) {
    partial<<<kBlocks, kThreads, 0, ctx.stream>>>(partials + i * kBlocks, a.data, a.numel());
    RESBM_CUDA_LAUNCH_CHECK();
    ++i;
  }
  final_sum<<<1, 32, 0, ctx.stream>>>(partials + k * kBlocks, partials, int(k * kBlocks));
  RESBM_CUDA_LAUNCH_CHECK();
  double sq = 0;
  RESBM_CUDA_CHECK(cudaMemcpyAsync(&sq, partials + k * kBlocks, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
  ctx.synchronize();
  return sq;
}

}  // namespace resbm::ops
