#pragma once
// Rotary position embedding on bf16 [B,T,H,hd] in place, rotate-half convention (pairs i,
// i + hd/2), position = t, fp32 arithmetic. The cos/sin table is the CPU's RopeTable<float>
// (angles computed in double) copied to the device once.
#include "resbm/ops/cpu/rope.hpp"
#include "resbm/ops/cuda/common.cuh"

namespace resbm::ops {

class CudaRopeTable {
 public:
  explicit CudaRopeTable(const RopeTable<float>& host) : seq_len_(host.seq_len()), head_dim_(host.head_dim()) {
    const size_t n = size_t(seq_len_ * (head_dim_ / 2));
    cos_.resize(n);
    sin_.resize(n);
    if (n) {
      cos_.from_host(host.cos(0), n);
      sin_.from_host(host.sin(0), n);
    }
  }
  CudaRopeTable(int64_t seq_len, int64_t head_dim, double theta = 10000.0)
      : CudaRopeTable(RopeTable<float>(seq_len, head_dim, theta)) {}

  int64_t seq_len() const { return seq_len_; }
  int64_t head_dim() const { return head_dim_; }
  const float* cos() const { return cos_.data(); }  // [seq_len, head_dim/2]
  const float* sin() const { return sin_.data(); }

 private:
  int64_t seq_len_, head_dim_;
  DeviceBuffer<float> cos_, sin_;
};

namespace cuda_detail_rope {
__global__ void apply(bf16* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn, int64_t B,
                      int64_t S, int64_t H, int hd, float sign) {
  using namespace resbm::cuda_detail;
  const int half = hd / 2;
  const int64_t total = B * S * H * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % half);
    const int64_t bsh = idx / half;  // (b*S + t)*H + h
    const int64_t t = (bsh / H) % S;
    bf16* lo = x + bsh * hd + i;
    bf16* hi = lo + half;
    const float a = ldf(lo), b = ldf(hi), c = cs[t * half + i], s = sign * sn[t * half + i];
    stf(lo, a * c - b * s);
    stf(hi, a * s + b * c);
  }
}
inline void launch(CudaContext& ctx, CudaTensor<bf16> x, const CudaRopeTable& table, float sign, const char* what) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), hd = table.head_dim();
  expect_shape(x, {B, S, H, hd}, what);
  RESBM_CHECK(S <= table.seq_len(), cat(what, " has ", S, " positions but the rope table only ", table.seq_len()),
              "build the CudaRopeTable with seq_len >= the sequence length");
  const int64_t total = B * S * H * (hd / 2);
  if (total == 0) return;
  apply<<<cuda_detail::grid_for(total, 256), 256, 0, ctx.stream>>>(x.data, table.cos(), table.sin(), B, S, H,
                                                                   int(hd), sign);
  RESBM_CUDA_LAUNCH_CHECK();
}
}  // namespace cuda_detail_rope

inline void rope_forward(CudaContext& ctx, CudaTensor<bf16> x, const CudaRopeTable& table) {
  cuda_detail_rope::launch(ctx, x, table, 1.0f, "rope input");
}
// In place, like the CPU op (the inverse rotation).
inline void rope_backward(CudaContext& ctx, CudaTensor<bf16> dx, const CudaRopeTable& table) {
  cuda_detail_rope::launch(ctx, dx, table, -1.0f, "rope gradient");
}

}  // namespace resbm::ops
