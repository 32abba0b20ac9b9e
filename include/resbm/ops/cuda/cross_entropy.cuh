#pragma once
// Cross entropy from bf16 logits [N,V], softmax and loss in fp32, one block per row.
// Rows may be ld >= V elements apart (ld = 0 means V): a vocabulary that is not a multiple
// of 8 keeps 16-byte rows for cuBLASLt by padding the logits, not the model.
//   cross_entropy_forward:  losses[n] (fp32, device) = logsumexp(logits[n]) − logits[n, t_n].
//                           Asynchronous: it returns nothing; cross_entropy_mean() copies
//                           the losses back and sums them in double in row order (syncs).
//   cross_entropy_backward: dlogits = scale · (softmax(logits) − onehot(targets)), bf16,
//                           WRITTEN (=), not added as the CPU op does: dlogits is a scratch
//                           buffer that only the head's matmul_backward reads.
// Targets are not checked on the host: a target out of [0, V) gives a NaN loss and a NaN
// gradient row.
#include <vector>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_ce {
constexpr int kThreads = 256;

// Row max and Σ exp(l − max) over the block, online per thread, then combined.
__device__ inline void row_stats(const bf16* __restrict__ l, int64_t V, float& max_out, float& sum_out) {
  using namespace resbm::cuda_detail;
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  float m = -INFINITY, s = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = ldf(l + v);
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  // combine across the warp
  const float wm = warp_max(m);
  s = (m == -INFINITY) ? 0.0f : s * expf(m - wm);
  s = warp_sum(s);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = wm;
    ss[warp] = s;
  }
  __syncthreads();
  float bm = -INFINITY;
  for (int w = 0; w < kThreads / 32; ++w) bm = fmaxf(bm, sm[w]);
  float bs = 0;
  for (int w = 0; w < kThreads / 32; ++w) bs += (sm[w] == -INFINITY) ? 0.0f : ss[w] * expf(sm[w] - bm);
  max_out = bm;
  sum_out = bs;
}

__global__ void __launch_bounds__(kThreads) fwd(float* __restrict__ losses, const bf16* __restrict__ logits,
                                                const int32_t* __restrict__ targets, int64_t V, int64_t ld) {
  using namespace resbm::cuda_detail;
  const int64_t n = blockIdx.x;
  const bf16* l = logits + n * ld;
  float m, s;
  row_stats(l, V, m, s);
  if (threadIdx.x == 0) {
    const int32_t t = targets[n];
    losses[n] = (t >= 0 && t < V) ? logf(s) + m - ldf(l + t) : __int_as_float(0x7fc00000);
  }
}

__global__ void __launch_bounds__(kThreads) bwd(bf16* __restrict__ dlogits, const bf16* __restrict__ logits,
                                                const int32_t* __restrict__ targets, int64_t V, int64_t ld,
                                                float scale) {
  using namespace resbm::cuda_detail;
  const int64_t n = blockIdx.x;
  const bf16* l = logits + n * ld;
  float m, s;
  row_stats(l, V, m, s);
  const int32_t t = targets[n];
  const bool ok = t >= 0 && t < V;
  const float k = scale / s;
  bf16* dl = dlogits + n * ld;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float g = expf(ldf(l + v) - m) * k - (v == t ? scale : 0.0f);
    stf(dl + v, ok ? g : __int_as_float(0x7fc00000));
  }
}
}  // namespace cuda_detail_ce

inline void cross_entropy_forward(CudaContext& ctx, CudaTensor<float> losses, CudaTensor<const bf16> logits,
                                  CudaTensor<const int32_t> targets, int64_t ld = 0) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (ld == 0) ld = V;
  RESBM_CHECK(ld >= V, cat("cross entropy row stride ", ld, " < vocabulary ", V), "pass ld >= V (or 0)");
  expect_shape(logits, {N, V}, "cross entropy logits");
  expect_shape(targets, {N}, "cross entropy targets");
  expect_shape(losses, {N}, "cross entropy losses");
  RESBM_CHECK(V > 0 || N == 0, "cross entropy over an empty vocabulary", "pass logits with V >= 1");
  if (N == 0) return;
  cuda_detail_ce::fwd<<<unsigned(N), cuda_detail_ce::kThreads, 0, ctx.stream>>>(losses.data, logits.data,
                                                                               targets.data, V, ld);
  RESBM_CUDA_LAUNCH_CHECK();
}

// The mean of the losses, summed in double in row order on the host (synchronises).
inline double cross_entropy_mean(CudaContext& ctx, CudaTensor<const float> losses) {
  const int64_t N = losses.numel();
  if (N == 0) {
    ctx.synchronize();  // always: callers read other results that were queued before it
    return 0.0;
  }
  std::vector<float> h(static_cast<size_t>(N));
  RESBM_CUDA_CHECK(cudaMemcpyAsync(h.data(), losses.data, size_t(N) * sizeof(float), cudaMemcpyDeviceToHost,
                                   ctx.stream));
  ctx.synchronize();
  double total = 0;
  for (float x : h) total += double(x);
  return total / double(N);
}

inline void cross_entropy_backward(CudaContext& ctx, CudaTensor<bf16> dlogits, CudaTensor<const bf16> logits,
                                   CudaTensor<const int32_t> targets, float scale, int64_t ld = 0) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (ld == 0) ld = V;
  RESBM_CHECK(ld >= V, cat("cross entropy row stride ", ld, " < vocabulary ", V), "pass ld >= V (or 0)");
  expect_shape(logits, {N, V}, "cross entropy logits");
  expect_shape(targets, {N}, "cross entropy targets");
  expect_shape(dlogits, {N, V}, "cross entropy logits gradient");
  RESBM_CHECK(V > 0 || N == 0, "cross entropy over an empty vocabulary", "pass logits with V >= 1");
  if (N == 0) return;
  cuda_detail_ce::bwd<<<unsigned(N), cuda_detail_ce::kThreads, 0, ctx.stream>>>(dlogits.data, logits.data,
                                                                               targets.data, V, ld, scale);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
