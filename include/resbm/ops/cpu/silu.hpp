#pragma once
// SiLU (Elfwing et al., 2017; a.k.a. swish): out = inp · sigmoid(inp). The nonlinearity of
// the boundary codec's MLPs; swiglu.hpp fuses the same function with a gate product, which
// a plain two-layer MLP has no use for.
#include <cmath>
#include <cstdint>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/fast_math.hpp"

namespace resbm::ops {

template <class T>
void silu_forward(const Context& ctx, Tensor<T> out, Tensor<const T> inp) {
  const int64_t N = inp.size(0), F = inp.size(1);
  expect_shape(inp, {N, F}, "silu input");
  expect_shape(out, {N, F}, "silu output");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* x = inp.data + n * F;
    T* y = out.data + n * F;
    for (int64_t f = 0; f < F; ++f) y[f] = x[f] * sigmoid(x[f]);
  });
}

// With s = sigmoid(x): d silu/dx = s · (1 + x · (1 − s)).  dinp += dout · that.
template <class T>
void silu_backward(const Context& ctx, Tensor<T> dinp, Tensor<const T> dout, Tensor<const T> inp) {
  const int64_t N = inp.size(0), F = inp.size(1);
  expect_shape(inp, {N, F}, "silu input");
  expect_shape(dout, {N, F}, "silu output gradient");
  expect_shape(dinp, {N, F}, "silu input gradient");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* x = inp.data + n * F;
    const T* dy = dout.data + n * F;
    T* dx = dinp.data + n * F;
    for (int64_t f = 0; f < F; ++f) {
      const T s = sigmoid(x[f]);
      dx[f] += dy[f] * s * (T(1) + x[f] * (T(1) - s));
    }
  });
}

}  // namespace resbm::ops
