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
                      int64_t S, int64_t H, int hd, int64_t ld, float sign) {
  using namespace resbm::cuda_detail;
  const int half = hd / 2;
  const int64_t total = B * S * H * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % half);
    const int64_t bsh = idx / half;  // (b*S + t)*H + h
    const int64_t t = (bsh / H) % S;
    bf16* lo = x + bsh / H * ld + bsh % H * hd + i;
    bf16* hi = lo + half;
    const float a = ldf(lo), b = ldf(hi), c = cs[t * half + i], s = sign * sn[t * half + i];
    stf(lo, a * c - b * s);
    stf(hi, a * s + b * c);
  }
}
// Eight pairs per thread and head: 16-byte loads of both halves, 32-bit index arithmetic
// (a scalar kernel with 2-byte accesses and 64-bit divisions ran at a quarter of the copy
// bandwidth). A thread owns one position's eight pairs and walks its heads, so the 64
// bytes of cos/sin are loaded once per position instead of once per head.
__global__ void apply8(bf16* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                       unsigned positions, unsigned S, unsigned H, unsigned half, unsigned ld, float sign) {
  using namespace resbm::cuda_detail;
  const unsigned per_pos = half / 8, total = positions * per_pos;
  for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const unsigned j = idx % per_pos, bs = idx / per_pos, t = bs % S, i0 = j * 8;
    float c[8], s[8];
    const float4* c4 = reinterpret_cast<const float4*>(cs + size_t(t) * half + i0);
    const float4* s4 = reinterpret_cast<const float4*>(sn + size_t(t) * half + i0);
    for (int q = 0; q < 2; ++q) {
      const float4 cv = c4[q], sv = s4[q];
      c[4 * q] = cv.x, c[4 * q + 1] = cv.y, c[4 * q + 2] = cv.z, c[4 * q + 3] = cv.w;
      s[4 * q] = sign * sv.x, s[4 * q + 1] = sign * sv.y, s[4 * q + 2] = sign * sv.z, s[4 * q + 3] = sign * sv.w;
    }
    bf16* row = x + size_t(bs) * ld + i0;
#pragma unroll 4
    for (unsigned h = 0; h < H; ++h) {
      auto* lo = reinterpret_cast<Pack8*>(row + size_t(h) * (2 * half));
      auto* hi = reinterpret_cast<Pack8*>(row + size_t(h) * (2 * half) + half);
      float a[8], b[8], ol[8], oh[8];
      unpack8(*lo, a);
      unpack8(*hi, b);
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        ol[q] = a[q] * c[q] - b[q] * s[q];
        oh[q] = a[q] * s[q] + b[q] * c[q];
      }
      *lo = pack8(ol);
      *hi = pack8(oh);
    }
  }
}

inline void launch(CudaContext& ctx, CudaTensor<bf16> x, const CudaRopeTable& table, float sign, const char* what,
                   int64_t ld) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), hd = table.head_dim();
  expect_shape(x, {B, S, H, hd}, what);
  if (ld == 0) ld = H * hd;
  RESBM_CHECK(ld >= H * hd, cat(what, ": row stride ", ld, " is shorter than a row of ", H * hd),
              "pass 0 (contiguous rows) or the distance between positions' rows");
  RESBM_CHECK(S <= table.seq_len(), cat(what, " has ", S, " positions but the rope table only ", table.seq_len()),
              "build the CudaRopeTable with seq_len >= the sequence length");
  const int64_t total = B * S * H * (hd / 2);
  if (total == 0) return;
  if (hd % 16 == 0 && ld % 8 == 0 && cuda_detail::aligned16(x.data) && B * S * ld < (int64_t(1) << 32)) {
    const int64_t positions = B * S;
    apply8<<<cuda_detail::grid_for(positions * (hd / 16), 256), 256, 0, ctx.stream>>>(
        x.data, table.cos(), table.sin(), unsigned(positions), unsigned(S), unsigned(H), unsigned(hd / 2),
        unsigned(ld), sign);
    RESBM_CUDA_LAUNCH_CHECK();
    return;
  }
  apply<<<cuda_detail::grid_for(total, 256), 256, 0, ctx.stream>>>(x.data, table.cos(), table.sin(), B, S, H,
                                                                   int(hd), ld, sign);
  RESBM_CUDA_LAUNCH_CHECK();
}
}  // namespace cuda_detail_rope

// ld: elements from one position's row (H heads of hd) to the next; 0 = H·hd (contiguous).
inline void rope_forward(CudaContext& ctx, CudaTensor<bf16> x, const CudaRopeTable& table, int64_t ld = 0) {
  cuda_detail_rope::launch(ctx, x, table, 1.0f, "rope input", ld);
}
// In place, like the CPU op (the inverse rotation).
inline void rope_backward(CudaContext& ctx, CudaTensor<bf16> dx, const CudaRopeTable& table, int64_t ld = 0) {
  cuda_detail_rope::launch(ctx, dx, table, -1.0f, "rope gradient", ld);
}

}  // namespace resbm::ops
