// Boundary codecs: the concept (positive and negative), parameters and errors, identity at
// init, the straight-through gradient, finite-difference checks in double of each half and
// of the chained codec, Subspace exactness on a constrained model, presets and dispatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "resbm/codec/codec.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/nn/llama.hpp"
#include "support/catch.hpp"

using namespace resbm;
using namespace resbm::codec;
using Catch::Matchers::Contains;

namespace {

// ---- concept fixtures -------------------------------------------------------------------

// A user codec that forgot Decoder::backward.
struct Incomplete {
  template <class T>
  struct Encoder {
    struct Activations {};
    Encoder(const Boundary&, ParamArena<T>&) {}
    void init(uint64_t) {}
    Activations make_activations(int64_t) const { return {}; }
    size_t wire_bytes(int64_t) const { return 0; }
    size_t grad_bytes(int64_t) const { return 0; }
    void forward(const Context&, Activations&, Tensor<const T>, std::span<const int32_t>, std::span<std::byte>) {}
    void backward(const Context&, Activations&, std::span<const std::byte>, Tensor<T>) {}
  };
  template <class T>
  struct Decoder {
    struct Activations {};
    Decoder(const Boundary&, ParamArena<T>&) {}
    void init(uint64_t) {}
    Activations make_activations(int64_t) const { return {}; }
    size_t wire_bytes(int64_t) const { return 0; }
    size_t grad_bytes(int64_t) const { return 0; }
    void forward(const Context&, Activations&, std::span<const std::byte>, std::span<const int32_t>, Tensor<T>) {}
  };
};
// The old encoder signature, without the token ids.
struct NoTokens : Incomplete {
  template <class T>
  struct Encoder : Incomplete::Encoder<T> {
    using Incomplete::Encoder<T>::Encoder;
    void forward(const Context&, typename Incomplete::Encoder<T>::Activations&, Tensor<const T>, std::span<std::byte>) {}
  };
};
struct NoHalves {};

using MlpFp32 = ResidualBottleneck<rank<3>, Mlp<5, silu>, Truncate, Fp32Wire, Fp32Wire, TokenReembed>;
using LinFp32 = ResidualBottleneck<rank<3>, Linear, Truncate, Fp32Wire, Fp32Wire, NoSideInfo>;
using MlpNoIdFp32 = ResidualBottleneck<rank<3>, Mlp<4, silu>, NoIdentity, Fp32Wire, Fp32Wire, NoSideInfo>;
using LinNoIdReembedFp32 = ResidualBottleneck<rank<2>, Linear, NoIdentity, Fp32Wire, Fp32Wire, TokenReembed>;
using SubFp32 = Subspace<rank<3>, Fp32Wire>;

RESBM_ASSERT_BOUNDARY_CODEC(MlpFp32);
RESBM_ASSERT_BOUNDARY_CODEC(LinFp32);
RESBM_ASSERT_BOUNDARY_CODEC(MlpNoIdFp32);
RESBM_ASSERT_BOUNDARY_CODEC(LinNoIdReembedFp32);
RESBM_ASSERT_BOUNDARY_CODEC(SubFp32);
using Fp8Int4 = ResidualBottleneck<rank<4>, Mlp<8, silu>, Truncate, Fp8E4M3PerToken, Int4Grouped<32>>;
RESBM_ASSERT_BOUNDARY_CODEC(Fp8Int4);
static_assert(!BoundaryCodec<Incomplete>, "a codec without Decoder::backward must not model BoundaryCodec");
static_assert(!BoundaryCodec<NoTokens>, "an encoder without the token-id argument must not model BoundaryCodec");
static_assert(!BoundaryCodec<NoHalves>);
static_assert(!BoundaryCodec<Fp32Wire>);
static_assert(ConstrainsModel<SubFp32, float> && ConstrainsModel<SubFp32, double>);
static_assert(!ConstrainsModel<presets::Resbm<8>, float> && !ConstrainsModel<presets::DenseBf16, float>);

// ---- helpers ----------------------------------------------------------------------------

template <class T>
std::vector<T> randv(size_t n, uint64_t stream, double scale = 1.0) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = T(double(Philox::normal(5, stream, i)) * scale);
  return v;
}

std::vector<int32_t> rand_ids(size_t n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(Philox::bits64(5, stream, i) % uint64_t(V));
  return v;
}

template <class T>
double dot(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// Moves every parameter off its init (zero output layers included), as training would.
template <class T>
void jiggle(ParamArena<T>& a, uint64_t seed, double amount = 0.3) {
  for (size_t i = 0; i < a.size(); ++i) a.params()[i] += T(amount * double(Philox::normal(seed, 77, i)));
}

// Both halves of a codec with their own arenas, as on two stages.
template <class C, class T>
struct Rig {
  Boundary b;
  ParamArena<T> ea, da;
  typename C::template Encoder<T> enc;
  typename C::template Decoder<T> dec;
  explicit Rig(Boundary b_, uint64_t seed = 1) : b(b_), enc(b, ea), dec(b, da) {
    ea.allocate();
    da.allocate();
    enc.init(seed);
    dec.init(seed);
  }
};

template <class C, class T>
std::vector<std::byte> encode(Rig<C, T>& g, typename C::template Encoder<T>::Activations& s, const std::vector<T>& h,
                              const std::vector<int32_t>& ids) {
  const Context ctx(1);
  const int64_t N = s.tokens;
  std::vector<std::byte> wire(g.enc.wire_bytes(N));
  g.enc.forward(ctx, s, Tensor<const T>(h.data(), {N, g.b.d_model}), ids, wire);
  return wire;
}

template <class C, class T>
std::vector<T> decode(Rig<C, T>& g, typename C::template Decoder<T>::Activations& s, const std::vector<std::byte>& wire,
                      const std::vector<int32_t>& ids) {
  const Context ctx(1);
  const int64_t N = s.tokens;
  std::vector<T> out(size_t(N * g.b.d_model), T(-7));
  g.dec.forward(ctx, s, wire, ids, Tensor<T>(out.data(), {N, g.b.d_model}));
  return out;
}

// Central differences of loss() with respect to every element of x[0..n), against
// `analytic`. Returns max |fd − analytic| / max(|fd|, |analytic|) over the elements.
template <class T, class A, class Loss>
double fd_rel_error(T* x, size_t n, const A* analytic, double h, Loss&& loss) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < n; ++i) {
    const T keep = x[i];
    x[i] = keep + T(h);
    const double lp = loss();
    x[i] = keep - T(h);
    const double lm = loss();
    x[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    err = std::max(err, std::abs(fd - double(analytic[i])));
    scale = std::max({scale, std::abs(fd), std::abs(double(analytic[i]))});
  }
  REQUIRE(scale > 0);  // an all-zero gradient would pass vacuously
  return err / scale;
}

// Every entry of an arena, against its accumulated gradient; `tol` per entry.
template <class Loss>
void check_arena(ParamArena<double>& a, double h, double tol, Loss&& loss) {
  for (size_t p = 0; p < a.infos().size(); ++p) {
    auto w = a.param(p);
    auto g = a.grad(p);
    const double e = fd_rel_error(w.data, size_t(w.numel()), g.data, h, loss);
    INFO(a.info(p).name << " relative error " << e);
    CHECK(e <= tol);
  }
}

constexpr Boundary kB{1, 8, 7};  // boundary 1, d = 8, vocab 7
constexpr int64_t kN = 6;

}  // namespace

// ---- concept, parameters, errors ----------------------------------------------------------

TEST_CASE("built-in codecs model BoundaryCodec; incomplete ones do not") {
  STATIC_REQUIRE(BoundaryCodec<presets::DenseBf16>);
  STATIC_REQUIRE(BoundaryCodec<presets::DenseFp32>);
  STATIC_REQUIRE(BoundaryCodec<presets::Int8>);
  STATIC_REQUIRE(BoundaryCodec<presets::ResbmLinear<2>>);
  STATIC_REQUIRE(BoundaryCodec<presets::Resbm<2>>);
  STATIC_REQUIRE(BoundaryCodec<presets::SubspaceInt8<2>>);
  STATIC_REQUIRE(BoundaryCodec<QuantOnly<Int4Grouped<16>>>);
  STATIC_REQUIRE_FALSE(BoundaryCodec<Incomplete>);
  STATIC_REQUIRE_FALSE(BoundaryCodec<NoTokens>);
}

TEST_CASE("parameters: names, shapes and kinds under the boundary prefix") {
  ParamArena<float> ea, da;
  const Boundary b{2, 16, 11};
  presets::Resbm<4>::Encoder<float> enc(b, ea);
  presets::Resbm<4>::Decoder<float> dec(b, da);
  auto has = [](const ParamArena<float>& a, const std::string& name, Shape shape, ParamKind kind) {
    const auto& p = a.info(a.find(name));
    return p.shape == shape && p.kind == kind;
  };
  CHECK(ea.infos().size() == 3);
  CHECK(has(ea, "boundary.2.enc.norm.weight", {16, 0, 0, 0}, ParamKind::gain));
  // Code-facing matrices (one side 8x narrower) go to AdamW as heads; Muon's aspect-ratio
  // scale would make their steps 8x and more a hidden layer's.
  CHECK(has(ea, "boundary.2.enc.fc1.weight", {256, 16, 0, 0}, ParamKind::head));
  CHECK(has(ea, "boundary.2.enc.fc2.weight", {4, 256, 0, 0}, ParamKind::head));
  CHECK(da.infos().size() == 3);
  CHECK(has(da, "boundary.2.dec.fc1.weight", {256, 4, 0, 0}, ParamKind::head));
  CHECK(has(da, "boundary.2.dec.fc2.weight", {16, 256, 0, 0}, ParamKind::head));
  CHECK(codec::rb_detail::code_matrix_kind(256, 128) == ParamKind::matrix);  // d = 128, hidden 256: Muon
  CHECK(has(da, "boundary.2.dec.reembed.weight", {11, 16, 0, 0}, ParamKind::embedding));

  ParamArena<float> la;
  presets::ResbmLinear<4>::Decoder<float> ldec(b, la);
  CHECK(has(la, "boundary.2.dec.proj.weight", {16, 4, 0, 0}, ParamKind::matrix));
  ParamArena<float> none;
  presets::DenseBf16::Encoder<float> denc(b, none);
  presets::SubspaceInt8<4>::Decoder<float> sdec(b, none);
  CHECK(none.infos().empty());
}

TEST_CASE("errors: rank above d_model, wrong shapes, short buffers, bad token ids") {
  ParamArena<float> a;
  CHECK_THROWS_WITH((presets::Resbm<16>::Encoder<float>(Boundary{0, 8, 5}, a)), Contains("rank 16 is larger than d_model 8"));
  CHECK_THROWS_AS((presets::SubspaceInt8<16>::Decoder<float>(Boundary{0, 8, 5}, a)), Error);
  CHECK_THROWS_AS((presets::Resbm<2>::Decoder<float>(Boundary{0, 8, 0}, a)), Error);  // re-embedding needs a vocab

  Rig<presets::Resbm<2>, float> g(Boundary{0, 8, 5});
  auto es = g.enc.make_activations(4);
  auto ds = g.dec.make_activations(4);
  auto h = randv<float>(4 * 8, 1);
  auto ids = rand_ids(4, 5, 2);
  const Context ctx(1);
  std::vector<std::byte> small(g.enc.wire_bytes(4) - 1);
  CHECK_THROWS_WITH(g.enc.forward(ctx, es, Tensor<const float>(h.data(), {4, 8}), ids, small), Contains("smaller than"));
  CHECK_THROWS_AS(g.enc.forward(ctx, es, Tensor<const float>(h.data(), {3, 8}), ids, small), Error);
  auto wire = encode(g, es, h, ids);
  std::vector<float> out(4 * 8);
  CHECK_THROWS_AS(g.dec.forward(ctx, ds, std::span<const std::byte>(wire).first(wire.size() - 1), ids,
                                Tensor<float>(out.data(), {4, 8})),
                  Error);
  auto bad = ids;
  bad[3] = 5;
  CHECK_THROWS_WITH(g.dec.forward(ctx, ds, wire, bad, Tensor<float>(out.data(), {4, 8})), Contains("token id 5"));
  CHECK_THROWS_AS(g.dec.forward(ctx, ds, wire, std::span<const int32_t>(ids).first(3), Tensor<float>(out.data(), {4, 8})),
                  Error);
  std::vector<std::byte> gsmall(g.dec.grad_bytes(4) - 1);
  g.dec.forward(ctx, ds, wire, ids, Tensor<float>(out.data(), {4, 8}));
  CHECK_THROWS_AS(g.dec.backward(ctx, ds, Tensor<const float>(h.data(), {4, 8}), gsmall), Error);
}

TEST_CASE("a diverged residual is refused by the wire, naming the token") {
  Rig<presets::Resbm<2>, float> g(Boundary{0, 8, 5});
  auto s = g.enc.make_activations(5);
  auto h = randv<float>(5 * 8, 1);
  h[3 * 8 + 6] = std::nanf("");
  CHECK_THROWS_WITH(encode(g, s, h, rand_ids(5, 5, 1)), Contains("non-finite value at token 3"));
}

// ---- identity at init -----------------------------------------------------------------------

TEMPLATE_TEST_CASE("identity at init: h' = pad(Deq(Quant(h[:r]))), bit for bit", "", presets::ResbmLinear<3>,
                   presets::Resbm<3>, MlpFp32, LinFp32,
                   (ResidualBottleneck<rank<5>, Mlp<16, silu>, Truncate, Fp8E4M3PerToken, Bf16Wire, TokenReembed>)) {
  using C = TestType;
  constexpr int r = C::r;
  const Boundary b{0, 12, 9};
  Rig<C, float> g(b, 42);
  const int64_t N = 7, d = b.d_model;
  auto h = randv<float>(size_t(N * d), 3, 2.0);
  auto ids = rand_ids(size_t(N), b.vocab, 4);
  auto es = g.enc.make_activations(N);
  auto ds = g.dec.make_activations(N);
  auto out = decode(g, ds, encode(g, es, h, ids), ids);

  // The expected value: the first r coordinates through the forward wire alone, padded.
  std::vector<float> trunc(size_t(N * r)), deq(size_t(N * r));
  for (int64_t n = 0; n < N; ++n)
    for (int j = 0; j < r; ++j) trunc[size_t(n * r + j)] = h[size_t(n * d + j)];
  std::vector<std::byte> w(C::fwd_wire::bytes(N, r));
  C::fwd_wire::encode(trunc.data(), N, r, w.data());
  C::fwd_wire::decode(w.data(), N, r, deq.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < d; ++c) {
      const float want = c < r ? deq[size_t(n * r + c)] : 0.0f;
      CHECK(out[size_t(n * d + c)] == want);
    }
}

// ---- straight-through gradient ------------------------------------------------------------

TEST_CASE("straight-through: dL/dz is the analytic gradient at the dequantized code (linear decoder)") {
  using C = ResidualBottleneck<rank<3>, Linear, Truncate, Int8PerToken, Fp32Wire, NoSideInfo>;
  Rig<C, float> g(kB);
  jiggle(g.ea, 1);
  jiggle(g.da, 2);
  const int64_t N = kN, d = kB.d_model, r = 3;
  auto h = randv<float>(size_t(N * d), 3);
  auto es = g.enc.make_activations(N);
  auto ds = g.dec.make_activations(N);
  auto wire = encode(g, es, h, {});
  decode(g, ds, wire, {});
  std::vector<float> y(size_t(N * r));
  Int8PerToken::decode(wire.data(), N, r, y.data());
  // The code really was rounded (else this test would not tell STE from exact).
  double moved = 0;
  for (size_t i = 0; i < y.size(); ++i) moved = std::max(moved, double(std::abs(y[i] - es.z[i])));
  CHECK(moved > 1e-4);

  auto R = randv<float>(size_t(N * d), 4);
  std::vector<std::byte> gw(g.dec.grad_bytes(N));
  g.dec.backward(Context(1), ds, Tensor<const float>(R.data(), {N, d}), gw);
  std::vector<float> dz(size_t(N * r));
  Fp32Wire::decode(gw.data(), N, r, dz.data());
  // h' = pad(y) + y·Vᵀ, so dL/dy = R[:, :r] + R·V; and dV = Rᵀ·y at the dequantized y.
  auto V = g.da.param(g.da.find("boundary.1.dec.proj.weight"));
  auto dV = g.da.grad(g.da.find("boundary.1.dec.proj.weight"));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < r; ++j) {
      double want = R[size_t(n * d + j)];
      for (int64_t c = 0; c < d; ++c) want += double(R[size_t(n * d + c)]) * double(V[c * r + j]);
      CHECK(dz[size_t(n * r + j)] == Approx(want).epsilon(1e-5).margin(1e-6));
    }
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < r; ++j) {
      double want = 0;
      for (int64_t n = 0; n < N; ++n) want += double(R[size_t(n * d + c)]) * double(y[size_t(n * r + j)]);
      CHECK(dV[c * r + j] == Approx(want).epsilon(1e-5).margin(1e-6));
    }
}

TEST_CASE("straight-through: a quantizing wire's decoder sends the exact-wire gradient at Deq(q)") {
  // Same parameters (same names, seed and jiggle); A receives int8, B receives the
  // dequantized values exactly. Their dL/dz must be identical.
  using A = ResidualBottleneck<rank<3>, Mlp<6, silu>, Truncate, Int8Grouped<4>, Fp32Wire, TokenReembed>;
  using B = ResidualBottleneck<rank<3>, Mlp<6, silu>, Truncate, Fp32Wire, Fp32Wire, TokenReembed>;
  Rig<A, float> ga(kB);
  Rig<B, float> gb(kB);
  jiggle(ga.ea, 1);
  jiggle(gb.ea, 1);
  jiggle(ga.da, 2);
  jiggle(gb.da, 2);
  const int64_t N = kN, d = kB.d_model, r = 3;
  auto h = randv<float>(size_t(N * d), 3);
  auto ids = rand_ids(size_t(N), kB.vocab, 4);
  auto esa = ga.enc.make_activations(N);
  auto dsa = ga.dec.make_activations(N);
  auto dsb = gb.dec.make_activations(N);
  auto wa = encode(ga, esa, h, ids);
  auto outa = decode(ga, dsa, wa, ids);
  std::vector<float> y(size_t(N * r));
  Int8Grouped<4>::decode(wa.data(), N, r, y.data());
  std::vector<std::byte> wb(Fp32Wire::bytes(N, r));
  Fp32Wire::encode(y.data(), N, r, wb.data());
  auto outb = decode(gb, dsb, wb, ids);
  CHECK(outa == outb);

  auto R = randv<float>(size_t(N * d), 4);
  std::vector<std::byte> gwa(ga.dec.grad_bytes(N)), gwb(gb.dec.grad_bytes(N));
  ga.dec.backward(Context(1), dsa, Tensor<const float>(R.data(), {N, d}), gwa);
  gb.dec.backward(Context(1), dsb, Tensor<const float>(R.data(), {N, d}), gwb);
  CHECK(gwa == gwb);
  for (size_t i = 0; i < ga.da.size(); ++i) REQUIRE(ga.da.grads()[i] == gb.da.grads()[i]);
}

// ---- finite differences in double -------------------------------------------------------

// Encoder alone: loss = Σ g·z with g the gradient payload (Fp32Wire, so g is known
// exactly) and z the code before the wire, which acts.z keeps. Step 1e-6, bound 1e-6
// (truncation ~h², rounding ~1e-16/h, both far below it for these O(1) problems).
TEMPLATE_TEST_CASE("encoder: parameter and input gradients match central differences", "", MlpFp32, LinFp32,
                   MlpNoIdFp32, LinNoIdReembedFp32) {
  using C = TestType;
  constexpr int r = C::r;
  Rig<C, double> g(kB);
  jiggle(g.ea, 11);
  const int64_t N = kN, d = kB.d_model;
  auto h = randv<double>(size_t(N * d), 3);
  auto gz = randv<float>(size_t(N * r), 5);
  std::vector<std::byte> gw(g.enc.grad_bytes(N));
  Fp32Wire::encode(gz.data(), N, r, gw.data());
  std::vector<double> gzd(gz.begin(), gz.end());

  auto s = g.enc.make_activations(N);
  auto loss = [&] {
    encode(g, s, h, {});
    return dot(std::vector<double>(s.z.begin(), s.z.end()), gzd);
  };
  loss();
  g.ea.zero_grad();
  std::vector<double> dh(size_t(N * d), 0.0);
  g.enc.backward(Context(1), s, gw, Tensor<double>(dh.data(), {N, d}));
  check_arena(g.ea, 1e-6, 1e-6, loss);
  const double e = fd_rel_error(h.data(), h.size(), dh.data(), 1e-6, loss);
  INFO("dh relative error " << e);
  CHECK(e <= 1e-6);

  // Accumulation: a second backward adds the same again.
  std::vector<double> g1(g.ea.grads(), g.ea.grads() + g.ea.size()), dh1 = dh;
  g.enc.backward(Context(1), s, gw, Tensor<double>(dh.data(), {N, d}));
  for (size_t i = 0; i < dh.size(); ++i) CHECK(dh[i] == Approx(2 * dh1[i]).margin(1e-15));
  for (size_t i = 0; i < g1.size(); ++i) CHECK(g.ea.grads()[i] == Approx(2 * g1[i]).margin(1e-15));
}

// Decoder alone: loss = Σ R·h'. Parameters: step 1e-6, bound 1e-6. The code y enters
// through the fp32 wire, so it is perturbed on a grid that fp32 holds exactly: y on
// multiples of 2^-6, step 2^-10 (truncation error ~2^-20·|f'''|); bound 1e-5.
TEMPLATE_TEST_CASE("decoder: parameter and code gradients match central differences", "", MlpFp32, LinFp32,
                   MlpNoIdFp32, LinNoIdReembedFp32) {
  using C = TestType;
  constexpr int r = C::r;
  Rig<C, double> g(kB);
  jiggle(g.da, 12);
  const int64_t N = kN, d = kB.d_model;
  std::vector<float> y(size_t(N * r));
  for (size_t i = 0; i < y.size(); ++i) y[i] = std::round(Philox::normal(5, 6, i) * 64.0f) / 64.0f;
  auto ids = rand_ids(size_t(N), kB.vocab, 7);
  auto R = randv<double>(size_t(N * d), 8);
  auto s = g.dec.make_activations(N);
  auto loss_at = [&](const std::vector<float>& code) {
    std::vector<std::byte> w(Fp32Wire::bytes(N, r));
    Fp32Wire::encode(code.data(), N, r, w.data());
    return dot(decode(g, s, w, ids), R);
  };
  loss_at(y);
  g.da.zero_grad();
  std::vector<std::byte> gw(g.dec.grad_bytes(N));
  g.dec.backward(Context(1), s, Tensor<const double>(R.data(), {N, d}), gw);
  std::vector<float> dz(size_t(N * r));
  Fp32Wire::decode(gw.data(), N, r, dz.data());
  check_arena(g.da, 1e-6, 1e-6, [&] { return loss_at(y); });
  const std::vector<double> dzd(dz.begin(), dz.end());
  const double e = fd_rel_error(y.data(), y.size(), dzd.data(), std::ldexp(1.0, -10), [&] { return loss_at(y); });
  INFO("dz relative error " << e);
  CHECK(e <= 1e-5);
}

// The whole codec, encoder -> fp32 wire -> decoder -> fp32 gradient wire -> encoder, in
// double, loss = Σ R·h', against central differences for every parameter of both halves
// and for h. The fp32 wire rounds z to ~6e-8 relative, which central differences see as
// noise of about N·r·6e-8/(2h): with h = 1e-2 that is ~1e-5, as is the truncation error
// h²·|f'''|/6 (observed: <= 6e-5). Bound 5e-4.
TEMPLATE_TEST_CASE("chained codec: gradients through both halves match central differences", "", MlpFp32, LinFp32,
                   MlpNoIdFp32, LinNoIdReembedFp32, SubFp32, presets::DenseFp32) {
  using C = TestType;
  Rig<C, double> g(kB);
  jiggle(g.ea, 21);
  jiggle(g.da, 22);
  const int64_t N = kN, d = kB.d_model;
  auto h = randv<double>(size_t(N * d), 3);
  auto ids = rand_ids(size_t(N), kB.vocab, 7);
  auto R = randv<double>(size_t(N * d), 8);
  auto es = g.enc.make_activations(N);
  auto ds = g.dec.make_activations(N);
  auto loss = [&] { return dot(decode(g, ds, encode(g, es, h, ids), ids), R); };
  loss();
  g.ea.zero_grad();
  g.da.zero_grad();
  std::vector<std::byte> gw(g.dec.grad_bytes(N));
  REQUIRE(gw.size() == g.enc.grad_bytes(N));
  g.dec.backward(Context(1), ds, Tensor<const double>(R.data(), {N, d}), gw);
  std::vector<double> dh(size_t(N * d), 0.0);
  g.enc.backward(Context(1), es, gw, Tensor<double>(dh.data(), {N, d}));
  const double step = 1e-2, tol = 5e-4;
  check_arena(g.ea, step, tol, loss);
  check_arena(g.da, step, tol, loss);
  const double e = fd_rel_error(h.data(), h.size(), dh.data(), step, loss);
  INFO("dh relative error " << e);
  CHECK(e <= tol);
}

// ---- Subspace ------------------------------------------------------------------------------

namespace {

nn::LlamaConfig sub_config() {
  nn::LlamaConfig c;
  c.vocab = 11;
  c.d_model = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.seq_len = 6;
  c.ffn = 24;
  return c;
}

// max over tokens of |(I − U Uᵀ)(h − F[x])|, and max |h − F[x]|.
template <int R>
std::pair<double, double> off_subspace(const float* h, const std::vector<int32_t>& ids, int d, int vocab) {
  using S = Subspace<rank<R>, Fp32Wire>;
  const auto& U = S::template basis<float>(d);
  const auto& F = S::template fixed_embedding<float>(vocab, d);
  double off = 0, mag = 0;
  for (size_t n = 0; n < ids.size(); ++n) {
    std::vector<double> v(static_cast<size_t>(d)), c(static_cast<size_t>(R), 0.0);
    for (int i = 0; i < d; ++i) v[size_t(i)] = double(h[n * size_t(d) + size_t(i)]) - double(F[size_t(ids[n]) * size_t(d) + size_t(i)]);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < R; ++j) c[size_t(j)] += double(U[size_t(i * R + j)]) * v[size_t(i)];
    for (int i = 0; i < d; ++i) {
      double p = 0;
      for (int j = 0; j < R; ++j) p += double(U[size_t(i * R + j)]) * c[size_t(j)];
      off = std::max(off, std::abs(v[size_t(i)] - p));
      mag = std::max(mag, std::abs(v[size_t(i)]));
    }
  }
  return {off, mag};
}

}  // namespace

TEST_CASE("Subspace: the basis is orthonormal and nested across ranks") {
  const auto& U = Subspace<rank<5>, Fp32Wire>::basis<double>(16);
  for (int a = 0; a < 5; ++a)
    for (int b = 0; b < 5; ++b) {
      double s = 0;
      for (int i = 0; i < 16; ++i) s += U[size_t(i * 5 + a)] * U[size_t(i * 5 + b)];
      CHECK(s == Approx(a == b ? 1.0 : 0.0).margin(1e-14));
    }
  const auto& U3 = Subspace<rank<3>, Int8Grouped<64>>::basis<double>(16);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 3; ++j) CHECK(U3[size_t(i * 3 + j)] == Approx(U[size_t(i * 5 + j)]).margin(1e-14));
}

TEST_CASE("Subspace: on a constrained model the boundary stream is F[x] + span(U), and the codec is exact") {
  constexpr int R = 4;
  using S = Subspace<rank<R>, Fp32Wire>;
  const auto c = sub_config();
  const Boundary b{0, c.d_model, c.vocab};
  const Context ctx(1);
  auto run = [&](bool constrained, std::vector<float>& h, std::vector<int32_t>& ids) {
    ParamArena<float> arena;
    nn::Llama<float> model(c, arena, nn::LayerRange{0, 2, true, false});
    arena.allocate();
    model.init(3);
    if (constrained) S::constrain(arena, b, 3);
    jiggle(arena, 4, 0.05);  // an optimizer step ...
    if (constrained) S::constrain(arena, b, 3);  // ... and the projection after it
    auto s = model.make_activations(2);
    ids = rand_ids(s.tokens.size(), c.vocab, 9);
    std::copy(ids.begin(), ids.end(), s.tokens.begin());
    model.forward(ctx, s);
    auto out = model.output(s);
    h.assign(out.begin(), out.end());
  };
  std::vector<float> h, hfree;
  std::vector<int32_t> ids, ids2;
  run(true, h, ids);
  run(false, hfree, ids2);
  auto [off, mag] = off_subspace<R>(h.data(), ids, c.d_model, c.vocab);
  INFO("constrained: off-subspace " << off << " of " << mag);
  CHECK(mag > 1e-2);
  CHECK(off <= 1e-5 * mag);
  auto [off_free, mag_free] = off_subspace<R>(hfree.data(), ids2, c.d_model, c.vocab);
  INFO("unconstrained: off-subspace " << off_free << " of " << mag_free);
  CHECK(off_free > 0.1 * mag_free);  // the constraint is what makes it hold

  Rig<S, float> g(b);
  const int64_t N = int64_t(ids.size());
  auto es = g.enc.make_activations(N);
  auto ds = g.dec.make_activations(N);
  auto wire = encode(g, es, h, ids);
  CHECK(wire.size() == size_t(N * R * 4));
  auto back = decode(g, ds, wire, ids);
  double err = 0;
  for (size_t i = 0; i < h.size(); ++i) err = std::max(err, double(std::abs(back[i] - h[i])));
  INFO("max |decode(encode(h)) − h| = " << err);
  CHECK(err <= 1e-5);

  // constrain() is a projection: applying it twice changes nothing (to rounding).
  ParamArena<double> a;
  nn::Llama<double> m(c, a, nn::LayerRange{0, 1, true, false});
  a.allocate();
  m.init(5);
  jiggle(a, 6, 0.05);
  Subspace<rank<R>, Fp32Wire>::constrain(a, b, 0);
  std::vector<double> once(a.params(), a.params() + a.size());
  Subspace<rank<R>, Fp32Wire>::constrain(a, b, 0);
  for (size_t i = 0; i < once.size(); ++i) CHECK(a.params()[i] == Approx(once[i]).margin(1e-15));
}

// ---- presets and dispatch ----------------------------------------------------------------

TEST_CASE("presets: the resbm preset at d=256, r=2 sends >= 128x fewer bytes than dense bf16") {
  const Boundary b{0, 256, 65};
  ParamArena<float> ea, da;
  presets::Resbm<2>::Encoder<float> enc(b, ea);
  presets::Resbm<2>::Decoder<float> dec(b, da);
  const int64_t N = 1024;
  const size_t sent = enc.wire_bytes(N) + enc.grad_bytes(N);
  CHECK(enc.wire_bytes(N) == 2048 + 128 * 4);  // int8 codes + an fp32 scale per 16 values
  CHECK(enc.grad_bytes(N) == 2048 + 32 * 4);   // int8 gradient + an fp32 scale per 64 values
  CHECK(dec.wire_bytes(N) == enc.wire_bytes(N));
  CHECK(dec.grad_bytes(N) == enc.grad_bytes(N));
  const size_t dense = 2 * size_t(N) * 2 * 256;  // both directions, bf16
  ParamArena<float> na;
  presets::DenseBf16::Encoder<float> denc(b, na);
  CHECK(denc.wire_bytes(N) + denc.grad_bytes(N) == dense);
  INFO("ratio " << double(dense) / double(sent));
  CHECK(double(dense) / double(sent) >= 128.0);
}

TEST_CASE("with_codec: names and ranks to types; anything else is an Error listing the valid ones") {
  std::string got;
  auto probe = [&]<class C>() {
    if constexpr (std::is_same_v<C, presets::DenseBf16>) got = "DenseBf16";
    else if constexpr (std::is_same_v<C, presets::DenseFp32>) got = "DenseFp32";
    else if constexpr (std::is_same_v<C, presets::Int8>) got = "Int8";
    else if constexpr (std::is_same_v<C, presets::ResbmLinear<8>>) got = "ResbmLinear<8>";
    else if constexpr (std::is_same_v<C, presets::Resbm<2>>) got = "Resbm<2>";
    else if constexpr (std::is_same_v<C, presets::Resbm<64>>) got = "Resbm<64>";
    else if constexpr (std::is_same_v<C, presets::SubspaceInt8<1>>) got = "SubspaceInt8<1>";
    else got = std::string("other ") + C::name;
    static_assert(BoundaryCodec<C>);
  };
  with_codec("dense", 0, probe);
  CHECK(got == "DenseBf16");
  with_codec("fp32", 8, probe);
  CHECK(got == "DenseFp32");
  with_codec("int8", 8, probe);
  CHECK(got == "Int8");
  with_codec("resbm-linear", 8, probe);
  CHECK(got == "ResbmLinear<8>");
  with_codec("resbm", 2, probe);
  CHECK(got == "Resbm<2>");
  with_codec("resbm", 64, probe);
  CHECK(got == "Resbm<64>");
  with_codec("subspace", 1, probe);
  CHECK(got == "SubspaceInt8<1>");
  with_codec("resbm", 16, probe);
  CHECK(got == "other resbm");

  CHECK_THROWS_WITH(with_codec("zip", 8, probe),
                    Contains("unknown codec 'zip'") && Contains("dense, fp32, int8, resbm-linear, resbm, subspace"));
  CHECK_THROWS_WITH(with_codec("resbm", 3, probe), Contains("rank 3") && Contains("1, 2, 4, 8, 16, 32, 64"));
}
