#pragma once
// The compile-time choices of a ResidualBottleneck, as tag types:
//   rank<R>                 bottleneck width r (resbm::rank, as in DESIGN: resbm::rank<32>)
//   Linear | Mlp<m, silu>   encoder d -> r and decoder r -> d
//   Truncate | NoIdentity   identity path: z = h[:r] + Enc(N(h)), or z = Enc(N(h)) alone
//   NoSideInfo | TokenReembed   receiver-side information that costs no wire bytes
// "NoIdentity"/"NoSideInfo" rather than a shared `None`: one name for two different
// "nothing" slots would let a wrong argument order compile.
#include <type_traits>

#include "resbm/core/context.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/silu.hpp"

namespace resbm {

template <int R>
struct rank {
  static constexpr int value = R;
};

}  // namespace resbm

namespace resbm::codec {

using resbm::rank;

template <class X>
inline constexpr bool is_rank_v = false;
template <int R>
inline constexpr bool is_rank_v<rank<R>> = true;

// Activation: an elementwise nonlinearity with a forward and an accumulating backward.
//   forward(ctx, out[N,F], inp[N,F]);  backward(ctx, dinp[N,F] (+=), dout, inp)
template <class A>
concept Activation = requires(const Context& ctx, Tensor<float> o, Tensor<const float> i) {
  A::template forward<float>(ctx, o, i);
  A::template backward<float>(ctx, o, i, i);
};

struct silu {
  static constexpr const char* name = "silu";
  template <class T>
  static void forward(const Context& ctx, Tensor<T> out, Tensor<const T> inp) {
    ops::silu_forward<T>(ctx, out, inp);
  }
  template <class T>
  static void backward(const Context& ctx, Tensor<T> dinp, Tensor<const T> dout, Tensor<const T> inp) {
    ops::silu_backward<T>(ctx, dinp, dout, inp);
  }
};
static_assert(Activation<silu>, "silu does not model resbm::codec::Activation");

// One matrix each way, no bias.
struct Linear {};

// Two layers each way with a hidden width Hidden: d -> Hidden -> r and r -> Hidden -> d.
template <int Hidden, class Act = silu>
struct Mlp {
  static constexpr int hidden = Hidden;
  using activation = Act;
};

template <class X>
inline constexpr bool is_mlp_v = false;
template <int H, class A>
inline constexpr bool is_mlp_v<Mlp<H, A>> = true;

struct Truncate {};
struct NoIdentity {};

struct NoSideInfo {};
// A learned [vocab, d] embedding of the batch's token ids, added to the decoder output.
struct TokenReembed {};

}  // namespace resbm::codec

namespace resbm {
using codec::silu;
}  // namespace resbm
