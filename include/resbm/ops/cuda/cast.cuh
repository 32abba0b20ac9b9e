#pragma once
// bf16 <-> fp32 casts (round to nearest even, NaN stays NaN). Same element count, any shape.
#include <type_traits>

#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

namespace cuda_detail_cast {
template <class From, class To>
__global__ void cast_kernel(To* __restrict__ out, const From* __restrict__ in, int64_t n) {
  using namespace resbm::cuda_detail;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    stf(out + i, ldf(in + i));
}
}  // namespace cuda_detail_cast

template <class From, class To>
  requires((std::is_same_v<From, float> && std::is_same_v<To, bf16>) ||
           (std::is_same_v<From, bf16> && std::is_same_v<To, float>))
void cast(CudaContext& ctx, CudaTensor<To> out, CudaTensor<const From> in) {
  RESBM_CHECK(out.numel() == in.numel(),
              cat("cast of ", in.numel(), " elements into a tensor of ", out.numel()),
              "pass an output with as many elements as the input");
  const int64_t n = in.numel();
  if (n == 0) return;
  cuda_detail_cast::cast_kernel<From, To>
      <<<cuda_detail::grid_for(n, 256), 256, 0, ctx.stream>>>(out.data, in.data, n);
  RESBM_CUDA_LAUNCH_CHECK();
}

inline void cast_to_float(CudaContext& ctx, CudaTensor<float> out, CudaTensor<const bf16> in) {
  cast<bf16, float>(ctx, out, in);
}
inline void cast_to_bf16(CudaContext& ctx, CudaTensor<bf16> out, CudaTensor<const float> in) {
  cast<float, bf16>(ctx, out, in);
}

}  // namespace resbm::ops
