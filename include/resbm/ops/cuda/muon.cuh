#pragma once
// Muon's elementwise steps on the GPU, around ops::newton_schulz5 (the CPU's are inline in
// resbm/optim/muon.hpp; optim::CudaMuon runs all three per matrix):
//   muon_momentum:  g ← grad_scale · g;  buf = μ·buf + g;  u = nesterov ? g + μ·buf : buf
//   muon_apply:     p = p·shrink − alpha·O  (O the orthogonalised update, bf16), and the bf16
//                   copy of p that the next forward reads
#include <cstdint>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_muon {
__global__ void momentum(float* __restrict__ buf, float* __restrict__ u, const float* __restrict__ g, int64_t n,
                         float mu, bool nesterov, float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    const float b = mu * buf[i] + gi;
    buf[i] = b;
    u[i] = nesterov ? gi + mu * b : b;
  }
}

__global__ void apply(float* __restrict__ p, bf16* __restrict__ p16, const bf16* __restrict__ o, int64_t n,
                      float shrink, float alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float pi = p[i] * shrink - alpha * resbm::cuda_detail::ldf(o + i);
    p[i] = pi;
    resbm::cuda_detail::stf(p16 + i, pi);
  }
}
}  // namespace cuda_detail_muon

inline void muon_momentum(CudaContext& ctx, CudaTensor<float> buf, CudaTensor<float> u, CudaTensor<const float> g,
                          float mu, bool nesterov, float grad_scale) {
  const int64_t n = g.numel();
  RESBM_CHECK(buf.numel() == n && u.numel() == n,
              cat("Muon momentum arrays of different sizes (grad ", n, ", momentum ", buf.numel(), ", update ",
                  u.numel(), ")"),
              "pass the momentum, update and gradient of one matrix");
  if (n == 0) return;
  cuda_detail_muon::momentum<<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(buf.data, u.data, g.data, n, mu,
                                                                                   nesterov, grad_scale);
  RESBM_CUDA_LAUNCH_CHECK();
}

inline void muon_apply(CudaContext& ctx, CudaTensor<float> params, CudaTensor<bf16> params_bf16,
                       CudaTensor<const bf16> update, float shrink, float alpha) {
  const int64_t n = params.numel();
  RESBM_CHECK(params_bf16.numel() == n && update.numel() == n,
              cat("Muon update arrays of different sizes (params ", n, ", bf16 copy ", params_bf16.numel(),
                  ", update ", update.numel(), ")"),
              "pass the weights, their bf16 copy and the update of one matrix");
  if (n == 0) return;
  cuda_detail_muon::apply<<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(params.data, params_bf16.data,
                                                                                update.data, n, shrink, alpha);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
