// CPU ops against the contract in docs/ops-api.md: gradients match central finite
// differences in double, backward passes accumulate, float results do not depend on the
// thread count, and bad input is an Error that says what was wrong.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "resbm/core/context.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/ops/cpu/cross_entropy.hpp"
#include "resbm/ops/cpu/embedding.hpp"
#include "resbm/ops/cpu/fast_math.hpp"
#include "resbm/ops/cpu/gemm.hpp"
#include "resbm/ops/cpu/rmsnorm.hpp"
#include "resbm/ops/cpu/rope.hpp"
#include "resbm/ops/cpu/swiglu.hpp"
#include "support/catch.hpp"

using namespace resbm;
using Catch::Matchers::Contains;

namespace {

// Central differences with h = 1e-6 in double: truncation error ~h² and rounding error
// ~1e-16·|loss|/h, both far below this bound for the small O(1) problems below.
constexpr double kGradTol = 1e-6;

template <class T>
std::vector<T> randn(size_t n, uint64_t stream, T scale = T(1)) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * T(Philox::normal(42, stream, i));
  return v;
}

std::vector<int32_t> rand_ids(size_t n, int32_t V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(Philox::bits64(42, stream, i) % uint64_t(V));
  return v;
}

template <class T>
Tensor<T> view(std::vector<T>& v, std::initializer_list<int64_t> dims) {
  return Tensor<T>(v.data(), dims);
}
template <class T>
Tensor<const T> cview(const std::vector<T>& v, std::initializer_list<int64_t> dims) {
  return Tensor<const T>(v.data(), dims);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// max |numeric − analytic| / max(|numeric|, |analytic|) over every element of x, where the
// numeric gradient of loss() is taken by perturbing x in place.
template <class Loss>
double grad_rel_error(std::vector<double>& x, const std::vector<double>& analytic, Loss&& loss) {
  REQUIRE(x.size() == analytic.size());
  const double h = 1e-6;
  double err = 0, scale = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double lp = loss();
    x[i] = keep - h;
    const double lm = loss();
    x[i] = keep;
    const double fd = (lp - lm) / (2 * h);
    err = std::max(err, std::abs(fd - analytic[i]));
    scale = std::max({scale, std::abs(fd), std::abs(analytic[i])});
  }
  REQUIRE(scale > 0);  // an all-zero gradient would pass vacuously
  return err / scale;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// g0 + 2·g, as two accumulating calls on a gradient pre-filled with g0 must give.
void check_accumulated(const std::vector<double>& twice, const std::vector<double>& g0,
                       const std::vector<double>& once) {
  REQUIRE(twice.size() == g0.size());
  for (size_t i = 0; i < twice.size(); ++i)
    REQUIRE(twice[i] == Approx(g0[i] + 2 * once[i]).epsilon(1e-12).margin(1e-12));
}

std::vector<float> concat(std::initializer_list<const std::vector<float>*> parts) {
  std::vector<float> out;
  for (auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// matmul (gemm.hpp)

TEST_CASE("matmul: known values") {
  Context ctx(1);
  std::vector<double> inp{1, 2, 3, 4}, w{5, 6, 7, 8}, out(4);
  ops::matmul_forward<double>(ctx, view(out, {2, 2}), cview(inp, {2, 2}), cview(w, {2, 2}));
  CHECK(out == std::vector<double>{17, 23, 39, 53});
}

TEST_CASE("matmul: gradients match finite differences, backward accumulates") {
  Context ctx(1);
  const int64_t N = 5, C = 7, OC = 4;
  auto inp = randn<double>(N * C, 1), w = randn<double>(OC * C, 2), W = randn<double>(N * OC, 3);
  std::vector<double> out(N * OC);
  auto loss = [&] {
    ops::matmul_forward<double>(ctx, view(out, {N, OC}), cview(inp, {N, C}), cview(w, {OC, C}));
    return dot(out, W);
  };
  std::vector<double> dinp(N * C), dw(OC * C);
  ops::matmul_backward<double>(ctx, view(dinp, {N, C}), view(dw, {OC, C}), cview(W, {N, OC}),
                               cview(inp, {N, C}), cview(w, {OC, C}));
  CHECK(grad_rel_error(inp, dinp, loss) < kGradTol);
  CHECK(grad_rel_error(w, dw, loss) < kGradTol);

  auto g0i = randn<double>(N * C, 4), g0w = randn<double>(OC * C, 5);
  auto gi = g0i, gw = g0w;
  for (int rep = 0; rep < 2; ++rep)
    ops::matmul_backward<double>(ctx, view(gi, {N, C}), view(gw, {OC, C}), cview(W, {N, OC}),
                                 cview(inp, {N, C}), cview(w, {OC, C}));
  check_accumulated(gi, g0i, dinp);
  check_accumulated(gw, g0w, dw);

  // An empty dinp skips the input gradient and still accumulates the weight gradient.
  auto gw2 = g0w;
  ops::matmul_backward<double>(ctx, Tensor<double>{}, view(gw2, {OC, C}), cview(W, {N, OC}),
                               cview(inp, {N, C}), cview(w, {OC, C}));
  for (size_t i = 0; i < gw2.size(); ++i) CHECK(gw2[i] == Approx(g0w[i] + dw[i]).epsilon(1e-12));
}

// ops::gemm cuts rows into blocks sized from M alone, one single-threaded BLAS call each:
// OpenBLAS's own threading would change the last bits with the thread count.
TEST_CASE("matmul: float results identical on 1 and 2 threads") {
  const int64_t N = 300, C = 256, OC = 384;
  auto inp = randn<float>(N * C, 1), w = randn<float>(OC * C, 2), dout = randn<float>(N * OC, 3);
  auto run = [&](int threads) {
    Context ctx(threads);  // also sets the OpenBLAS thread count, so build it right here
    std::vector<float> out(N * OC), dinp(N * C), dw(OC * C);
    ops::matmul_forward<float>(ctx, view(out, {N, OC}), cview(inp, {N, C}), cview(w, {OC, C}));
    ops::matmul_backward<float>(ctx, view(dinp, {N, C}), view(dw, {OC, C}), cview(dout, {N, OC}),
                                cview(inp, {N, C}), cview(w, {OC, C}));
    return concat({&out, &dinp, &dw});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("matmul: float results on 1 and 2 threads agree to rounding") {
  const int64_t N = 300, C = 256, OC = 384;
  auto inp = randn<float>(N * C, 1), w = randn<float>(OC * C, 2);
  auto run = [&](int threads) {
    Context ctx(threads);
    std::vector<float> out(N * OC);
    ops::matmul_forward<float>(ctx, view(out, {N, OC}), cview(inp, {N, C}), cview(w, {OC, C}));
    return out;
  };
  const auto a = run(1), b = run(2);
  // Each element sums C = 256 products of unit normals (size ~16): a different summation
  // order moves it by a few float ulps of that size, far below 1e-5 of the largest element.
  float diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(a[i]));
  }
  CHECK(diff <= 1e-5f * scale);
}

TEST_CASE("matmul: bad shapes are errors naming the tensor") {
  Context ctx(1);
  std::vector<float> a(12), b(12), c(12);
  CHECK_THROWS_WITH(ops::matmul_forward<float>(ctx, view(c, {3, 4}), cview(a, {3, 4}), cview(b, {3, 4})),
                    Contains("matmul output has shape [3, 4] but [3, 3] was expected"));
  CHECK_THROWS_WITH(ops::matmul_backward<float>(ctx, view(c, {4, 3}), view(b, {3, 4}), cview(a, {3, 3}),
                                                cview(a, {3, 4}), cview(b, {3, 4})),
                    Contains("matmul input gradient has shape [4, 3]"));
}

// ---------------------------------------------------------------------------------------
// embedding

TEST_CASE("embedding: known values, repeated tokens sum their gradients") {
  Context ctx(1);
  std::vector<double> table{0, 1, 10, 11, 20, 21}, out(8);
  std::vector<int32_t> tok{2, 0, 2, 1};
  ops::embedding_forward<double>(ctx, view(out, {4, 2}), cview(tok, {4}), cview(table, {3, 2}));
  CHECK(out == std::vector<double>{20, 21, 0, 1, 20, 21, 10, 11});
  std::vector<double> dout{1, 2, 3, 4, 5, 6, 7, 8}, dtable(6);
  ops::embedding_backward<double>(ctx, view(dtable, {3, 2}), cview(tok, {4}), cview(dout, {4, 2}));
  CHECK(dtable == std::vector<double>{3, 4, 7, 8, 6, 8});
}

TEST_CASE("embedding: gradients match finite differences, backward accumulates") {
  Context ctx(1);
  const int64_t N = 9, V = 5, C = 3;
  auto table = randn<double>(V * C, 1), W = randn<double>(N * C, 2);
  auto tok = rand_ids(N, int32_t(V), 3);
  std::vector<double> out(N * C);
  auto loss = [&] {
    ops::embedding_forward<double>(ctx, view(out, {N, C}), cview(tok, {N}), cview(table, {V, C}));
    return dot(out, W);
  };
  std::vector<double> dtable(V * C);
  ops::embedding_backward<double>(ctx, view(dtable, {V, C}), cview(tok, {N}), cview(W, {N, C}));
  CHECK(grad_rel_error(table, dtable, loss) < kGradTol);

  auto g0 = randn<double>(V * C, 4), g = g0;
  for (int rep = 0; rep < 2; ++rep)
    ops::embedding_backward<double>(ctx, view(g, {V, C}), cview(tok, {N}), cview(W, {N, C}));
  check_accumulated(g, g0, dtable);
}

TEST_CASE("embedding: float results identical on 1 and 2 threads") {
  // C = 200 spans several column blocks, the last one partial; few tokens, many repeats.
  const int64_t N = 64, V = 7, C = 200;
  auto table = randn<float>(V * C, 1), dout = randn<float>(N * C, 2);
  auto tok = rand_ids(N, int32_t(V), 3);
  auto run = [&](int threads) {
    Context ctx(threads);
    std::vector<float> out(N * C), dtable(V * C);
    ops::embedding_forward<float>(ctx, view(out, {N, C}), cview(tok, {N}), cview(table, {V, C}));
    ops::embedding_backward<float>(ctx, view(dtable, {V, C}), cview(tok, {N}), cview(dout, {N, C}));
    return concat({&out, &dtable});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("embedding: bad token ids and shapes are errors") {
  Context ctx(2);
  std::vector<float> table(12), out(8), dtable(12);
  std::vector<int32_t> tok{0, 1, 4, 2};
  CHECK_NOTHROW(ops::embedding_forward<float>(ctx, view(out, {4, 2}), cview(tok, {4}), cview(table, {6, 2})));
  tok[2] = 6;
  CHECK_THROWS_WITH(ops::embedding_forward<float>(ctx, view(out, {4, 2}), cview(tok, {4}), cview(table, {6, 2})),
                    Contains("token id 6 at position 2 is out of range [0, 6)"));
  tok[2] = -1;
  CHECK_THROWS_WITH(ops::embedding_backward<float>(ctx, view(dtable, {6, 2}), cview(tok, {4}), cview(out, {4, 2})),
                    Contains("token id -1 at position 2 is out of range [0, 6)"));
  tok[2] = 0;
  CHECK_THROWS_WITH(ops::embedding_forward<float>(ctx, view(out, {2, 4}), cview(tok, {4}), cview(table, {6, 2})),
                    Contains("embedding output has shape [2, 4] but [4, 2] was expected"));
  CHECK_THROWS_AS(ops::embedding_backward<float>(ctx, view(dtable, {6, 2}), cview(tok, {4}), cview(out, {8})),
                  Error);
}

// ---------------------------------------------------------------------------------------
// rmsnorm

TEST_CASE("rmsnorm: a constant row normalises to ±weight") {
  Context ctx(1);
  const int64_t C = 8;
  const double eps = 1e-5;
  std::vector<double> inp(2 * C), w = randn<double>(C, 1), out(2 * C), rstd(2);
  std::fill(inp.begin(), inp.begin() + C, 3.0);
  std::fill(inp.begin() + C, inp.end(), -0.5);
  ops::rmsnorm_forward<double>(ctx, view(out, {2, C}), view(rstd, {2}), cview(inp, {2, C}),
                               cview(w, {C}), eps);
  CHECK(rstd[0] == Approx(1 / std::sqrt(9 + eps)).epsilon(1e-14));
  CHECK(rstd[1] == Approx(1 / std::sqrt(0.25 + eps)).epsilon(1e-14));
  for (int64_t c = 0; c < C; ++c) {
    CHECK(out[c] == Approx(3 / std::sqrt(9 + eps) * w[c]).epsilon(1e-14));
    CHECK(out[C + c] == Approx(-w[c]).epsilon(1e-4));
  }
}

TEST_CASE("rmsnorm: gradients match finite differences, backward accumulates") {
  Context ctx(1);
  const int64_t N = 4, C = 6;
  const double eps = 1e-5;
  auto inp = randn<double>(N * C, 1), w = randn<double>(C, 2), W = randn<double>(N * C, 3);
  std::vector<double> out(N * C), rstd(N);
  auto loss = [&] {
    ops::rmsnorm_forward<double>(ctx, view(out, {N, C}), view(rstd, {N}), cview(inp, {N, C}),
                                 cview(w, {C}), eps);
    return dot(out, W);
  };
  loss();
  const std::vector<double> saved_rstd = rstd;
  auto backward = [&](std::vector<double>& dinp, std::vector<double>& dw) {
    ops::rmsnorm_backward<double>(ctx, view(dinp, {N, C}), view(dw, {C}), cview(W, {N, C}),
                                  cview(inp, {N, C}), cview(w, {C}), cview(saved_rstd, {N}));
  };
  std::vector<double> dinp(N * C), dw(C);
  backward(dinp, dw);
  CHECK(grad_rel_error(inp, dinp, loss) < kGradTol);
  CHECK(grad_rel_error(w, dw, loss) < kGradTol);

  auto g0i = randn<double>(N * C, 4), g0w = randn<double>(C, 5);
  auto gi = g0i, gw = g0w;
  backward(gi, gw);
  backward(gi, gw);
  check_accumulated(gi, g0i, dinp);
  check_accumulated(gw, g0w, dw);
}

TEST_CASE("rmsnorm: float results identical on 1 and 2 threads") {
  const int64_t N = 37, C = 200;
  auto inp = randn<float>(N * C, 1), w = randn<float>(C, 2), dout = randn<float>(N * C, 3);
  auto run = [&](int threads) {
    Context ctx(threads);
    std::vector<float> out(N * C), rstd(N), dinp(N * C), dw(C);
    ops::rmsnorm_forward<float>(ctx, view(out, {N, C}), view(rstd, {N}), cview(inp, {N, C}),
                                cview(w, {C}), 1e-5f);
    ops::rmsnorm_backward<float>(ctx, view(dinp, {N, C}), view(dw, {C}), cview(dout, {N, C}),
                                 cview(inp, {N, C}), cview(w, {C}), cview(rstd, {N}));
    return concat({&out, &rstd, &dinp, &dw});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("rmsnorm: bad shapes are errors naming the tensor") {
  Context ctx(1);
  std::vector<float> x(12), w(4), r(3), y(12);
  CHECK_THROWS_WITH(ops::rmsnorm_forward<float>(ctx, view(y, {3, 4}), view(r, {3}), cview(x, {3, 4}),
                                                cview(w, {3}), 1e-5f),
                    Contains("rmsnorm weight has shape [3] but [4] was expected"));
  CHECK_THROWS_WITH(ops::rmsnorm_backward<float>(ctx, view(y, {3, 4}), view(w, {4}), cview(x, {4, 3}),
                                                 cview(x, {3, 4}), cview(w, {4}), cview(r, {3})),
                    Contains("rmsnorm output gradient has shape [4, 3] but [3, 4] was expected"));
}

// ---------------------------------------------------------------------------------------
// rope

TEST_CASE("rope: position 0 is the identity, position 1 rotates each pair by its frequency") {
  Context ctx(1);
  ops::RopeTable<double> table(2, 4);  // theta = 10000: frequencies 1 and 10000^(-1/2) = 0.01
  std::vector<double> x{1, 2, 3, 4, 1, 2, 3, 4};  // [B=1, T=2, H=1, hd=4]
  ops::rope_forward<double>(ctx, view(x, {1, 2, 1, 4}), table);
  CHECK(x[0] == 1);
  CHECK(x[1] == 2);
  CHECK(x[2] == 3);
  CHECK(x[3] == 4);
  // Pairs (x[0], x[2]) = (1, 3) by 1 rad and (x[1], x[3]) = (2, 4) by 0.01 rad.
  CHECK(x[4] == Approx(std::cos(1.0) - 3 * std::sin(1.0)).epsilon(1e-14));
  CHECK(x[6] == Approx(std::sin(1.0) + 3 * std::cos(1.0)).epsilon(1e-14));
  CHECK(x[5] == Approx(2 * std::cos(0.01) - 4 * std::sin(0.01)).epsilon(1e-14));
  CHECK(x[7] == Approx(2 * std::sin(0.01) + 4 * std::cos(0.01)).epsilon(1e-14));
}

TEST_CASE("rope: gradient matches finite differences, backward inverts forward") {
  Context ctx(1);
  const int64_t B = 2, S = 3, H = 2, hd = 6;
  ops::RopeTable<double> table(4, hd, 100.0);
  auto x = randn<double>(B * S * H * hd, 1), W = randn<double>(B * S * H * hd, 2);
  std::vector<double> y;
  auto loss = [&] {
    y = x;
    ops::rope_forward<double>(ctx, view(y, {B, S, H, hd}), table);
    return dot(y, W);
  };
  // rope is linear and in place: the gradient of Σ rope(x)·W is rope_backward(W).
  auto dx = W;
  ops::rope_backward<double>(ctx, view(dx, {B, S, H, hd}), table);
  CHECK(grad_rel_error(x, dx, loss) < kGradTol);

  auto z = x;
  ops::rope_forward<double>(ctx, view(z, {B, S, H, hd}), table);
  ops::rope_backward<double>(ctx, view(z, {B, S, H, hd}), table);
  for (size_t i = 0; i < z.size(); ++i) CHECK(z[i] == Approx(x[i]).epsilon(1e-13).margin(1e-13));
}

TEST_CASE("rope: float table from double angles; results identical on 1 and 2 threads") {
  // At t = 4000 the angle is 4000 rad: computed in float it would be off by ~1e-4 rad.
  ops::RopeTable<float> tf(4096, 8);
  CHECK(tf.cos(4000)[0] == float(std::cos(4000.0)));
  CHECK(tf.sin(4000)[0] == float(std::sin(4000.0)));

  const int64_t B = 3, S = 17, H = 4, hd = 64;
  ops::RopeTable<float> table(S, hd);
  auto x = randn<float>(B * S * H * hd, 1), g = randn<float>(B * S * H * hd, 2);
  auto run = [&](int threads) {
    Context ctx(threads);
    auto y = x, dy = g;
    ops::rope_forward<float>(ctx, view(y, {B, S, H, hd}), table);
    ops::rope_backward<float>(ctx, view(dy, {B, S, H, hd}), table);
    return concat({&y, &dy});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("rope: bad shapes and tables are errors") {
  Context ctx(1);
  CHECK_THROWS_WITH(ops::RopeTable<float>(8, 5), Contains("rope head_dim 5 is not even"));
  ops::RopeTable<float> table(4, 8);
  std::vector<float> x(2 * 5 * 1 * 8);
  CHECK_THROWS_WITH(ops::rope_forward<float>(ctx, view(x, {2, 5, 1, 8}), table),
                    Contains("rope input has 5 positions but the rope table only 4"));
  CHECK_THROWS_WITH(ops::rope_backward<float>(ctx, view(x, {2, 5, 2, 4}), table),
                    Contains("rope gradient has shape [2, 5, 2, 4] but [2, 5, 2, 8] was expected"));
  CHECK_THROWS_WITH(ops::rope_forward<float>(ctx, view(x, {10, 8}), table),
                    Contains("rope input has shape [10, 8]"));
}

// ---------------------------------------------------------------------------------------
// swiglu

TEST_CASE("fast math: exp and sigmoid match libm; non-finite input gives NaN") {
  // Every float in [-87, 0] at a stride, against double exp: the header promises <= 2 ulp.
  double worst = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
    const double ref = std::exp(double(x)), got = double(ops::exp_nonpositive(x));
    worst = std::max(worst, std::fabs(got - ref) / ref);
  }
  CHECK(worst < 2.5e-7);  // 2 ulp of a float is 2^-22 = 2.4e-7 relative
  CHECK(ops::exp_nonpositive(0.0f) == 1.0f);
  CHECK(ops::exp_nonpositive(-0.0f) == 1.0f);
  // Below -87 the result is clamped, not flushed.
  CHECK(ops::exp_nonpositive(-1e30f) == ops::exp_nonpositive(-87.0f));
  CHECK(ops::exp_nonpositive(-1e30f) > 0.0f);
  for (const float bad : {NAN, -NAN, -INFINITY, INFINITY}) {
    CHECK(std::isnan(ops::exp_nonpositive(bad)));
    CHECK(std::isnan(ops::sigmoid(bad)));
  }
  double worst_sig = 0;
  for (float x = -100.0f; x <= 100.0f; x += 0.0173f)
    worst_sig = std::max(worst_sig, std::fabs(double(ops::sigmoid(x)) - 1.0 / (1.0 + std::exp(-double(x)))));
  CHECK(worst_sig < 1e-7);
  // The vectorised loop (swiglu) agrees with the scalar function element by element.
  std::vector<float> g(1000), u(1000, 1.0f), y(1000);
  for (size_t i = 0; i < g.size(); ++i) g[i] = -50.0f + 0.1f * float(i);
  g[17] = NAN;
  Context ctx(1);
  ops::swiglu_forward<float>(ctx, view(y, {1, 1000}), cview(g, {1, 1000}), cview(u, {1, 1000}));
  for (size_t i = 0; i < g.size(); ++i) {
    if (i == 17) {
      CHECK(std::isnan(y[i]));
      continue;
    }
    CHECK(y[i] == g[i] * ops::sigmoid(g[i]));
  }
}

TEST_CASE("swiglu: known values") {
  Context ctx(1);
  std::vector<double> gate{0, 1, -200, 30}, up{5, 2, 7, 3}, out(4);
  ops::swiglu_forward<double>(ctx, view(out, {1, 4}), cview(gate, {1, 4}), cview(up, {1, 4}));
  CHECK(out[0] == 0);
  CHECK(out[1] == Approx(2 / (1 + std::exp(-1.0))).epsilon(1e-15));
  CHECK(out[2] == Approx(0).margin(1e-80));  // silu → 0 for very negative gates, no NaN
  CHECK(out[3] == Approx(90).epsilon(1e-12));
  std::vector<double> dout{1, 1, 1, 1}, dgate(4), dup(4);
  ops::swiglu_backward<double>(ctx, view(dgate, {1, 4}), view(dup, {1, 4}), cview(dout, {1, 4}),
                               cview(gate, {1, 4}), cview(up, {1, 4}));
  CHECK(dgate[0] == Approx(2.5).epsilon(1e-15));  // silu'(0) = 1/2
  CHECK(dup[0] == 0);
  CHECK(std::isfinite(dgate[2]));
  CHECK(std::isfinite(dup[2]));
}

TEST_CASE("swiglu: gradients match finite differences, backward accumulates") {
  Context ctx(1);
  const int64_t N = 3, F = 7;
  auto gate = randn<double>(N * F, 1, 2.0), up = randn<double>(N * F, 2), W = randn<double>(N * F, 3);
  std::vector<double> out(N * F);
  auto loss = [&] {
    ops::swiglu_forward<double>(ctx, view(out, {N, F}), cview(gate, {N, F}), cview(up, {N, F}));
    return dot(out, W);
  };
  auto backward = [&](std::vector<double>& dg, std::vector<double>& du) {
    ops::swiglu_backward<double>(ctx, view(dg, {N, F}), view(du, {N, F}), cview(W, {N, F}),
                                 cview(gate, {N, F}), cview(up, {N, F}));
  };
  std::vector<double> dgate(N * F), dup(N * F);
  backward(dgate, dup);
  CHECK(grad_rel_error(gate, dgate, loss) < kGradTol);
  CHECK(grad_rel_error(up, dup, loss) < kGradTol);

  auto g0g = randn<double>(N * F, 4), g0u = randn<double>(N * F, 5);
  auto gg = g0g, gu = g0u;
  backward(gg, gu);
  backward(gg, gu);
  check_accumulated(gg, g0g, dgate);
  check_accumulated(gu, g0u, dup);
}

TEST_CASE("swiglu: float results identical on 1 and 2 threads") {
  const int64_t N = 37, F = 300;
  auto gate = randn<float>(N * F, 1), up = randn<float>(N * F, 2), dout = randn<float>(N * F, 3);
  auto run = [&](int threads) {
    Context ctx(threads);
    std::vector<float> out(N * F), dg(N * F), du(N * F);
    ops::swiglu_forward<float>(ctx, view(out, {N, F}), cview(gate, {N, F}), cview(up, {N, F}));
    ops::swiglu_backward<float>(ctx, view(dg, {N, F}), view(du, {N, F}), cview(dout, {N, F}),
                                cview(gate, {N, F}), cview(up, {N, F}));
    return concat({&out, &dg, &du});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("swiglu: bad shapes are errors naming the tensor") {
  Context ctx(1);
  std::vector<float> a(12), b(12), c(12);
  CHECK_THROWS_WITH(ops::swiglu_forward<float>(ctx, view(c, {3, 4}), cview(a, {3, 4}), cview(b, {4, 3})),
                    Contains("swiglu up has shape [4, 3] but [3, 4] was expected"));
  CHECK_THROWS_WITH(ops::swiglu_backward<float>(ctx, view(c, {3, 4}), view(b, {2, 6}), cview(a, {3, 4}),
                                                cview(a, {3, 4}), cview(a, {3, 4})),
                    Contains("swiglu up gradient has shape [2, 6]"));
}

// ---------------------------------------------------------------------------------------
// cross entropy

TEST_CASE("cross entropy: uniform logits give log V; huge logits stay finite") {
  Context ctx(1);
  const int64_t N = 3, V = 11;
  std::vector<double> logits(N * V, 0.25), losses(N);
  std::vector<int32_t> tgt{0, 5, 10};
  const double mean = ops::cross_entropy_forward<double>(ctx, view(losses, {N}), cview(logits, {N, V}),
                                                         cview(tgt, {N}));
  CHECK(mean == Approx(std::log(double(V))).epsilon(1e-14));
  for (double l : losses) CHECK(l == Approx(std::log(double(V))).epsilon(1e-14));
  std::vector<double> dl(N * V);
  ops::cross_entropy_backward<double>(ctx, view(dl, {N, V}), cview(logits, {N, V}), cview(tgt, {N}), 1.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v)
      CHECK(dl[n * V + v] == Approx(1.0 / V - (v == tgt[n] ? 1 : 0)).epsilon(1e-14));

  // Without the max shift exp(1e4) overflows float.
  std::vector<float> big{1e4f, 1e4f - 2.0f, 0.0f}, lf(1), dlf(3);
  std::vector<int32_t> t1{1};
  const float l = ops::cross_entropy_forward<float>(ctx, view(lf, {1}), cview(big, {1, 3}), cview(t1, {1}));
  CHECK(l == Approx(2 + std::log1p(std::exp(-2.0))).epsilon(1e-6));
  ops::cross_entropy_backward<float>(ctx, view(dlf, {1, 3}), cview(big, {1, 3}), cview(t1, {1}), 1.0f);
  CHECK(dlf[0] == Approx(1 / (1 + std::exp(-2.0))).epsilon(1e-6));
  CHECK(dlf[1] == Approx(std::exp(-2.0) / (1 + std::exp(-2.0)) - 1).epsilon(1e-6));
  CHECK(dlf[2] == 0.0f);
}

TEST_CASE("cross entropy: gradients match finite differences, backward accumulates") {
  Context ctx(1);
  const int64_t N = 4, V = 7;
  auto logits = randn<double>(N * V, 1, 3.0), W = randn<double>(N, 2);
  auto tgt = rand_ids(N, int32_t(V), 3);
  std::vector<double> losses(N);
  auto weighted = [&] {
    ops::cross_entropy_forward<double>(ctx, view(losses, {N}), cview(logits, {N, V}), cview(tgt, {N}));
    return dot(losses, W);
  };
  // The backward takes one scale per call: give each row its own weight through a slice.
  auto backward_weighted = [&](std::vector<double>& dl) {
    for (int64_t n = 0; n < N; ++n)
      ops::cross_entropy_backward<double>(ctx, view(dl, {N, V}).slice(n, n + 1),
                                          cview(logits, {N, V}).slice(n, n + 1),
                                          cview(tgt, {N}).slice(n, n + 1), W[size_t(n)]);
  };
  std::vector<double> dl(N * V);
  backward_weighted(dl);
  CHECK(grad_rel_error(logits, dl, weighted) < kGradTol);

  // The returned mean, differentiated with scale = 1/N over the whole batch.
  auto mean = [&] {
    return ops::cross_entropy_forward<double>(ctx, view(losses, {N}), cview(logits, {N, V}), cview(tgt, {N}));
  };
  std::vector<double> dmean(N * V);
  ops::cross_entropy_backward<double>(ctx, view(dmean, {N, V}), cview(logits, {N, V}), cview(tgt, {N}),
                                      1.0 / double(N));
  CHECK(grad_rel_error(logits, dmean, mean) < kGradTol);

  auto g0 = randn<double>(N * V, 4), g = g0;
  backward_weighted(g);
  backward_weighted(g);
  check_accumulated(g, g0, dl);
}

TEST_CASE("cross entropy: float results identical on 1 and 2 threads") {
  const int64_t N = 37, V = 1000;
  auto logits = randn<float>(N * V, 1, 4.0f);
  auto tgt = rand_ids(N, int32_t(V), 2);
  auto run = [&](int threads) {
    Context ctx(threads);
    std::vector<float> losses(N), dl(N * V);
    const float mean = ops::cross_entropy_forward<float>(ctx, view(losses, {N}), cview(logits, {N, V}),
                                                         cview(tgt, {N}));
    ops::cross_entropy_backward<float>(ctx, view(dl, {N, V}), cview(logits, {N, V}), cview(tgt, {N}),
                                       1.0f / float(N));
    std::vector<float> m{mean};
    return concat({&m, &losses, &dl});
  };
  CHECK(bitwise_equal(run(1), run(2)));
}

TEST_CASE("cross entropy: bad targets and shapes are errors") {
  Context ctx(2);
  std::vector<float> logits(4 * 5), losses(4), dl(4 * 5);
  std::vector<int32_t> tgt{0, 4, 5, 1};
  CHECK_THROWS_WITH(ops::cross_entropy_forward<float>(ctx, view(losses, {4}), cview(logits, {4, 5}), cview(tgt, {4})),
                    Contains("target id 5 at position 2 is out of range [0, 5)"));
  tgt[2] = -3;
  CHECK_THROWS_WITH(ops::cross_entropy_backward<float>(ctx, view(dl, {4, 5}), cview(logits, {4, 5}),
                                                       cview(tgt, {4}), 1.0f),
                    Contains("target id -3 at position 2"));
  tgt[2] = 2;
  CHECK_THROWS_WITH(ops::cross_entropy_forward<float>(ctx, view(losses, {2, 2}), cview(logits, {4, 5}),
                                                      cview(tgt, {4})),
                    Contains("cross entropy losses has shape [2, 2] but [4] was expected"));
  CHECK_THROWS_WITH(ops::cross_entropy_backward<float>(ctx, view(dl, {5, 4}), cview(logits, {4, 5}),
                                                       cview(tgt, {4}), 1.0f),
                    Contains("cross entropy logits gradient has shape [5, 4]"));
}

// Weight-gradient shapes (small C, K = tokens) take gemm's K-chunked path: check it against
// a double-precision reference for every transpose and beta, a K that is not a multiple of
// the chunk, and bitwise equality between thread counts.
TEST_CASE("gemm: K-chunked path matches a reference and is thread-count invariant") {
  const int64_t M = 96, N = 80, K = 2600;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f}) {
        INFO("ta " << ta << " tb " << tb << " beta " << beta);
        auto A = randn<float>(M * K, 11), B = randn<float>(K * N, 12), C0 = randn<float>(M * N, 13);
        const int64_t lda = ta ? M : K, ldb = tb ? K : N;
        auto run = [&](int threads) {
          Context ctx(threads);
          std::vector<float> C = C0;
          ops::gemm<float>(ctx, ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, beta, C.data(), N);
          return C;
        };
        const auto c1 = run(1), c2 = run(2);
        CHECK(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)) == 0);
        double worst = 0;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double ref = double(beta) * C0[size_t(i * N + j)];
            for (int64_t k = 0; k < K; ++k) {
              const double a = ta ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)];
              const double b = tb ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)];
              ref += 0.5 * a * b;
            }
            worst = std::max(worst, std::abs(ref - double(c1[size_t(i * N + j)])));
          }
        CHECK(worst < 1e-3);  // K = 2600 unit normals: sums of size ~25, float rounding ~1e-5
      }
}
