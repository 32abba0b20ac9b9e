#include <cmath>
#include <cstdint>
#include <vector>

#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/ops/cpu/attention.hpp"
#include "support/catch.hpp"

using namespace resbm;

namespace {

struct Shape4 {
  int64_t B, T, H, hd;
  size_t n() const { return size_t(B * T * H * hd); }
  size_t cache() const { return size_t(ops::attention_cache_size(B, T, H)); }
};

template <class T>
std::vector<T> normal(size_t n, uint64_t stream) {
  std::vector<T> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = T(Philox::normal(42, stream, i));
  return x;
}

template <class T>
Tensor<T> view(std::vector<T>& x, const Shape4& s) {
  return Tensor<T>(x.data(), {s.B, s.T, s.H, s.hd});
}
template <class T>
Tensor<const T> cview(const std::vector<T>& x, const Shape4& s) {
  return Tensor<const T>(x.data(), {s.B, s.T, s.H, s.hd});
}

// The definition, in plain loops and double: out and the softmax P[b,h,t,s].
void reference(const Shape4& s, const std::vector<double>& q, const std::vector<double>& k,
               const std::vector<double>& v, std::vector<double>& out, std::vector<double>& P) {
  const int64_t C = s.H * s.hd;
  out.assign(s.n(), 0.0);
  P.assign(s.cache(), 0.0);
  const double scale = 1.0 / std::sqrt(double(s.hd));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t t = 0; t < s.T; ++t) {
        std::vector<double> w(size_t(t + 1));
        double m = -INFINITY;
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < s.hd; ++i)
            dot += q[size_t(b * s.T * C + t * C + h * s.hd + i)] * k[size_t(b * s.T * C + u * C + h * s.hd + i)];
          w[size_t(u)] = dot * scale;
          m = std::max(m, w[size_t(u)]);
        }
        double sum = 0;
        for (auto& x : w) sum += (x = std::exp(x - m));
        for (int64_t u = 0; u <= t; ++u) {
          const double p = w[size_t(u)] / sum;
          P[size_t(((b * s.H + h) * s.T + t) * s.T + u)] = p;
          for (int64_t i = 0; i < s.hd; ++i)
            out[size_t(b * s.T * C + t * C + h * s.hd + i)] += p * v[size_t(b * s.T * C + u * C + h * s.hd + i)];
        }
      }
}

std::vector<double> to_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// Every shape the tests use: T crossing the row block (32) or not, hd odd, one of each.
const Shape4 kShapes[] = {{1, 1, 1, 1}, {2, 5, 3, 3}, {2, 37, 3, 5}, {1, 64, 2, 16}, {3, 70, 2, 7}, {1, 129, 1, 8}};

}  // namespace

TEST_CASE("attention forward matches the plain-loop definition in float") {
  Context ctx(2);
  for (const Shape4& s : kShapes) {
    INFO("B=" << s.B << " T=" << s.T << " H=" << s.H << " hd=" << s.hd);
    auto q = normal<float>(s.n(), 1), k = normal<float>(s.n(), 2), v = normal<float>(s.n(), 3);
    std::vector<float> out(s.n()), cache(s.cache(), -1.0f);  // -1: every entry must be written
    ops::attention_forward<float>(ctx, view(out, s), Tensor<float>(cache.data(), {int64_t(cache.size())}),
                                  cview(q, s), cview(k, s), cview(v, s));
    std::vector<double> ref_out, ref_P;
    reference(s, to_double(q), to_double(k), to_double(v), ref_out, ref_P);
    double err_out = 0, err_P = 0;
    for (size_t i = 0; i < out.size(); ++i) err_out = std::max(err_out, std::abs(out[i] - ref_out[i]));
    for (size_t i = 0; i < cache.size(); ++i) err_P = std::max(err_P, std::abs(cache[i] - ref_P[i]));
    CHECK(err_out < 1e-5);
    CHECK(err_P < 1e-6);
  }
}

TEST_CASE("attention is causal: keys and values after t do not reach out[t]") {
  Context ctx(1);
  const Shape4 s{2, 45, 2, 6};
  auto q = normal<float>(s.n(), 1), k = normal<float>(s.n(), 2), v = normal<float>(s.n(), 3);
  std::vector<float> out1(s.n()), out2(s.n()), cache(s.cache());
  Tensor<float> c(cache.data(), {int64_t(cache.size())});
  ops::attention_forward<float>(ctx, view(out1, s), c, cview(q, s), cview(k, s), cview(v, s));
  const int64_t cut = 20;  // change k, v (and q) at every position > cut
  const int64_t C = s.H * s.hd;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = cut + 1; t < s.T; ++t)
      for (int64_t i = 0; i < C; ++i) {
        const size_t j = size_t(b * s.T * C + t * C + i);
        k[j] += 3.0f;
        v[j] -= 5.0f;
        q[j] *= 2.0f;
      }
  ops::attention_forward<float>(ctx, view(out2, s), c, cview(q, s), cview(k, s), cview(v, s));
  bool before_same = true, after_changed = true;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t i = 0; i < C; ++i) {
        const size_t j = size_t(b * s.T * C + t * C + i);
        if (t <= cut) before_same = before_same && out1[j] == out2[j];
        else after_changed = after_changed && out1[j] != out2[j];
      }
  CHECK(before_same);
  CHECK(after_changed);
}

TEST_CASE("attention backward matches central differences in double") {
  Context ctx(2);
  // T=37 crosses a row block, so the blocked products and the column blocks are both tested.
  for (const Shape4& s : {Shape4{2, 6, 2, 3}, Shape4{1, 37, 2, 3}}) {
    INFO("B=" << s.B << " T=" << s.T << " H=" << s.H << " hd=" << s.hd);
    auto q = normal<double>(s.n(), 1), k = normal<double>(s.n(), 2), v = normal<double>(s.n(), 3);
    const auto w = normal<double>(s.n(), 4);  // loss = Σ out·w, so dout = w
    std::vector<double> out(s.n()), cache(s.cache());
    Tensor<double> c(cache.data(), {int64_t(cache.size())});
    auto loss = [&]() {
      ops::attention_forward<double>(ctx, view(out, s), c, cview(q, s), cview(k, s), cview(v, s));
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += out[i] * w[i];
      return l;
    };
    loss();
    std::vector<double> dq(s.n()), dk(s.n()), dv(s.n());
    ops::attention_backward<double>(ctx, view(dq, s), view(dk, s), view(dv, s), cview(w, s), c, cview(q, s),
                                    cview(k, s), cview(v, s), cview(out, s));
    const double h = 1e-6;
    struct Case {
      std::vector<double>* x;
      const std::vector<double>* grad;
      const char* name;
    };
    for (const Case& cs : {Case{&q, &dq, "dq"}, Case{&k, &dk, "dk"}, Case{&v, &dv, "dv"}}) {
      double diff2 = 0, norm2 = 0;
      for (size_t i = 0; i < s.n(); ++i) {
        const double x0 = (*cs.x)[i];
        (*cs.x)[i] = x0 + h;
        const double lp = loss();
        (*cs.x)[i] = x0 - h;
        const double lm = loss();
        (*cs.x)[i] = x0;
        const double num = (lp - lm) / (2 * h);
        diff2 += (num - (*cs.grad)[i]) * (num - (*cs.grad)[i]);
        norm2 += (*cs.grad)[i] * (*cs.grad)[i];
      }
      // Relative error of the whole gradient, ‖numeric − analytic‖ / ‖analytic‖: central
      // differences at h=1e-6 in double are good to ~1e-9 here.
      INFO(cs.name << " relative error " << std::sqrt(diff2 / norm2));
      CHECK(norm2 > 0);
      CHECK(std::sqrt(diff2 / norm2) < 1e-6);
    }
  }
}

TEST_CASE("attention backward accumulates into dq, dk, dv") {
  Context ctx(2);
  const Shape4 s{2, 40, 3, 4};
  auto q = normal<double>(s.n(), 1), k = normal<double>(s.n(), 2), v = normal<double>(s.n(), 3);
  const auto g = normal<double>(s.n(), 4);
  std::vector<double> out(s.n()), cache(s.cache());
  Tensor<double> c(cache.data(), {int64_t(cache.size())});
  ops::attention_forward<double>(ctx, view(out, s), c, cview(q, s), cview(k, s), cview(v, s));
  std::vector<double> z1(s.n()), z2(s.n()), z3(s.n());
  ops::attention_backward<double>(ctx, view(z1, s), view(z2, s), view(z3, s), cview(g, s), c, cview(q, s),
                                  cview(k, s), cview(v, s), cview(out, s));
  const auto init = normal<double>(s.n(), 5);
  std::vector<double> a1 = init, a2 = init, a3 = init;
  ops::attention_backward<double>(ctx, view(a1, s), view(a2, s), view(a3, s), cview(g, s), c, cview(q, s),
                                  cview(k, s), cview(v, s), cview(out, s));
  double err = 0;
  for (size_t i = 0; i < s.n(); ++i) {
    err = std::max(err, std::abs(a1[i] - (init[i] + z1[i])));
    err = std::max(err, std::abs(a2[i] - (init[i] + z2[i])));
    err = std::max(err, std::abs(a3[i] - (init[i] + z3[i])));
  }
  CHECK(err < 1e-12);
}

TEST_CASE("attention results do not depend on the thread count") {
  // B*H = 9 pairs: the two threads get uneven chunks.
  const Shape4 s{3, 77, 3, 10};
  auto q = normal<float>(s.n(), 1), k = normal<float>(s.n(), 2), v = normal<float>(s.n(), 3);
  const auto g = normal<float>(s.n(), 4);
  std::vector<float> out[2], cache[2], dq[2], dk[2], dv[2];
  for (int r = 0; r < 2; ++r) {
    Context ctx(r + 1);
    out[r].assign(s.n(), 0.0f);
    cache[r].assign(s.cache(), 0.0f);
    dq[r].assign(s.n(), 0.5f);
    dk[r].assign(s.n(), 0.5f);
    dv[r].assign(s.n(), 0.5f);
    Tensor<float> c(cache[r].data(), {int64_t(s.cache())});
    ops::attention_forward<float>(ctx, view(out[r], s), c, cview(q, s), cview(k, s), cview(v, s));
    ops::attention_backward<float>(ctx, view(dq[r], s), view(dk[r], s), view(dv[r], s), cview(g, s), c,
                                   cview(q, s), cview(k, s), cview(v, s), cview(out[r], s));
  }
  CHECK(out[0] == out[1]);
  CHECK(cache[0] == cache[1]);
  CHECK(dq[0] == dq[1]);
  CHECK(dk[0] == dk[1]);
  CHECK(dv[0] == dv[1]);
}

TEST_CASE("attention rejects bad shapes with resbm::Error") {
  Context ctx(1);
  const Shape4 s{2, 8, 2, 4};
  std::vector<float> q(s.n()), k(s.n()), v(s.n()), out(s.n()), cache(s.cache());
  std::vector<float> dq(s.n()), dk(s.n()), dv(s.n()), g(s.n());
  Tensor<float> c(cache.data(), {int64_t(cache.size())});
  CHECK_NOTHROW(ops::attention_forward<float>(ctx, view(out, s), c, cview(q, s), cview(k, s), cview(v, s)));

  const Shape4 other{2, 8, 4, 2};  // same element count, heads and head size swapped
  CHECK_THROWS_AS(ops::attention_forward<float>(ctx, view(out, s), c, cview(q, s), cview(k, other), cview(v, s)),
                  Error);
  CHECK_THROWS_AS(ops::attention_forward<float>(ctx, view(out, other), c, cview(q, s), cview(k, s), cview(v, s)),
                  Error);
  Tensor<float> short_cache(cache.data(), {int64_t(cache.size()) - 1});
  CHECK_THROWS_AS(
      ops::attention_forward<float>(ctx, view(out, s), short_cache, cview(q, s), cview(k, s), cview(v, s)), Error);
  Tensor<const float> flat_q(q.data(), {s.B * s.T, s.H * s.hd});
  CHECK_THROWS_AS(ops::attention_forward<float>(ctx, view(out, s), c, flat_q, cview(k, s), cview(v, s)), Error);
  CHECK_THROWS_AS(ops::attention_backward<float>(ctx, view(dq, s), view(dk, other), view(dv, s), cview(g, s), c,
                                                 cview(q, s), cview(k, s), cview(v, s), cview(out, s)),
                  Error);
  CHECK_THROWS_AS(ops::attention_backward<float>(ctx, view(dq, s), view(dk, s), view(dv, s), cview(g, other), c,
                                                 cview(q, s), cview(k, s), cview(v, s), cview(out, s)),
                  Error);
  CHECK_THROWS_AS(ops::attention_backward<float>(ctx, view(dq, s), view(dk, s), view(dv, s), cview(g, s),
                                                 short_cache, cview(q, s), cview(k, s), cview(v, s), cview(out, s)),
                  Error);
  CHECK(ops::attention_cache_size(2, 8, 2) == 2 * 2 * 8 * 8);
}
