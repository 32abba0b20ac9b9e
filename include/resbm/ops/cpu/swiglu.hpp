#pragma once
// SwiGLU (Shazeer, 2020), the LLaMA MLP nonlinearity: out = silu(gate) · up,
// silu(g) = g · sigmoid(g). gate and up are the two halves of the up-projection.
#include <cmath>
#include <cstdint>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/fast_math.hpp"

namespace resbm::ops {

template <class T>
void swiglu_forward(const Context& ctx, Tensor<T> out, Tensor<const T> gate, Tensor<const T> up) {
  const int64_t N = gate.size(0), F = gate.size(1);
  expect_shape(gate, {N, F}, "swiglu gate");
  expect_shape(up, {N, F}, "swiglu up");
  expect_shape(out, {N, F}, "swiglu output");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* g = gate.data + n * F;
    const T* u = up.data + n * F;
    T* y = out.data + n * F;
    for (int64_t f = 0; f < F; ++f) y[f] = g[f] * sigmoid(g[f]) * u[f];
  });
}

// With s = sigmoid(g): d silu/dg = s · (1 + g · (1 − s)).
//   dgate += dout · up · s · (1 + g · (1 − s)),   dup += dout · g · s.
template <class T>
void swiglu_backward(const Context& ctx, Tensor<T> dgate, Tensor<T> dup, Tensor<const T> dout,
                     Tensor<const T> gate, Tensor<const T> up) {
  const int64_t N = gate.size(0), F = gate.size(1);
  expect_shape(gate, {N, F}, "swiglu gate");
  expect_shape(up, {N, F}, "swiglu up");
  expect_shape(dout, {N, F}, "swiglu output gradient");
  expect_shape(dgate, {N, F}, "swiglu gate gradient");
  expect_shape(dup, {N, F}, "swiglu up gradient");
  parallel_for(ctx, N, [&](int64_t n) {
    const T* g = gate.data + n * F;
    const T* u = up.data + n * F;
    const T* dy = dout.data + n * F;
    T* dg = dgate.data + n * F;
    T* du = dup.data + n * F;
    for (int64_t f = 0; f < F; ++f) {
      const T s = sigmoid(g[f]);
      dg[f] += dy[f] * u[f] * s * (T(1) + g[f] * (T(1) - s));
      du[f] += dy[f] * g[f] * s;
    }
  });
}

}  // namespace resbm::ops
