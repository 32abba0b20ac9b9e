#include <algorithm>
#include <atomic>
#include <cmath>
#include <thread>
#include <vector>
#include <set>

#include "resbm/resbm.hpp"
#include "support/catch.hpp"

using namespace resbm;

TEST_CASE("bf16 rounds to nearest even and keeps NaN") {
  CHECK(bf16::from_float(1.0f).bits == 0x3f80);
  // 1 + 2^-8 is exactly half-way between two bf16 values: ties go to the even one (1.0).
  CHECK(bf16::from_float(1.00390625f).to_float() == 1.0f);
  // 1 + 3*2^-8 is half-way between 1+2^-7 (odd) and 1+2^-6 (even).
  CHECK(bf16::from_float(1.01171875f).to_float() == 1.015625f);
  CHECK(std::isnan(bf16::from_float(NAN).to_float()));
  CHECK(std::isinf(bf16::from_float(INFINITY).to_float()));
  CHECK(bf16::from_float(-2.5f).to_float() == -2.5f);
}

TEST_CASE("Tensor views check shapes with clear errors") {
  float data[24] = {};
  Tensor<float> t(data, {2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.reshape({6, 4}).size(0) == 6);
  CHECK_THROWS_WITH(t.reshape({5, 4}), Catch::Matchers::Contains("cannot reshape [2, 3, 4] to [5, 4]"));
  CHECK_NOTHROW(expect_shape(t, {2, 3, 4}, "x"));
  CHECK_THROWS_WITH(expect_shape(t, {2, 4, 3}, "x"),
                    Catch::Matchers::Contains("x has shape [2, 3, 4] but [2, 4, 3] was expected"));
  Tensor<const float> c = t;
  CHECK(c.slice(1, 2).data == data + 12);
}

TEST_CASE("Philox is counter based: same numbers in any order, sane moments") {
  CHECK(Philox::normal(7, 3, 100) == Philox::normal(7, 3, 100));
  CHECK(Philox::normal(7, 3, 100) != Philox::normal(7, 4, 100));
  CHECK(Philox::normal(7, 3, 100) != Philox::normal(8, 3, 100));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    double x = Philox::normal(1, 0, uint64_t(i));
    sum += x;
    sq += x * x;
  }
  CHECK(std::abs(sum / n) < 0.01);
  CHECK(std::abs(sq / n - 1.0) < 0.02);
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(Philox::bits64(1, 0, uint64_t(i)));
  CHECK(seen.size() == 1000);
  float u = Philox::uniform(3, 0, 0);
  CHECK((u > 0.0f && u < 1.0f));
}

TEST_CASE("ParamArena lays out named entries and refuses misuse") {
  ParamArena<float> arena;
  size_t a = arena.add("w", {3, 5}, ParamKind::matrix);
  size_t b = arena.add("g", {7}, ParamKind::gain);
  CHECK_THROWS_WITH(arena.add("w", {1}, ParamKind::gain), Catch::Matchers::Contains("declared twice"));
  arena.allocate();
  CHECK(arena.count() == 22);
  CHECK(arena.info(b).offset % 16 == 0);
  CHECK(arena.param(a).numel() == 15);
  CHECK(arena.grad(b).data == arena.grads() + arena.info(b).offset);
  CHECK(arena.find("g") == b);
  CHECK_THROWS_WITH(arena.find("nope"), Catch::Matchers::Contains("no parameter named 'nope'"));
  CHECK_THROWS(arena.add("late", {1}, ParamKind::gain));
}

TEST_CASE("Context refuses a negative thread count") {
  CHECK_THROWS_WITH(Context(-1), Catch::Matchers::Contains("--threads"));
  Context ctx(2);
  CHECK(ctx.threads == 2);
  std::vector<int> out(1000);
  parallel_for(ctx, 1000, [&](int64_t i) { out[size_t(i)] = int(i) * 2; });
  CHECK(out[999] == 1998);
}

TEST_CASE("parallel_for: every index once, on every thread count, nested and concurrent") {
  for (int T : {1, 2, 3, 7}) {
    Context ctx(T);
    for (int64_t n : {0, 1, 2, 5, 1000, 4097}) {
      INFO("threads " << T << " n " << n);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      for (int rep = 0; rep < 50; ++rep) parallel_for(ctx, n, [&](int64_t i) { hits[size_t(i)]++; });
      for (auto& h : hits) REQUIRE(h.load() == 50);
    }
  }
  // A loop inside a loop, and two threads sharing one Context: both run (inline), no deadlock.
  Context ctx(4);
  std::atomic<int64_t> sum{0};
  auto outer = [&] {
    parallel_for(ctx, 64, [&](int64_t i) { parallel_for(ctx, 64, [&](int64_t j) { sum += i * 64 + j; }); });
  };
  std::thread other(outer);
  outer();
  other.join();
  CHECK(sum.load() == 2 * (4096 * 4095 / 2));
}

TEST_CASE("parallel_for: an exception from any index reaches the caller; the pool stays usable") {
  Context ctx(3);
  for (int64_t bad : {0, 500, 999}) {
    INFO("throwing index " << bad);
    CHECK_THROWS_WITH(parallel_for(ctx, 1000,
                                   [&](int64_t i) {
                                     if (i == bad) throw Error("index failed", "none");
                                   }),
                      Catch::Matchers::Contains("index failed"));
    std::vector<int> out(1000, 0);
    parallel_for(ctx, 1000, [&](int64_t i) { out[size_t(i)] = 1; });
    CHECK(std::count(out.begin(), out.end(), 1) == 1000);
  }
}

TEST_CASE("parallel_for: idle workers sleep and wake for the next loop") {
  Context ctx(2);
  std::vector<int> out(10, 0);
  for (int rep = 0; rep < 3; ++rep) {
    // Longer than ThreadPool::kSpin, so the worker has gone to sleep on the futex.
    std::this_thread::sleep_for(ThreadPool::kSpin * 5);
    parallel_for(ctx, 10, [&](int64_t i) { out[size_t(i)] += 1; });
  }
  CHECK(std::count(out.begin(), out.end(), 3) == 10);
}
