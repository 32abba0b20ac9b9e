#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/optim/optim.hpp"
#include "support/catch.hpp"

using namespace resbm;
using namespace resbm::optim;

namespace {

void fill(Tensor<float> t, uint64_t seed, uint64_t stream, float scale = 1.0f) {
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = scale * Philox::normal(seed, stream, uint64_t(i));
}

std::vector<double> to_double(Tensor<const float> t) { return std::vector<double>(t.begin(), t.end()); }

// Reference Newton–Schulz in double with plain loops: independent of the library's GEMM.
std::vector<double> ref_ns(const std::vector<double>& g, int rows, int cols, int steps) {
  double sq = 0;
  for (double x : g) sq += x * x;
  const double s = 1.0 / (std::sqrt(sq) + 1e-7);
  const bool tall = rows > cols;
  const int r = tall ? cols : rows, c = tall ? rows : cols;
  std::vector<double> X(size_t(r * c));
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < c; ++j) X[size_t(i * c + j)] = (tall ? g[size_t(j * cols + i)] : g[size_t(i * c + j)]) * s;
  const double a = 3.4445, b = -4.7750, cc = 2.0315;
  for (int it = 0; it < steps; ++it) {
    std::vector<double> A(size_t(r * r), 0.0), B(size_t(r * r), 0.0), Y(size_t(r * c), 0.0);
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < r; ++j)
        for (int k = 0; k < c; ++k) A[size_t(i * r + j)] += X[size_t(i * c + k)] * X[size_t(j * c + k)];
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < r; ++j) {
        double aa = 0;
        for (int k = 0; k < r; ++k) aa += A[size_t(i * r + k)] * A[size_t(k * r + j)];
        B[size_t(i * r + j)] = b * A[size_t(i * r + j)] + cc * aa;
      }
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < c; ++j) {
        double bx = 0;
        for (int k = 0; k < r; ++k) bx += B[size_t(i * r + k)] * X[size_t(k * c + j)];
        Y[size_t(i * c + j)] = a * X[size_t(i * c + j)] + bx;
      }
    X = Y;
  }
  std::vector<double> out(size_t(rows * cols));
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) out[size_t(i * cols + j)] = tall ? X[size_t(j * rows + i)] : X[size_t(i * cols + j)];
  return out;
}

// Eigenvalues of a symmetric n x n matrix by cyclic Jacobi rotations.
std::vector<double> sym_eigenvalues(std::vector<double> a, int n) {
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) off += a[size_t(p * n + q)] * a[size_t(p * n + q)];
    if (off < 1e-24) break;
    for (int p = 0; p < n; ++p)
      for (int q = p + 1; q < n; ++q) {
        const double apq = a[size_t(p * n + q)];
        if (apq == 0) continue;
        const double theta = (a[size_t(q * n + q)] - a[size_t(p * n + p)]) / (2 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < n; ++k) {  // columns p, q
          const double akp = a[size_t(k * n + p)], akq = a[size_t(k * n + q)];
          a[size_t(k * n + p)] = c * akp - s * akq;
          a[size_t(k * n + q)] = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {  // rows p, q
          const double apk = a[size_t(p * n + k)], aqk = a[size_t(q * n + k)];
          a[size_t(p * n + k)] = c * apk - s * aqk;
          a[size_t(q * n + k)] = s * apk + c * aqk;
        }
      }
  }
  std::vector<double> e(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) e[size_t(i)] = a[size_t(i * n + i)];
  return e;
}

// Reference AdamW element update in double, as written in the paper / PyTorch docs.
struct RefAdam {
  std::vector<double> m, v;
  explicit RefAdam(size_t n) : m(n, 0.0), v(n, 0.0) {}
  void step(std::vector<double>& p, const std::vector<double>& g, int t, double lr, const AdamWConfig& c,
            bool decay) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] -= lr * c.weight_decay * p[i];
      m[i] = c.beta1 * m[i] + (1 - c.beta1) * g[i];
      v[i] = c.beta2 * v[i] + (1 - c.beta2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(double(c.beta1), t));
      const double vhat = v[i] / (1 - std::pow(double(c.beta2), t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + c.eps);
    }
  }
};

void check_close(Tensor<const float> got, const std::vector<double>& want, double tol) {
  REQUIRE(size_t(got.numel()) == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("element " << i << ": got " << got[int64_t(i)] << ", want " << want[i]);
    CHECK(std::abs(double(got[int64_t(i)]) - want[i]) <= tol);
  }
}

bool same_bits(const ParamArena<float>& a, const ParamArena<float>& b) {
  return a.size() == b.size() && std::memcmp(a.params(), b.params(), a.size() * sizeof(float)) == 0;
}

// A small model-like arena: hidden matrices (wide and tall), embedding, head, gain.
void declare_model(ParamArena<float>& a, int64_t scale = 1) {
  a.add("emb", {10 * scale, 6}, ParamKind::embedding);
  a.add("blocks.0.wq", {6, 9 * scale}, ParamKind::matrix);
  a.add("blocks.0.wo", {9 * scale, 6}, ParamKind::matrix);
  a.add("blocks.0.norm", {6}, ParamKind::gain);
  a.add("head", {10 * scale, 6}, ParamKind::head);
  a.allocate();
}

void fill_params(ParamArena<float>& a, uint64_t seed) {
  for (size_t i = 0; i < a.infos().size(); ++i) fill(a.param(i), seed, i, 0.5f);
}
void fill_grads(ParamArena<float>& a, uint64_t seed) {
  for (size_t i = 0; i < a.infos().size(); ++i) fill(a.grad(i), seed, 1000 + i, 0.1f);
}

}  // namespace

TEST_CASE("AdamW matches two hand-computed steps; gains get no weight decay") {
  ParamArena<float> arena;
  const size_t w = arena.add("w", {2, 3}, ParamKind::matrix);
  const size_t g = arena.add("g", {3}, ParamKind::gain);
  arena.allocate();
  fill(arena.param(w), 1, 0);
  fill(arena.param(g), 1, 1);
  AdamWConfig cfg;
  cfg.lr = 0.01f;
  cfg.weight_decay = 0.1f;
  AdamW opt(arena, cfg);
  CHECK(opt.steps() == 0);

  std::vector<double> pw = to_double(arena.param(w)), pg = to_double(arena.param(g));
  RefAdam rw(6), rg(3);
  const float scales[2] = {1.0f, 0.5f};
  for (int t = 1; t <= 2; ++t) {
    fill(arena.grad(w), 2, uint64_t(t));
    fill(arena.grad(g), 3, uint64_t(t));
    rw.step(pw, to_double(arena.grad(w)), t, double(cfg.lr) * scales[t - 1], cfg, true);
    rg.step(pg, to_double(arena.grad(g)), t, double(cfg.lr) * scales[t - 1], cfg, false);
    opt.step(Context(1), arena, scales[t - 1]);
    check_close(arena.param(w), pw, 1e-6);
    check_close(arena.param(g), pg, 1e-6);
  }
  CHECK(opt.steps() == 2);

  // The gain's result differs from a decayed one by more than the tolerance, so the check
  // above really tells decay from no decay.
  std::vector<double> decayed = to_double(arena.param(g));
  for (double& x : decayed) x *= 1 - 0.01 * 0.1;
  bool differs = false;
  for (size_t i = 0; i < 3; ++i) differs = differs || std::abs(decayed[i] - pg[i]) > 1e-6;
  CHECK(differs);
}

TEST_CASE("AdamW over a subset touches only those entries") {
  ParamArena<float> arena;
  declare_model(arena);
  fill_params(arena, 4);
  fill_grads(arena, 5);
  std::vector<float> before(arena.params(), arena.params() + arena.size());
  AdamW opt(arena, {}, {0, 3});
  opt.step(Context(1), arena, 1.0f);
  for (size_t e = 0; e < arena.infos().size(); ++e) {
    const ParamInfo& p = arena.info(e);
    const bool same = std::memcmp(arena.params() + p.offset, before.data() + p.offset, p.numel * 4) == 0;
    CHECK(same == (e != 0 && e != 3));
  }
  const NamedState s = opt.state();
  REQUIRE(s.size() == 4);
  CHECK(s[0].first == "adamw.m.emb");
  CHECK(s[1].first == "adamw.m.blocks.0.norm");
  CHECK(s[2].first == "adamw.v.emb");
  CHECK(s[3].first == "adamw.v.blocks.0.norm");
  CHECK(s[0].second.rank == 2);
  CHECK(s[0].second.size(0) == 10);
  CHECK(s[1].second.rank == 1);
}

TEST_CASE("newton_schulz5 orthogonalises wide and tall matrices") {
  Context ctx(1);
  for (auto [rows, cols] : {std::pair<int, int>{8, 16}, {16, 8}, {12, 12}}) {
    INFO(rows << " x " << cols);
    std::vector<float> in(size_t(rows * cols)), out(in.size());
    for (size_t i = 0; i < in.size(); ++i) in[i] = Philox::normal(7, 0, i);
    NewtonSchulzScratch<float> scratch(rows, cols);
    newton_schulz5<float>(ctx, in.data(), out.data(), rows, cols, 5, scratch);
    // Singular values of O are the square roots of the eigenvalues of its short-side Gram
    // matrix. The quintic trades exactness for speed: they land in about [0.7, 1.2]
    // (Keller Jordan's write-up: roughly [0.5, 1.5]), whatever the spread of the input's.
    const int r = std::min(rows, cols);
    std::vector<double> gram(size_t(r * r));
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < r; ++j) {
        double s = 0;
        for (int k = 0; k < std::max(rows, cols); ++k)
          s += rows <= cols ? double(out[size_t(i * cols + k)]) * out[size_t(j * cols + k)]
                            : double(out[size_t(k * cols + i)]) * out[size_t(k * cols + j)];
        gram[size_t(i * r + j)] = s;
      }
    for (double e : sym_eigenvalues(gram, r)) {
      CHECK(std::sqrt(e) > 0.5);
      CHECK(std::sqrt(e) < 1.5);
    }
    for (int i = 0; i < r; ++i) CHECK(std::abs(gram[size_t(i * r + i)] - 1.0) < 0.5);
    // And it is the same function as the double reference.
    const std::vector<double> want = ref_ns(std::vector<double>(in.begin(), in.end()), rows, cols, 5);
    check_close(Tensor<const float>(out.data(), {int64_t(out.size())}), want, 1e-4);
    // In place gives the same result.
    std::vector<float> inplace = in;
    newton_schulz5<float>(ctx, inplace.data(), inplace.data(), rows, cols, 5, scratch);
    CHECK(inplace == out);
  }
  // The double instantiation agrees with the reference to double precision.
  std::vector<double> in(24);
  for (size_t i = 0; i < in.size(); ++i) in[i] = Philox::normal(9, 0, i);
  std::vector<double> out(24);
  NewtonSchulzScratch<double> scratch(6, 4);
  newton_schulz5<double>(ctx, in.data(), out.data(), 6, 4, 5, scratch);
  const std::vector<double> want = ref_ns(in, 6, 4, 5);
  for (size_t i = 0; i < 24; ++i) CHECK(std::abs(out[i] - want[i]) < 1e-12);
  NewtonSchulzScratch<float> small(2, 2);
  std::vector<float> f(24);
  CHECK_THROWS_AS(newton_schulz5<float>(ctx, f.data(), f.data(), 6, 4, 5, small), Error);
}

TEST_CASE("Muon matches a hand-computed step with and without Nesterov, with weight decay") {
  for (bool nesterov : {true, false}) {
    for (float wd : {0.0f, 0.05f}) {
      INFO("nesterov " << nesterov << ", weight decay " << wd);
      ParamArena<float> arena;
      const size_t tall = arena.add("tall", {3, 2}, ParamKind::matrix);
      const size_t wide = arena.add("wide", {2, 3}, ParamKind::matrix);
      arena.allocate();
      fill(arena.param(tall), 11, 0);
      fill(arena.param(wide), 11, 1);
      MuonConfig cfg;
      cfg.lr = 0.05f;
      cfg.momentum = 0.9f;
      cfg.nesterov = nesterov;
      cfg.weight_decay = wd;
      Muon opt(arena, cfg);

      const size_t ids[2] = {tall, wide};
      const int rows[2] = {3, 2}, cols[2] = {2, 3};
      std::vector<double> p[2] = {to_double(arena.param(tall)), to_double(arena.param(wide))};
      std::vector<double> buf[2] = {std::vector<double>(6, 0.0), std::vector<double>(6, 0.0)};
      const float scales[3] = {1.0f, 0.5f, 0.25f};
      for (int t = 0; t < 3; ++t) {
        for (int k = 0; k < 2; ++k) {
          fill(arena.grad(ids[k]), 12, uint64_t(10 * t + k));
          const std::vector<double> g = to_double(arena.grad(ids[k]));
          std::vector<double> u(6);
          for (size_t i = 0; i < 6; ++i) {
            buf[k][i] = cfg.momentum * buf[k][i] + g[i];
            u[i] = nesterov ? g[i] + cfg.momentum * buf[k][i] : buf[k][i];
          }
          const std::vector<double> o = ref_ns(u, rows[k], cols[k], 5);
          const double lr = double(cfg.lr) * scales[t];
          const double shape_scale = std::sqrt(std::max(1.0, double(rows[k]) / cols[k]));
          for (size_t i = 0; i < 6; ++i) p[k][i] = p[k][i] * (1 - lr * wd) - lr * shape_scale * o[i];
        }
        opt.step(Context(1), arena, scales[t]);
        check_close(arena.param(tall), p[0], 1e-5);
        check_close(arena.param(wide), p[1], 1e-5);
        check_close(opt.state()[0].second, buf[0], 1e-6);
      }
      CHECK(opt.steps() == 3);
    }
  }
}

TEST_CASE("Muon's non-matrix entries follow AdamW exactly") {
  ParamArena<float> a, b;
  declare_model(a);
  declare_model(b);
  fill_params(a, 21);
  fill_params(b, 21);
  MuonConfig cfg;
  cfg.adamw.lr = 3e-3f;
  cfg.adamw.weight_decay = 0.2f;
  Muon muon(a, cfg);
  AdamW adam(b, cfg.adamw);
  for (int t = 0; t < 3; ++t) {
    fill_grads(a, 22 + uint64_t(t));
    fill_grads(b, 22 + uint64_t(t));
    muon.step(Context(1), a, 0.7f);
    adam.step(Context(1), b, 0.7f);
  }
  CHECK(muon.adamw().steps() == 3);
  for (size_t e = 0; e < a.infos().size(); ++e) {
    const ParamInfo& p = a.info(e);
    INFO(p.name);
    const bool same = std::memcmp(a.params() + p.offset, b.params() + p.offset, p.numel * 4) == 0;
    CHECK(same == (p.kind != ParamKind::matrix));
  }
}

TEST_CASE("Optimizer state is named and round-trips through a restart") {
  ParamArena<float> a;
  declare_model(a);
  fill_params(a, 31);
  Muon muon(a, {});
  AdamW adam_full(a, {});
  for (int t = 0; t < 3; ++t) {
    fill_grads(a, 32 + uint64_t(t));
    muon.step(Context(1), a, 1.0f);
  }
  const NamedState s = muon.state();
  std::map<std::string, std::vector<float>> saved;
  for (const auto& [name, view] : s) saved[name] = std::vector<float>(view.begin(), view.end());
  CHECK(saved.size() == s.size());  // unique names
  const std::vector<std::string> expected = {
      "muon.momentum.blocks.0.wq", "muon.momentum.blocks.0.wo", "adamw.m.emb", "adamw.m.blocks.0.norm",
      "adamw.m.head", "adamw.v.emb", "adamw.v.blocks.0.norm", "adamw.v.head"};
  REQUIRE(s.size() == expected.size());
  for (size_t i = 0; i < s.size(); ++i) CHECK(s[i].first == expected[i]);
  CHECK(s[0].second.size(0) == 6);
  CHECK(s[0].second.size(1) == 9);
  CHECK(s[1].second.size(0) == 9);
  for (const auto& [name, view] : s) {
    INFO(name);
    bool nonzero = false;
    for (float x : view) nonzero = nonzero || x != 0.0f;
    CHECK(nonzero);
  }
  const NamedState sa = adam_full.state();
  CHECK(sa.size() == 10);
  CHECK(sa[0].first == "adamw.m.emb");
  CHECK(sa[9].first == "adamw.v.head");

  // A fresh optimizer with the saved state, step count and parameters continues exactly.
  ParamArena<float> b;
  declare_model(b);
  std::memcpy(b.params(), a.params(), a.size() * sizeof(float));
  Muon resumed(b, {});
  for (auto& [name, view] : resumed.state()) {
    REQUIRE(saved.count(name) == 1);
    std::copy(saved[name].begin(), saved[name].end(), view.begin());
  }
  resumed.set_steps(muon.steps());
  CHECK(resumed.steps() == 3);
  CHECK(resumed.adamw().steps() == 3);
  fill_grads(a, 40);
  fill_grads(b, 40);
  muon.step(Context(1), a, 0.5f);
  resumed.step(Context(1), b, 0.5f);
  CHECK(same_bits(a, b));

  // Without the step count the bias correction differs, so the round trip above is not
  // passing by accident.
  ParamArena<float> c;
  declare_model(c);
  std::memcpy(c.params(), b.params(), b.size() * sizeof(float));
  Muon fresh(c, {});
  for (auto& [name, view] : fresh.state()) std::copy(saved[name].begin(), saved[name].end(), view.begin());
  fill_grads(c, 40);
  ParamArena<float> d;
  declare_model(d);
  std::memcpy(d.params(), b.params(), b.size() * sizeof(float));
  Muon stepped(d, {});
  for (auto& [name, view] : stepped.state()) std::copy(saved[name].begin(), saved[name].end(), view.begin());
  stepped.set_steps(3);
  fill_grads(d, 40);
  // Nor without the buffers.
  ParamArena<float> e;
  declare_model(e);
  std::memcpy(e.params(), b.params(), b.size() * sizeof(float));
  Muon empty(e, {});
  empty.set_steps(3);
  fill_grads(e, 40);
  fresh.step(Context(1), c, 1.0f);
  stepped.step(Context(1), d, 1.0f);
  empty.step(Context(1), e, 1.0f);
  CHECK_FALSE(same_bits(c, d));
  CHECK_FALSE(same_bits(e, d));
}

TEST_CASE("lr_multiplier: linear warmup, cosine decay, floor") {
  CHECK(lr_multiplier(0, 10, 110) == Approx(0.1));
  CHECK(lr_multiplier(4, 10, 110) == Approx(0.5));
  CHECK(lr_multiplier(9, 10, 110) == Approx(1.0));
  CHECK(lr_multiplier(10, 10, 110) == Approx(1.0));
  CHECK(lr_multiplier(60, 10, 110) == Approx(0.55));  // half way: min + (1 - min) / 2
  CHECK(lr_multiplier(35, 10, 110) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI / 4))));
  CHECK(lr_multiplier(110, 10, 110) == Approx(0.1));
  CHECK(lr_multiplier(500, 10, 110) == Approx(0.1));
  CHECK(lr_multiplier(60, 10, 110, 0.0f) == Approx(0.5));
  CHECK(lr_multiplier(0, 0, 100) == Approx(1.0));
  CHECK(lr_multiplier(99, 100, 100) == Approx(1.0));
  CHECK(lr_multiplier(100, 100, 100) == Approx(0.1));
  CHECK_THROWS_AS(lr_multiplier(-1, 10, 100), Error);
  CHECK_THROWS_AS(lr_multiplier(0, 10, 0), Error);
  CHECK_THROWS_AS(lr_multiplier(0, -1, 100), Error);
  CHECK_THROWS_AS(lr_multiplier(0, 200, 100), Error);
  CHECK_THROWS_AS(lr_multiplier(0, 10, 100, 1.5f), Error);
  CHECK_THROWS_AS(lr_multiplier(0, 10, 100, -0.1f), Error);
}

TEST_CASE("clip_grad_norm measures the global norm, scales above the limit, can be disabled") {
  ParamArena<float> arena;
  const size_t w = arena.add("w", {2, 3}, ParamKind::matrix);
  const size_t g = arena.add("g", {3}, ParamKind::gain);
  arena.allocate();
  auto set = [&] {
    for (float& x : arena.grad(w)) x = 1.0f;
    for (float& x : arena.grad(g)) x = -2.0f;
    arena.grads()[6] = 100.0f;  // padding after w: not a gradient, must not count
  };
  const double norm = std::sqrt(6.0 + 12.0);
  Context ctx(1);

  set();
  CHECK(clip_grad_norm(ctx, arena, 0.0) == Approx(norm).epsilon(1e-12));
  CHECK(arena.grad(w)[0] == 1.0f);
  CHECK(clip_grad_norm(ctx, arena, -1.0) == Approx(norm).epsilon(1e-12));
  CHECK(arena.grad(g)[2] == -2.0f);

  CHECK(clip_grad_norm(ctx, arena, 10.0) == Approx(norm).epsilon(1e-12));
  CHECK(arena.grad(w)[5] == 1.0f);

  CHECK(clip_grad_norm(ctx, arena, 1.5) == Approx(norm).epsilon(1e-12));
  const double coef = 1.5 / (norm + 1e-6);
  CHECK(arena.grad(w)[3] == Approx(coef).epsilon(1e-6));
  CHECK(arena.grad(g)[1] == Approx(-2.0 * coef).epsilon(1e-6));
  CHECK(clip_grad_norm(ctx, arena, 0.0) == Approx(1.5).epsilon(1e-5));

  set();
  arena.grad(g)[0] = INFINITY;
  CHECK(std::isinf(clip_grad_norm(ctx, arena, 1.0)));
  CHECK(arena.grad(w)[0] == 1.0f);  // a non-finite norm is reported, not spread

  ParamArena<double> wide;  // the gradient checks run models in double
  wide.add("x", {2}, ParamKind::gain);
  wide.allocate();
  wide.grads()[0] = 3.0;
  wide.grads()[1] = 4.0;
  CHECK(clip_grad_norm(ctx, wide, 1.0) == 5.0);
  CHECK(wide.grads()[1] == Approx(0.8));
}

TEST_CASE("Results do not depend on the thread count") {
  // Elementwise work is split into pieces of 16384 elements, so the embedding (19200) and
  // the AdamW-only matrices below span several. Muon's matrices are kept at 48 x 64: above
  // about 64^3 multiply-adds per call OpenBLAS threads a GEMM, and its threaded GEMM does
  // not round like its single-threaded one (ops::gemm, not this code; see the AdamW run,
  // whose large matrices check every other loop here).
  auto run = [](int threads, bool use_muon) {
    auto arena = std::make_unique<ParamArena<float>>();
    arena->add("emb", {300, 64}, ParamKind::embedding);
    arena->add("w1", use_muon ? std::initializer_list<int64_t>{48, 64} : std::initializer_list<int64_t>{192, 128},
               ParamKind::matrix);
    arena->add("w2", use_muon ? std::initializer_list<int64_t>{64, 48} : std::initializer_list<int64_t>{128, 192},
               ParamKind::matrix);
    arena->add("norm", {128}, ParamKind::gain);
    arena->add("head", {300, 64}, ParamKind::head);
    arena->allocate();
    fill_params(*arena, 51);
    Context ctx(threads);
    Muon muon(*arena, {});
    AdamW adam(*arena, {});
    std::vector<double> norms;
    for (int t = 0; t < 3; ++t) {
      for (size_t i = 0; i < arena->infos().size(); ++i) fill(arena->grad(i), 52, 1000 * uint64_t(t) + i, 3.0f);
      norms.push_back(clip_grad_norm(ctx, *arena, 1.0));
      if (use_muon)
        muon.step(ctx, *arena, 1.0f);
      else
        adam.step(ctx, *arena, 1.0f);
    }
    return std::make_pair(std::move(arena), norms);
  };
  for (bool use_muon : {true, false}) {
    INFO((use_muon ? "Muon" : "AdamW"));
    auto [a1, n1] = run(1, use_muon);
    auto [a2, n2] = run(2, use_muon);
    CHECK(n1 == n2);
    CHECK(n1[0] > 1.0);  // clipping was active
    CHECK(same_bits(*a1, *a2));
  }
}

TEST_CASE("Bad configurations and misuse are resbm::Error") {
  ParamArena<float> arena;
  declare_model(arena);
  auto adam = [&](auto edit) {
    AdamWConfig c;
    edit(c);
    return AdamW(arena, c);
  };
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.lr = -1e-3f; }), Error);
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.lr = NAN; }), Error);
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.beta1 = 1.0f; }), Error);
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.beta2 = -0.1f; }), Error);
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.eps = 0.0f; }), Error);
  CHECK_THROWS_AS(adam([](AdamWConfig& c) { c.weight_decay = -0.1f; }), Error);
  CHECK_THROWS_AS(AdamW(arena, {}, {0, 0}), Error);
  CHECK_THROWS_AS(AdamW(arena, {}, {99}), Error);
  CHECK_THROWS_WITH(AdamW(arena, {}, {0, 0}), Catch::Matchers::Contains("AdamW entry 0 (") &&
                                                  Catch::Matchers::Contains("') listed twice"));
  CHECK_THROWS_WITH(AdamW(arena, {}, {99}), Catch::Matchers::Contains("AdamW entry 99 is out of range (the arena has"));

  auto muon = [&](auto edit) {
    MuonConfig c;
    edit(c);
    return Muon(arena, c);
  };
  CHECK_THROWS_AS(muon([](MuonConfig& c) { c.lr = -1.0f; }), Error);
  CHECK_THROWS_AS(muon([](MuonConfig& c) { c.momentum = 1.0f; }), Error);
  CHECK_THROWS_AS(muon([](MuonConfig& c) { c.ns_steps = 0; }), Error);
  CHECK_THROWS_AS(muon([](MuonConfig& c) { c.weight_decay = -1.0f; }), Error);
  CHECK_THROWS_AS(muon([](MuonConfig& c) { c.adamw.beta2 = 1.5f; }), Error);

  ParamArena<float> unallocated;
  unallocated.add("w", {2, 2}, ParamKind::matrix);
  CHECK_THROWS_AS(AdamW(unallocated, {}), Error);
  CHECK_THROWS_AS(Muon(unallocated, {}), Error);

  ParamArena<float> cube;
  cube.add("w", {2, 2, 2}, ParamKind::matrix);
  cube.allocate();
  CHECK_THROWS_AS(Muon(cube, {}), Error);

  Muon m(arena, {});
  AdamW a(arena, {});
  Context ctx(1);
  CHECK_THROWS_AS(m.step(ctx, arena, -1.0f), Error);
  CHECK_THROWS_AS(a.step(ctx, arena, NAN), Error);
  CHECK_THROWS_AS(m.set_steps(-1), Error);
  CHECK_THROWS_AS(a.set_steps(-1), Error);
  ParamArena<float> other;
  other.add("x", {4}, ParamKind::gain);
  other.allocate();
  CHECK_THROWS_AS(m.step(ctx, other, 1.0f), Error);
  CHECK_THROWS_AS(a.step(ctx, other, 1.0f), Error);
  CHECK_THROWS_AS(clip_grad_norm(ctx, arena, NAN), Error);
}
