#pragma once
// Token embedding on the GPU: out[n,:] = table[tokens[n],:] (bf16), and the fp32 table
// gradient dtable[tokens[n],:] += dout[n,:].
//
// Token ids are not checked on the host (that would need a copy and a sync): a forward
// row whose id is out of [0, V) is written as NaN, and the backward skips it, so a bad id
// shows up as a NaN loss rather than a wild read.
//
// NOT deterministic yet: the backward adds with fp32 atomics, so rows that share a token
// are summed in a run-dependent order (differences in the last bits). A sort-by-token
// bucketed version (llm.c's) is the planned replacement.
#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_embedding {
__global__ void fwd(bf16* __restrict__ out, const int32_t* __restrict__ tokens, const bf16* __restrict__ table,
                    int64_t N, int64_t V, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    const int32_t t = tokens[n];
    if (t >= 0 && t < V) out[i] = table[int64_t(t) * C + c];
    else resbm::cuda_detail::stf(out + i, __int_as_float(0x7fc00000));
  }
}
__global__ void bwd(float* __restrict__ dtable, const int32_t* __restrict__ tokens, const bf16* __restrict__ dout,
                    int64_t N, int64_t V, int64_t C) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    const int32_t t = tokens[n];
    if (t >= 0 && t < V) atomicAdd(dtable + int64_t(t) * C + c, resbm::cuda_detail::ldf(dout + i));
  }
}
}  // namespace cuda_detail_embedding

inline void embedding_forward(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<const int32_t> tokens,
                              CudaTensor<const bf16> table) {
  const int64_t N = tokens.size(0), V = table.size(0), C = table.size(1);
  expect_shape(tokens, {N}, "embedding tokens");
  expect_shape(table, {V, C}, "embedding table");
  expect_shape(out, {N, C}, "embedding output");
  if (N * C == 0) return;
  cuda_detail_embedding::fwd<<<cuda_detail::grid_for(N * C, 256), 256, 0, ctx.stream>>>(
      out.data, tokens.data, table.data, N, V, C);
  RESBM_CUDA_LAUNCH_CHECK();
}

inline void embedding_backward(CudaContext& ctx, CudaTensor<float> dtable, CudaTensor<const int32_t> tokens,
                               CudaTensor<const bf16> dout) {
  const int64_t N = tokens.size(0), V = dtable.size(0), C = dtable.size(1);
  expect_shape(tokens, {N}, "embedding tokens");
  expect_shape(dtable, {V, C}, "embedding table gradient");
  expect_shape(dout, {N, C}, "embedding output gradient");
  if (N * C == 0) return;
  cuda_detail_embedding::bwd<<<cuda_detail::grid_for(N * C, 256), 256, 0, ctx.stream>>>(
      dtable.data, tokens.data, dout.data, N, V, C);
  RESBM_CUDA_LAUNCH_CHECK();
}

}  // namespace resbm::ops
