// The partitioned model in one process: layer ranges, equality with the unpartitioned
// model, and wire bytes measured against the codecs' formulas.
#include <vector>

#include "resbm/data/sampler.hpp"
#include "resbm/pipeline/local.hpp"
#include "support/catch.hpp"
#include "support/pipeline_fixtures.hpp"

using namespace resbm;

namespace {

nn::LlamaConfig small() { return testing::small_model(23); }
std::vector<int32_t> corpus(int vocab) { return testing::random_corpus(vocab, 4000, 5); }

std::vector<optim::AnyOptimizer> adamw_for(auto& pipe) {
  std::vector<optim::AnyOptimizer> opts;
  for (auto& s : pipe.stages()) opts.emplace_back(optim::AdamW(s->arena(), optim::AdamWConfig{}));
  return opts;
}

template <class Codec>
std::vector<double> train(pipeline::LocalPipeline<Codec>& pipe, const data::BatchSampler& sampler, int steps,
                          int micro_batches, double clip) {
  Context ctx(2);
  pipe.init(9);
  auto opts = adamw_for(pipe);
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step)
    losses.push_back(pipe.train_step(ctx, sampler, step, micro_batches, opts, 1.0f, clip, 9).first);
  return losses;
}

// Every parameter of `b`'s stages equals the same-named one of `a`'s, within `tol`.
template <class A, class B>
void same_weights(A& a, B& b, double tol) {
  for (auto& sb : b.stages())
    for (const auto& info : sb->arena().infos()) {
      if (info.name.rfind("boundary.", 0) == 0) continue;  // codec weights exist only in b
      bool found = false;
      for (auto& sa : a.stages()) {
        auto& arena = sa->arena();
        for (size_t i = 0; i < arena.infos().size(); ++i)
          if (arena.info(i).name == info.name) {
            found = true;
            auto wa = arena.param(i), wb = sb->arena().param(sb->arena().find(info.name));
            for (int64_t e = 0; e < wa.numel(); ++e) {
              INFO(info.name << "[" << e << "]");
              REQUIRE(std::abs(double(wa[e]) - double(wb[e])) <= tol);
            }
          }
      }
      REQUIRE(found);
    }
}

}  // namespace

TEST_CASE("partition splits layers evenly and rejects impossible splits") {
  auto r = pipeline::partition(10, 4);
  REQUIRE(r.size() == 4);
  CHECK((r[0].first == 0 && r[0].last == 3 && r[0].embed && !r[0].head));
  CHECK((r[1].first == 3 && r[1].last == 6));
  CHECK((r[3].first == 8 && r[3].last == 10 && r[3].head && !r[3].embed));
  CHECK_THROWS_WITH(pipeline::partition(3, 4), Catch::Matchers::Contains("exceeds the model's 3 layers"));
  CHECK_THROWS_WITH(pipeline::partition(3, 0), Catch::Matchers::Contains("--stages 0"));
}

TEST_CASE("2 stages with Dense<Fp32Wire> equal the unpartitioned model exactly") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 4, c.seq_len, 3);
  pipeline::LocalPipeline<codec::presets::DenseFp32> whole(c, 1, 4), split(c, 2, 4);
  // clip 0: the norm is summed per stage, then across stages, a different order of the
  // same terms — equal only to rounding, and a clip would carry that into the weights.
  auto lw = train(whole, sampler, 4, 1, 0.0);
  auto ls = train(split, sampler, 4, 1, 0.0);
  CHECK(lw == ls);
  same_weights(whole, split, 0.0);
  CHECK(split.wire().forward_bytes == 4.0 * 4 * c.seq_len * c.d_model * 4);  // 4 steps, fp32
  CHECK(split.wire().backward_bytes == split.wire().forward_bytes);
}

TEST_CASE("4 stages and 4 micro-batches with fp32 wire equal one process to rounding, with clipping") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 8, c.seq_len, 4);
  pipeline::LocalPipeline<codec::presets::DenseFp32> whole(c, 1, 8), split(c, 4, 2);
  auto lw = train(whole, sampler, 5, 1, 0.5);
  auto ls = train(split, sampler, 5, 4, 0.5);
  for (size_t i = 0; i < lw.size(); ++i) CHECK(ls[i] == Approx(lw[i]).epsilon(1e-5));
  same_weights(whole, split, 1e-4);
}

TEST_CASE("the resbm preset trains and its measured bytes match the codec's formula") {
  const auto c = small();
  const auto tokens = corpus(c.vocab);
  const data::BatchSampler sampler(tokens, 4, c.seq_len, 5);
  using Codec = codec::presets::Resbm<2>;
  pipeline::LocalPipeline<Codec> pipe(c, 4, 4);
  auto losses = train(pipe, sampler, 3, 1, 1.0);
  for (double l : losses) CHECK(std::isfinite(l));
  const int64_t N = 4 * c.seq_len;
  ParamArena<float> scratch;
  typename Codec::template Encoder<float> probe({0, c.d_model, c.vocab}, scratch);
  // One boundary, one micro-batch: r int8 codes + a scale per 16 values forward, per 64 back.
  const double per_message_pair = double(probe.wire_bytes(N)) + double(probe.grad_bytes(N));
  CHECK(per_message_pair == (2 * N + 4 * ((2 * N + 15) / 16)) + (2 * N + 4 * ((2 * N + 63) / 64)));
  CHECK(pipe.wire().forward_bytes + pipe.wire().backward_bytes == 3 * 3 * per_message_pair);  // 3 steps x 3 boundaries
  CHECK(pipe.wire().bytes_per_token() == Approx(per_message_pair / double(N)));
  CHECK(pipeline::compression_ratio(pipe.wire()) == Approx(4.0 * c.d_model * double(N) / per_message_pair));
}
