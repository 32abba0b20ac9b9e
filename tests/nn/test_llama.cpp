// Finite-difference checks, in double precision, of one block and of the whole model, and
// the slicing contract the pipeline relies on.
#include <cmath>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/nn/llama.hpp"
#include "support/catch.hpp"

using namespace resbm;

namespace {

nn::LlamaConfig tiny() {
  nn::LlamaConfig c;
  c.vocab = 11;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.seq_len = 5;
  c.ffn = 12;
  return c;
}

void fill_tokens(nn::LlamaActivations<double>& s, int vocab, uint64_t seed) {
  for (size_t i = 0; i < s.tokens.size(); ++i) {
    s.tokens[i] = int32_t(Philox::bits64(seed, 1, i) % uint64_t(vocab));
    s.targets[i] = int32_t(Philox::bits64(seed, 2, i) % uint64_t(vocab));
  }
}

// Perturbs weights so that gains are not all 1 and every path is exercised.
void jiggle(ParamArena<double>& a, uint64_t seed) {
  for (size_t i = 0; i < a.size(); ++i) a.params()[i] += 0.05 * Philox::normal(seed, 9, i);
}

double rel_err(double a, double b) { return std::abs(a - b) / std::max(1e-8, std::abs(a) + std::abs(b)); }

}  // namespace

TEST_CASE("whole model: analytic gradients match central differences in double") {
  const auto c = tiny();
  ParamArena<double> arena;
  nn::Llama<double> model(c, arena);
  arena.allocate();
  model.init(3);
  jiggle(arena, 4);
  Context ctx(1);
  auto s = model.make_activations(2);
  fill_tokens(s, c.vocab, 5);

  arena.zero_grad();
  model.forward(ctx, s);
  model.backward(ctx, s, {});

  // Every parameter entry, a few elements each. Bound: 1e-5 relative (double, h = 1e-5).
  const double h = 1e-5;
  int checked = 0;
  for (size_t p = 0; p < arena.infos().size(); ++p) {
    auto w = arena.param(p);
    auto g = arena.grad(p);
    for (int j = 0; j < 3; ++j) {
      int64_t e = int64_t(Philox::bits64(7, p, uint64_t(j)) % uint64_t(w.numel()));
      const double keep = w[e];
      w[e] = keep + h;
      double lp = model.forward(ctx, s);
      w[e] = keep - h;
      double lm = model.forward(ctx, s);
      w[e] = keep;
      double fd = (lp - lm) / (2 * h);
      INFO(arena.info(p).name << "[" << e << "] analytic " << g[e] << " numeric " << fd);
      CHECK((rel_err(g[e], fd) < 1e-5 || std::abs(g[e] - fd) < 1e-9));
      ++checked;
    }
  }
  CHECK(checked == int(arena.infos().size()) * 3);
}

TEST_CASE("one block: parameter and input gradients match central differences") {
  const auto c = tiny();
  ParamArena<double> arena;
  nn::Llama<double> block(c, arena, {1, 2, false, false});
  arena.allocate();
  block.init(3);
  jiggle(arena, 6);
  Context ctx(1);
  auto s = block.make_activations(2);
  for (size_t i = 0; i < s.input.size(); ++i) s.input[i] = Philox::normal(8, 0, i);
  std::vector<double> r(s.input.size());  // loss = sum(out * r)
  for (size_t i = 0; i < r.size(); ++i) r[i] = Philox::normal(8, 1, i);
  auto loss = [&] {
    block.forward(ctx, s);
    auto out = block.output(s);
    double l = 0;
    for (int64_t i = 0; i < out.numel(); ++i) l += out[i] * r[size_t(i)];
    return l;
  };
  arena.zero_grad();
  loss();
  const int64_t N = 2 * c.seq_len;
  block.backward(ctx, s, Tensor<const double>(r.data(), {N, c.d_model}));
  std::vector<double> dx(block.input_grad(s).begin(), block.input_grad(s).end());

  const double h = 1e-5;
  for (size_t e = 0; e < s.input.size(); e += 7) {
    const double keep = s.input[e];
    s.input[e] = keep + h;
    double lp = loss();
    s.input[e] = keep - h;
    double lm = loss();
    s.input[e] = keep;
    INFO("input[" << e << "]");
    const double fd = (lp - lm) / (2 * h);
    CHECK((rel_err(dx[e], fd) < 1e-5 || std::abs(dx[e] - fd) < 1e-9));
  }
  for (size_t p = 0; p < arena.infos().size(); ++p) {
    auto w = arena.param(p);
    auto g = arena.grad(p);
    for (int64_t e = 0; e < w.numel(); e += 5) {
      const double keep = w[e];
      w[e] = keep + h;
      double lp = loss();
      w[e] = keep - h;
      double lm = loss();
      w[e] = keep;
      INFO(arena.info(p).name << "[" << e << "]");
      // Bound as for the whole model: central differences at h = 1e-5 carry ~1e-6 of
      // truncation error on elements whose gradient is small (seen: 1.2e-6 at -O2).
      const double fd = (lp - lm) / (2 * h);
      CHECK((rel_err(g[e], fd) < 1e-5 || std::abs(g[e] - fd) < 1e-9));
    }
  }
}

TEST_CASE("two slices chained equal the whole model, weights and gradients") {
  const auto c = tiny();
  Context ctx(1);
  ParamArena<double> whole_arena, a0, a1;
  nn::Llama<double> whole(c, whole_arena);
  nn::Llama<double> s0(c, a0, {0, 1, true, false}), s1(c, a1, {1, 2, false, true});
  whole_arena.allocate();
  a0.allocate();
  a1.allocate();
  whole.init(11);
  s0.init(11);
  s1.init(11);
  // Same names draw the same weights, whichever arena holds them.
  for (auto* a : {&a0, &a1})
    for (const auto& info : a->infos()) {
      auto w = whole_arena.param(whole_arena.find(info.name));
      auto v = a->param(a->find(info.name));
      for (int64_t i = 0; i < w.numel(); ++i) REQUIRE(w[i] == v[i]);
    }
  auto sw = whole.make_activations(2), x0 = s0.make_activations(2), x1 = s1.make_activations(2);
  fill_tokens(sw, c.vocab, 12);
  fill_tokens(x0, c.vocab, 12);
  fill_tokens(x1, c.vocab, 12);
  whole_arena.zero_grad();
  a0.zero_grad();
  a1.zero_grad();
  double lw = whole.forward(ctx, sw);
  s0.forward(ctx, x0);
  auto out0 = s0.output(x0);
  std::copy(out0.begin(), out0.end(), x1.input.begin());
  double l1 = s1.forward(ctx, x1);
  CHECK(lw == l1);
  whole.backward(ctx, sw, {});
  s1.backward(ctx, x1, {});
  s0.backward(ctx, x0, s1.input_grad(x1));
  for (auto* a : {&a0, &a1})
    for (const auto& info : a->infos()) {
      auto g = whole_arena.grad(whole_arena.find(info.name));
      auto h = a->grad(a->find(info.name));
      for (int64_t i = 0; i < g.numel(); ++i) REQUIRE(g[i] == h[i]);
    }
}

TEST_CASE("a config that cannot work is a clear error") {
  nn::LlamaConfig c;
  c.d_model = 130;
  c.n_heads = 4;
  ParamArena<float> arena;
  CHECK_THROWS_WITH((nn::Llama<float>(c, arena)),
                    Catch::Matchers::Contains("d_model 130 is not divisible by n_heads 4"));
  c = nn::LlamaConfig{};
  CHECK_THROWS_WITH((nn::Llama<float>(c, arena, {3, 9, true, true})),
                    Catch::Matchers::Contains("outside the model's 4 layers"));
}
