#pragma once
// Rotary position embedding (Su et al., 2021), rotate-half convention as in LLaMA/HF: for
// i < hd/2 the pair (x[i], x[i + hd/2]) at position t is rotated by t · theta^(-2i/hd).
// Pairing a lane with the one half a head away keeps both halves contiguous, so the inner
// loop is two plain vector streams.
#include <cmath>
#include <cstdint>

#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::ops {

template <class T>
class RopeTable {
 public:
  RopeTable(int64_t seq_len, int64_t head_dim, double theta = 10000.0)
      : seq_len_(seq_len), head_dim_(head_dim) {
    RESBM_CHECK(seq_len >= 0, cat("rope seq_len ", seq_len, " is negative"), "pass seq_len >= 0");
    RESBM_CHECK(head_dim > 0 && head_dim % 2 == 0, cat("rope head_dim ", head_dim, " is not even"),
                "choose d_model / n_heads even");
    RESBM_CHECK(theta > 0, cat("rope theta ", theta, " is not positive"), "pass theta > 0 (e.g. 10000)");
    const int64_t half = head_dim / 2;
    cos_.resize(size_t(seq_len * half));
    sin_.resize(size_t(seq_len * half));
    // Angles in double: t · freq reaches thousands of radians, where a float angle has
    // already lost the low bits that decide the rotation; cast only the final cos/sin.
    for (int64_t i = 0; i < half; ++i) {
      const double freq = std::pow(theta, -2.0 * double(i) / double(head_dim));
      for (int64_t t = 0; t < seq_len; ++t) {
        const double a = double(t) * freq;
        cos_[size_t(t * half + i)] = T(std::cos(a));
        sin_[size_t(t * half + i)] = T(std::sin(a));
      }
    }
  }

  int64_t seq_len() const { return seq_len_; }
  int64_t head_dim() const { return head_dim_; }
  // cos/sin of position t, head_dim/2 entries each.
  const T* cos(int64_t t) const { return cos_.data() + t * (head_dim_ / 2); }
  const T* sin(int64_t t) const { return sin_.data() + t * (head_dim_ / 2); }

 private:
  int64_t seq_len_, head_dim_;
  Buffer<T> cos_, sin_;
};

namespace detail {
// sign = +1 rotates by +angle (forward), -1 by -angle (backward: the transpose of a rotation
// is its inverse, so the gradient goes back through the rotation the other way).
template <class T>
void rope_apply(const Context& ctx, Tensor<T> x, const RopeTable<T>& table, T sign, const char* what) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2), hd = table.head_dim();
  expect_shape(x, {B, S, H, hd}, what);
  RESBM_CHECK(S <= table.seq_len(),
              cat(what, " has ", S, " positions but the rope table only ", table.seq_len()),
              "build the RopeTable with seq_len >= the sequence length");
  const int64_t half = hd / 2;
  parallel_for(ctx, B * S, [&](int64_t bs) {
    const int64_t t = bs % S;
    const T* cs = table.cos(t);
    const T* sn = table.sin(t);
    for (int64_t h = 0; h < H; ++h) {
      T* lo = x.data + (bs * H + h) * hd;
      T* hi = lo + half;
      for (int64_t i = 0; i < half; ++i) {
        const T a = lo[i], b = hi[i], s = sign * sn[i];
        lo[i] = a * cs[i] - b * s;
        hi[i] = a * s + b * cs[i];
      }
    }
  });
}
}  // namespace detail

// x[B,T,H,hd] rotated in place; position = t.
template <class T>
void rope_forward(const Context& ctx, Tensor<T> x, const RopeTable<T>& table) {
  detail::rope_apply(ctx, x, table, T(1), "rope input");
}

// dx[B,T,H,hd] rotated back in place. A rotation has no parameters and its input is the
// tensor being rotated, so the gradient is transformed where it lies rather than added to
// another buffer.
template <class T>
void rope_backward(const Context& ctx, Tensor<T> dx, const RopeTable<T>& table) {
  detail::rope_apply(ctx, dx, table, T(-1), "rope gradient");
}

}  // namespace resbm::ops
