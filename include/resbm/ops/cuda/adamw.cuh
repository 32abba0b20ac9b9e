#pragma once
// AdamW on the GPU over flat fp32 arrays: fp32 master weights, fp32 m and v, fp32 grads,
// and a bf16 copy of the updated weights for the next forward (skipped when its view is
// empty). The update is exactly the CPU optimizer's (resbm/optim/adamw.hpp, PyTorch's
// AdamW): bias corrections are computed on the host in double for step t (1-based).
//   m = b1·m + (1−b1)·g;  v = b2·v + (1−b2)·g²
//   p = p·(1 − lr·wd) − lr/(1−b1^t) · m / (sqrt(v)/sqrt(1−b2^t) + eps)
// grad_scale multiplies g first (e.g. a clipping factor). Pass weight_decay = 0 for gains.
#include <cmath>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

struct CudaAdamWStep {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
  int64_t t = 1;            // the step being taken, 1-based
  float grad_scale = 1.0f;  // g ← grad_scale · g
};

namespace cuda_detail_adamw {
__global__ void update(float* __restrict__ p, bf16* __restrict__ p16, const float* __restrict__ g,
                       float* __restrict__ m, float* __restrict__ v, int64_t n, float b1, float b2, float eps,
                       float step_size, float bc2_sqrt, float keep, float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    const float pi = p[i] * keep - step_size * (mi / denom);
    p[i] = pi;
    if (p16) resbm::cuda_detail::stf(p16 + i, pi);
  }
}
}  // namespace cuda_detail_adamw

inline void adamw_update(CudaContext& ctx, CudaTensor<float> params, CudaTensor<bf16> params_bf16,
                         CudaTensor<const float> grads, CudaTensor<float> m, CudaTensor<float> v,
                         const CudaAdamWStep& s) {
  const int64_t n = params.numel();
  RESBM_CHECK(grads.numel() == n && m.numel() == n && v.numel() == n &&
                  (params_bf16.data == nullptr || params_bf16.numel() == n),
              cat("AdamW arrays of different sizes (params ", n, ", grads ", grads.numel(), ", m ", m.numel(),
                  ", v ", v.numel(), ", bf16 copy ", params_bf16.numel(), ")"),
              "pass params, grads, m, v (and the bf16 copy) of one layout");
  RESBM_CHECK(s.t >= 1, cat("AdamW step ", s.t, " is not >= 1"), "pass the 1-based step number");
  if (n == 0) return;
  const double t = double(s.t);
  const float step_size = float(double(s.lr) / (1.0 - std::pow(double(s.beta1), t)));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(double(s.beta2), t)));
  const float keep = 1.0f - s.lr * s.weight_decay;
  cuda_detail_adamw::update<<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(
      params.data, params_bf16.data, grads.data, m.data, v.data, n, s.beta1, s.beta2, s.eps, step_size, bc2_sqrt,
      keep, s.grad_scale);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
