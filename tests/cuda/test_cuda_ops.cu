// Every CUDA op against the CPU op (float, on the host) on fresh Philox inputs. Outputs are
// poisoned with NaN (0xff bytes) before each run, so an unwritten element fails the check;
// errors are ‖out − ref‖ / ‖ref‖ over the whole output. References take the same
// bf16-rounded inputs as the kernels, so the bounds measure the kernels' own rounding:
// bf16 outputs ~1e-2, fp32 outputs ~1e-5.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/cuda.cuh"
#include "resbm/ops/cpu/ops.hpp"
#include "resbm/optim/adamw.hpp"
#include "cuda/support.cuh"

using namespace resbm;
using namespace resbm::test;

TEST_CASE("cuda matmul forward and backward match the CPU GEMM") {
  struct S {
    int64_t N, C, OC;
  };
  for (S s : {S{64, 64, 64}, S{257, 96, 200}, S{37, 72, 48}, S{512, 768, 384}}) {
    std::printf("matmul N=%ld C=%ld OC=%ld\n", long(s.N), long(s.C), long(s.OC));
    auto inp = randn(size_t(s.N * s.C)), w = randn(size_t(s.OC * s.C), 0.05f);
    auto dout = randn(size_t(s.N * s.OC)), dinp0 = randn(size_t(s.N * s.C)), dw0 = randn(size_t(s.OC * s.C));
    auto d_inp = upload_bf16(inp), d_w = upload_bf16(w), d_dout = upload_bf16(dout);

    std::vector<float> ref(size_t(s.N * s.OC));
    ops::matmul_forward<float>(host(), Tensor<float>(ref.data(), {s.N, s.OC}), Tensor<const float>(inp.data(), {s.N, s.C}),
                               Tensor<const float>(w.data(), {s.OC, s.C}));
    auto out16 = poisoned<bf16>(ref.size());
    auto out32 = poisoned<float>(ref.size());
    ops::matmul_forward<bf16>(ctx(), out16.view({s.N, s.OC}), d_inp.view({s.N, s.C}), d_w.view({s.OC, s.C}));
    ops::matmul_forward<float>(ctx(), out32.view({s.N, s.OC}), d_inp.view({s.N, s.C}), d_w.view({s.OC, s.C}));
    CHECK_REL(download(out16), ref, kBf16);
    CHECK_REL(download(out32), ref, kF32);

    // Backward accumulates into both gradients (dinp in bf16, dweight in fp32).
    std::vector<float> rdinp = dinp0, rdw = dw0;
    ops::matmul_backward<float>(host(), Tensor<float>(rdinp.data(), {s.N, s.C}), Tensor<float>(rdw.data(), {s.OC, s.C}),
                                Tensor<const float>(dout.data(), {s.N, s.OC}), Tensor<const float>(inp.data(), {s.N, s.C}),
                                Tensor<const float>(w.data(), {s.OC, s.C}));
    auto d_dinp = upload_bf16(dinp0);
    auto d_dw = upload(dw0);
    ops::matmul_backward(ctx(), d_dinp.view({s.N, s.C}), d_dw.view({s.OC, s.C}), d_dout.view({s.N, s.OC}),
                         d_inp.view({s.N, s.C}), d_w.view({s.OC, s.C}));
    CHECK_REL(download(d_dinp), rdinp, kBf16);
    CHECK_REL(download(d_dw), rdw, kF32);

    // accumulate = false writes dinp; an empty dinp only does dweight.
    std::vector<float> rdinp2(size_t(s.N * s.C), 0.0f), rdw2 = dw0;
    ops::matmul_backward<float>(host(), Tensor<float>(rdinp2.data(), {s.N, s.C}), Tensor<float>(rdw2.data(), {s.OC, s.C}),
                                Tensor<const float>(dout.data(), {s.N, s.OC}), Tensor<const float>(inp.data(), {s.N, s.C}),
                                Tensor<const float>(w.data(), {s.OC, s.C}));
    auto d_dinp2 = poisoned<bf16>(size_t(s.N * s.C));
    auto d_dw2 = upload(dw0);
    ops::matmul_backward(ctx(), d_dinp2.view({s.N, s.C}), d_dw2.view({s.OC, s.C}), d_dout.view({s.N, s.OC}),
                         d_inp.view({s.N, s.C}), d_w.view({s.OC, s.C}), /*accumulate=*/false);
    CHECK_REL(download(d_dinp2), rdinp2, kBf16);
    CHECK_REL(download(d_dw2), rdw2, kF32);
  }
  CHECK(ctx().plans.size() > 0);
}

TEST_CASE("cuda matmul with autotuning: the fastest candidate, and the timing runs leave C alone") {
  // A context of its own, so that every shape is planned (and timed) here. The backward
  // accumulates (beta = 1) into dinp and dweight: a timing run that wrote C would show.
  CudaContext tuned(0);
  tuned.autotune = true;
  for (auto [N, C, OC] : {std::tuple<int64_t, int64_t, int64_t>{4096, 768, 768}, {257, 96, 200}}) {
    std::printf("matmul autotuned N=%ld C=%ld OC=%ld\n", long(N), long(C), long(OC));
    auto inp = randn(size_t(N * C)), w = randn(size_t(OC * C), 0.05f), dout = randn(size_t(N * OC));
    auto dinp0 = randn(size_t(N * C)), dw0 = randn(size_t(OC * C));
    std::vector<float> ref(size_t(N * OC)), rdinp = dinp0, rdw = dw0;
    ops::matmul_forward<float>(host(), Tensor<float>(ref.data(), {N, OC}), Tensor<const float>(inp.data(), {N, C}),
                               Tensor<const float>(w.data(), {OC, C}));
    ops::matmul_backward<float>(host(), Tensor<float>(rdinp.data(), {N, C}), Tensor<float>(rdw.data(), {OC, C}),
                                Tensor<const float>(dout.data(), {N, OC}), Tensor<const float>(inp.data(), {N, C}),
                                Tensor<const float>(w.data(), {OC, C}));
    auto d_inp = upload_bf16(inp), d_w = upload_bf16(w), d_dout = upload_bf16(dout);
    auto d_dinp = upload_bf16(dinp0);
    auto d_dw = upload(dw0);
    auto out = poisoned<bf16>(ref.size());
    const size_t before = tuned.plans.size();
    ops::matmul_forward<bf16>(tuned, out.view({N, OC}), d_inp.view({N, C}), d_w.view({OC, C}));
    ops::matmul_backward(tuned, d_dinp.view({N, C}), d_dw.view({OC, C}), d_dout.view({N, OC}), d_inp.view({N, C}),
                         d_w.view({OC, C}));
    tuned.synchronize();
    CHECK(tuned.plans.size() == before + 3);
    CHECK_REL(download(out), ref, kBf16);
    CHECK_REL(download(d_dinp), rdinp, kBf16);
    CHECK_REL(download(d_dw), rdw, kF32);
  }
}

// gemm_add: out = inp · wᵀ + addend, the residual add of the output projections, with the
// addend read as cuBLASLt's C and the sum written to a different array (and in place).
TEST_CASE("cuda gemm_add writes the product plus the addend elsewhere and leaves the addend alone") {
  for (const bool tune : {false, true}) {
    CudaContext c(0);
    c.autotune = tune;
    const int64_t N = 300, C = 96, OC = 200;
    std::printf("gemm_add N=%ld C=%ld OC=%ld autotune %d\n", long(N), long(C), long(OC), int(tune));
    auto inp = randn(size_t(N * C)), w = randn(size_t(OC * C), 0.05f), add = randn(size_t(N * OC));
    // The reference adds the bf16-rounded addend, which is what the GPU reads.
    auto add16 = to_float(upload_bf16(add).to_host());
    std::vector<float> ref(size_t(N * OC));
    ops::matmul_forward<float>(host(), Tensor<float>(ref.data(), {N, OC}), Tensor<const float>(inp.data(), {N, C}),
                               Tensor<const float>(w.data(), {OC, C}));
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += add16[i];
    auto d_inp = upload_bf16(inp), d_w = upload_bf16(w), d_add = upload_bf16(add);
    auto out = poisoned<bf16>(ref.size());
    ops::gemm_add<bf16>(c, false, true, N, OC, C, 1.0f, d_inp.data(), C, d_w.data(), C, d_add.data(), out.data(), OC);
    c.synchronize();
    CHECK_REL(download(out), ref, kBf16);
    CHECK(download(d_add) == add16);  // the addend is only read
    ops::gemm_add<bf16>(c, false, true, N, OC, C, 1.0f, d_inp.data(), C, d_w.data(), C, d_add.data(), d_add.data(), OC);
    c.synchronize();
    CHECK_REL(download(d_add), ref, kBf16);
  }
}

TEST_CASE("cuda matmul with leading dimensions that are not multiples of 8") {
  const int64_t N = 33, C = 50, OC = 30;
  auto inp = randn(size_t(N * C)), w = randn(size_t(OC * C), 0.1f);
  std::vector<float> ref(size_t(N * OC));
  ops::matmul_forward<float>(host(), Tensor<float>(ref.data(), {N, OC}), Tensor<const float>(inp.data(), {N, C}),
                             Tensor<const float>(w.data(), {OC, C}));
  auto d_inp = upload_bf16(inp), d_w = upload_bf16(w);
  auto out = poisoned<bf16>(ref.size());
  ops::matmul_forward<bf16>(ctx(), out.view({N, OC}), d_inp.view({N, C}), d_w.view({OC, C}));
  CHECK_REL(download(out), ref, kBf16);
}

TEST_CASE("cuda cast bf16 <-> fp32 is exact round-to-nearest-even") {
  const size_t n = 100003;
  std::vector<float> f(n);
  const uint64_t s = next_stream();
  for (size_t i = 0; i < n; ++i) f[i] = 10.0f * Philox::normal(1, s, i);  // not bf16-rounded
  auto d_f = upload(f);
  auto d_b = poisoned<bf16>(n);
  ops::cast_to_bf16(ctx(), d_b.view({int64_t(n)}), d_f.view({int64_t(n)}));
  ctx().synchronize();
  auto hb = d_b.to_host();
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += hb[i].bits != bf16::from_float(f[i]).bits;
  CHECK(bad == 0);
  auto d_back = poisoned<float>(n);
  ops::cast_to_float(ctx(), d_back.view({int64_t(n)}), d_b.view({int64_t(n)}));
  auto back = download(d_back);
  bad = 0;
  for (size_t i = 0; i < n; ++i) bad += back[i] != hb[i].to_float();
  CHECK(bad == 0);
}

TEST_CASE("cuda embedding forward and backward match the CPU op") {
  for (auto [N, V, C] : {std::tuple<int64_t, int64_t, int64_t>{1000, 300, 96}, {77, 256, 768}}) {
    std::printf("embedding N=%ld V=%ld C=%ld\n", long(N), long(V), long(C));
    auto table = randn(size_t(V * C)), dout = randn(size_t(N * C)), dt0 = randn(size_t(V * C));
    auto tok = rand_ids(size_t(N), int32_t(V));
    std::vector<float> ref(size_t(N * C)), rdt = dt0;
    ops::embedding_forward<float>(host(), Tensor<float>(ref.data(), {N, C}), Tensor<const int32_t>(tok.data(), {N}),
                                  Tensor<const float>(table.data(), {V, C}));
    ops::embedding_backward<float>(host(), Tensor<float>(rdt.data(), {V, C}), Tensor<const int32_t>(tok.data(), {N}),
                                   Tensor<const float>(dout.data(), {N, C}));
    auto d_table = upload_bf16(table), d_dout = upload_bf16(dout);
    auto d_tok = upload(tok);
    auto d_dt = upload(dt0);
    auto out = poisoned<bf16>(size_t(N * C));
    ops::embedding_forward(ctx(), out.view({N, C}), d_tok.view({N}), d_table.view({V, C}));
    ops::embedding_backward(ctx(), d_dt.view({V, C}), d_tok.view({N}), d_dout.view({N, C}));
    CHECK(rel_err(download(out), ref) == 0.0);  // a gather is exact
    CHECK_REL(download(d_dt), rdt, kF32);
  }
}

TEST_CASE("cuda rmsnorm forward and backward match the CPU op") {
  // 16-byte rows up to 2048 columns take the register-row forward and the fused backward
  // with K = ceil(C / 256) packs a lane: every K from 1 to 8 (64, 512, 768, 1000, 1280,
  // 1536, 1544, 2048), rows that end partway through a lane's packs (520, 1000, 1544), a
  // partial last block (333 rows), more than 48 KiB of shared memory (K >= 7), and more
  // partial rows than the dweight reduce's threads (9000 rows: 282). 100 takes the scalar
  // kernels, 2056 the 16-byte unfused ones.
  for (auto [N, C] : {std::pair<int64_t, int64_t>{333, 768}, {64, 100}, {5, 2048}, {70, 2056}, {40, 64}, {40, 512},
                      {41, 520}, {37, 1000}, {33, 1280}, {35, 1536}, {31, 1544}, {9000, 768}}) {
    std::printf("rmsnorm N=%ld C=%ld\n", long(N), long(C));
    auto x = randn(size_t(N * C), 2.0f), w = randn(size_t(C)), dout = randn(size_t(N * C));
    auto dinp0 = randn(size_t(N * C)), dw0 = randn(size_t(C));
    for (auto& v : w) v = round_bf16(1.0f + 0.1f * v);
    const float eps = 1e-5f;
    std::vector<float> ref(size_t(N * C)), rstd(static_cast<size_t>(N)), rdinp = dinp0, rdw = dw0;
    ops::rmsnorm_forward<float>(host(), Tensor<float>(ref.data(), {N, C}), Tensor<float>(rstd.data(), {N}),
                                Tensor<const float>(x.data(), {N, C}), Tensor<const float>(w.data(), {C}), eps);
    ops::rmsnorm_backward<float>(host(), Tensor<float>(rdinp.data(), {N, C}), Tensor<float>(rdw.data(), {C}),
                                 Tensor<const float>(dout.data(), {N, C}), Tensor<const float>(x.data(), {N, C}),
                                 Tensor<const float>(w.data(), {C}), Tensor<const float>(rstd.data(), {N}));
    auto d_x = upload_bf16(x), d_w = upload_bf16(w), d_dout = upload_bf16(dout), d_dinp = upload_bf16(dinp0);
    auto d_dw = upload(dw0);
    auto out = poisoned<bf16>(size_t(N * C));
    auto d_rstd = poisoned<float>(size_t(N));
    ops::rmsnorm_forward(ctx(), out.view({N, C}), d_rstd.view({N}), d_x.view({N, C}), d_w.view({C}), eps);
    ops::rmsnorm_backward(ctx(), d_dinp.view({N, C}), d_dw.view({C}), d_dout.view({N, C}), d_x.view({N, C}),
                          d_w.view({C}), d_rstd.view({N}));
    CHECK_REL(download(out), ref, kBf16);
    CHECK_REL(download(d_rstd), rstd, kF32);
    CHECK_REL(download(d_dinp), rdinp, kBf16);
    CHECK_REL(download(d_dw), rdw, 1e-4);
  }
}

TEST_CASE("cuda rope forward and backward match the CPU op") {
  // hd 64 takes the 16-byte kernel, hd 8 the scalar one.
  for (const int64_t hd : {int64_t(64), int64_t(8)}) {
  std::printf("rope hd=%ld\n", long(hd));
  const int64_t B = 2, T = 77, H = 3;
  ops::RopeTable<float> table(128, hd);
  ops::CudaRopeTable dtable(table);
  auto x = randn(size_t(B * T * H * hd));
  std::vector<float> ref = x, back(x.size());
  ops::rope_forward<float>(host(), Tensor<float>(ref.data(), {B, T, H, hd}), table);
  auto d_x = upload_bf16(x);
  ops::rope_forward(ctx(), d_x.view({B, T, H, hd}), dtable);
  CHECK_REL(download(d_x), ref, kBf16);
  std::vector<float> rback = ref;
  ops::rope_backward<float>(host(), Tensor<float>(rback.data(), {B, T, H, hd}), table);
  auto d_g = upload_bf16(ref);
  ops::rope_backward(ctx(), d_g.view({B, T, H, hd}), dtable);
  CHECK_REL(download(d_g), rback, kBf16);
  }
}

TEST_CASE("cuda swiglu forward and backward match the CPU op") {
  // 100×333 takes the scalar kernels, 64×512 the 16-byte ones.
  for (auto [N, F] : {std::pair<int64_t, int64_t>{100, 333}, {64, 512}}) {
  std::printf("swiglu N=%ld F=%ld\n", long(N), long(F));
  auto g = randn(size_t(N * F), 2.0f), u = randn(size_t(N * F)), dout = randn(size_t(N * F));
  std::vector<float> ref(size_t(N * F)), rdg(size_t(N * F), 0.0f), rdu(size_t(N * F), 0.0f);
  ops::swiglu_forward<float>(host(), Tensor<float>(ref.data(), {N, F}), Tensor<const float>(g.data(), {N, F}),
                             Tensor<const float>(u.data(), {N, F}));
  ops::swiglu_backward<float>(host(), Tensor<float>(rdg.data(), {N, F}), Tensor<float>(rdu.data(), {N, F}),
                              Tensor<const float>(dout.data(), {N, F}), Tensor<const float>(g.data(), {N, F}),
                              Tensor<const float>(u.data(), {N, F}));
  auto d_g = upload_bf16(g), d_u = upload_bf16(u), d_dout = upload_bf16(dout);
  auto out = poisoned<bf16>(size_t(N * F)), dg = poisoned<bf16>(size_t(N * F)), du = poisoned<bf16>(size_t(N * F));
  ops::swiglu_forward(ctx(), out.view({N, F}), d_g.view({N, F}), d_u.view({N, F}));
  ops::swiglu_backward(ctx(), dg.view({N, F}), du.view({N, F}), d_dout.view({N, F}), d_g.view({N, F}), d_u.view({N, F}));
  CHECK_REL(download(out), ref, kBf16);
  CHECK_REL(download(dg), rdg, kBf16);
  CHECK_REL(download(du), rdu, kBf16);
  // grad_ld = 2F: dgate and dup as the column blocks of one [N, 2F] matrix (the model's).
  auto both = poisoned<bf16>(size_t(2 * N * F));
  ops::swiglu_backward(ctx(), CudaTensor<bf16>(both.data(), {N, F}), CudaTensor<bf16>(both.data() + F, {N, F}),
                       d_dout.view({N, F}), d_g.view({N, F}), d_u.view({N, F}), 2 * F);
  const auto all = download(both);
  std::vector<float> sdg(size_t(N * F)), sdu(size_t(N * F));
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < F; ++c) {
      sdg[size_t(r * F + c)] = all[size_t(r * 2 * F + c)];
      sdu[size_t(r * F + c)] = all[size_t(r * 2 * F + F + c)];
    }
  CHECK_REL(sdg, rdg, kBf16);
  CHECK_REL(sdu, rdu, kBf16);
  }
}

TEST_CASE("cuda cross entropy matches the CPU op") {
  for (auto [N, V] : {std::pair<int64_t, int64_t>{77, 256}, {13, 50257}, {300, 1000}}) {
    std::printf("cross entropy N=%ld V=%ld\n", long(N), long(V));
    auto logits = randn(size_t(N * V), 3.0f);
    auto tgt = rand_ids(size_t(N), int32_t(V));
    std::vector<float> rl(static_cast<size_t>(N)), rdl(size_t(N * V), 0.0f);
    const float scale = 1.0f / float(N);
    const float rmean = ops::cross_entropy_forward<float>(host(), Tensor<float>(rl.data(), {N}),
                                                          Tensor<const float>(logits.data(), {N, V}),
                                                          Tensor<const int32_t>(tgt.data(), {N}));
    ops::cross_entropy_backward<float>(host(), Tensor<float>(rdl.data(), {N, V}), Tensor<const float>(logits.data(), {N, V}),
                                       Tensor<const int32_t>(tgt.data(), {N}), scale);
    auto d_l = upload_bf16(logits);
    auto d_t = upload(tgt);
    auto losses = poisoned<float>(size_t(N));
    auto dl = poisoned<bf16>(size_t(N * V));
    ops::cross_entropy_forward(ctx(), losses.view({N}), d_l.view({N, V}), d_t.view({N}));
    const double mean = ops::cross_entropy_mean(ctx(), losses.view({N}));
    ops::cross_entropy_backward(ctx(), dl.view({N, V}), d_l.view({N, V}), d_t.view({N}), scale);
    CHECK_REL(download(losses), rl, kF32);
    CHECK(std::abs(mean - double(rmean)) < 1e-5 * std::abs(double(rmean)));
    CHECK_REL(download(dl), rdl, kBf16);
  }
}

// The global-norm clip's sum (several arrays, one read-back) and Muon's per-matrix sums
// (left on the device), against a double sum on the host; both deterministic.
TEST_CASE("cuda sum_squares and sum_squares_each_on_device match a host sum") {
  const std::vector<int64_t> sizes{1, 1000, 300001};
  std::vector<std::vector<float>> h;
  std::vector<DeviceBuffer<float>> d;
  std::vector<CudaTensor<const float>> views;
  double want = 0;
  for (int64_t n : sizes) {
    h.push_back(randn(size_t(n), 3.0f));
    d.push_back(upload(h.back()));
    views.push_back(CudaTensor<const float>(d.back().data(), {n}));
    for (float v : h.back()) want += double(v) * double(v);
  }
  const double got = ops::sum_squares(ctx(), views);
  std::printf("  sum_squares of 3 arrays: %.10g (host %.10g)\n", got, want);
  CHECK(std::abs(got - want) <= 1e-12 * want);
  CHECK(ops::sum_squares(ctx(), views) == got);  // the same sum again, bit for bit

  // 3 arrays of 70001 floats, 70011 apart (the gaps hold poison that must not be read)
  const int64_t n = 70001, stride = 70011, count = 3;
  std::vector<float> x(size_t(stride * count), NAN);
  std::vector<double> each(count, 0.0);
  const auto r = randn(size_t(n * count));
  for (int64_t m = 0; m < count; ++m)
    for (int64_t i = 0; i < n; ++i) {
      x[size_t(m * stride + i)] = r[size_t(m * n + i)] * float(m + 1);
      each[size_t(m)] += double(x[size_t(m * stride + i)]) * double(x[size_t(m * stride + i)]);
    }
  const auto dx = upload(x);
  auto partials = poisoned<double>(ops::sum_squares_partials(count));
  const double* sums = ops::sum_squares_each_on_device(ctx(), dx.data(), n, stride, int(count), partials.data());
  ctx().synchronize();
  std::vector<double> got_each(count);
  RESBM_CUDA_CHECK(cudaMemcpy(got_each.data(), sums, size_t(count) * sizeof(double), cudaMemcpyDeviceToHost));
  for (int64_t m = 0; m < count; ++m) {
    std::printf("  sum_squares_each_on_device array %lld: %.10g (host %.10g)\n", (long long)m, got_each[size_t(m)],
                each[size_t(m)]);
    CHECK(std::abs(got_each[size_t(m)] - each[size_t(m)]) <= 1e-12 * each[size_t(m)]);
  }
}

TEST_CASE("cuda adamw matches the CPU optimizer step for step") {
  const int64_t n = 10007;
  ParamArena<float> arena;
  arena.add("w", {n}, ParamKind::matrix);
  arena.allocate();
  auto p0 = randn(size_t(n));
  std::copy(p0.begin(), p0.end(), arena.params());
  optim::AdamWConfig cfg;
  cfg.lr = 1e-2f;
  optim::AdamW cpu_opt(arena, cfg);
  auto d_p = upload(p0);
  DeviceBuffer<float> d_m(static_cast<size_t>(n)), d_v(static_cast<size_t>(n));
  d_m.zero();
  d_v.zero();
  auto d_p16 = poisoned<bf16>(size_t(n));
  for (int64_t t = 1; t <= 3; ++t) {
    auto g = randn(size_t(n), 0.1f);
    std::copy(g.begin(), g.end(), arena.grads());
    cpu_opt.step(host(), arena, 1.0f);
    auto d_g = upload(g);
    ops::CudaAdamWStep s;
    s.lr = cfg.lr;
    s.beta1 = cfg.beta1;
    s.beta2 = cfg.beta2;
    s.eps = cfg.eps;
    s.weight_decay = cfg.weight_decay;
    s.t = t;
    ops::adamw_update(ctx(), d_p.view({n}), d_p16.view({n}), d_g.view({n}), d_m.view({n}), d_v.view({n}), s);
  }
  auto p = download(d_p);
  std::vector<float> ref(arena.params(), arena.params() + n);
  CHECK_REL(p, ref, 1e-6);
  auto p16 = d_p16.to_host();
  size_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += p16[size_t(i)].bits != bf16::from_float(p[size_t(i)]).bits;
  CHECK(bad == 0);
}

// Three implementations behind one API: tensor cores with the single-pass backward (fp32
// atomics for dq, the default), tensor cores with the deterministic two-kernel backward,
// and the CUDA-core kernels. Each against the CPU op, with outputs, the cache and (for the
// single pass) the dq scratch poisoned first.
TEST_CASE("cuda flash attention forward and backward match the CPU op") {
  struct S {
    int64_t B, T, H, hd;
  };
  struct Mode {
    bool tc, det, wgmma;
    const char* name;
  };
  for (S s : {S{2, 64, 2, 64}, S{1, 200, 3, 64}, S{2, 77, 2, 32}, S{1, 130, 2, 128}, S{1, 1, 1, 64}, S{1, 1, 2, 32},
              S{1, 1, 2, 128}, S{1, 1024, 2, 64}, S{2, 333, 2, 128}, S{1, 17, 3, 32}, S{1, 1000, 2, 128}}) {
    const size_t n = size_t(s.B * s.T * s.H * s.hd);
    const AttentionReference r = attention_reference(s.B, s.T, s.H, s.hd);
    const std::vector<float>&q = r.q, &k = r.k, &v = r.v, &dout = r.dout, &ref = r.out, &rdq = r.dq, &rdk = r.dk,
                             &rdv = r.dv;
    auto T4 = [&](std::vector<float>& x) { return Tensor<float>(x.data(), {s.B, s.T, s.H, s.hd}); };
    auto rlse = reference_lse(q, k, s.B, s.T, s.H, s.hd);
    ops::RopeTable<float> rope(s.T + 3, s.hd);
    ops::CudaRopeTable drope(rope);
    std::vector<float> rope_dq = rdq, rope_dk = rdk;
    ops::rope_backward<float>(host(), T4(rope_dq), rope);
    ops::rope_backward<float>(host(), T4(rope_dk), rope);
    auto d_q = upload_bf16(q), d_k = upload_bf16(k), d_v = upload_bf16(v), d_dout = upload_bf16(dout);
    auto V4 = [&](DeviceBuffer<bf16>& x) { return x.view({s.B, s.T, s.H, s.hd}); };

    // hd 32 has no wgmma kernel: its "wgmma" mode runs the mma.sync single pass again.
    for (Mode m : {Mode{true, false, true, "tensor cores, single pass, wgmma"},
                   Mode{true, false, false, "tensor cores, single pass, mma.sync"},
                   Mode{true, true, false, "tensor cores, deterministic"}, Mode{false, true, false, "cuda cores"}}) {
      ops::cuda_attention_tensor_cores = m.tc;
      ops::cuda_attention_deterministic = m.det;
      ops::cuda_attention_wgmma = m.wgmma;
      std::printf("attention (%s) B=%ld T=%ld H=%ld hd=%ld\n", m.name, long(s.B), long(s.T), long(s.H), long(s.hd));
      auto d_out = poisoned<bf16>(n), d_dq = poisoned<bf16>(n), d_dk = poisoned<bf16>(n), d_dv = poisoned<bf16>(n);
      auto d_cache = poisoned<float>(size_t(ops::cuda_attention_cache_size(s.B, s.T, s.H)));
      auto cache_view = d_cache.view({int64_t(d_cache.size())});
      ops::attention_forward(ctx(), V4(d_out), cache_view, V4(d_q), V4(d_k), V4(d_v));
      auto out = download(d_out);
      auto lse_all = download(d_cache);
      std::vector<float> lse(lse_all.begin(), lse_all.begin() + int64_t(rlse.size()));
      CHECK_REL(out, ref, kBf16);
      CHECK_REL(lse, rlse, kF32);
      // The single pass must zero its fp32 dq accumulator (ctx scratch) itself.
      RESBM_CUDA_CHECK(cudaMemsetAsync(ctx().scratch(n * sizeof(float)), 0xff, n * sizeof(float), ctx().stream));
      ops::attention_backward(ctx(), V4(d_dq), V4(d_dk), V4(d_dv), V4(d_dout), cache_view, V4(d_q), V4(d_k), V4(d_v),
                              V4(d_out));
      CHECK_REL(download(d_dq), rdq, 2 * kBf16);
      CHECK_REL(download(d_dk), rdk, 2 * kBf16);
      CHECK_REL(download(d_dv), rdv, kBf16);
      // With the RoPE table, dq and dk come out rotated back, as rope_backward leaves them;
      // with grad_ld = 3C, as the column blocks of one [B·T, 3C] matrix (the model's layout).
      const int64_t C = s.H * s.hd;
      auto g3 = poisoned<bf16>(3 * n);
      auto G4 = [&](int part) { return CudaTensor<bf16>(g3.data() + part * C, {s.B, s.T, s.H, s.hd}); };
      ops::attention_backward(ctx(), G4(0), G4(1), G4(2), V4(d_dout), cache_view, V4(d_q), V4(d_k), V4(d_v),
                              V4(d_out), &drope, 3 * C);
      const auto all = download(g3);
      const size_t rows = n / size_t(C);
      const auto r_dq = gradient(all, rows, size_t(C), 3 * size_t(C), size_t(C), 0);
      const auto r_dk = gradient(all, rows, size_t(C), 3 * size_t(C), size_t(C), 1);
      const auto r_dv = gradient(all, rows, size_t(C), 3 * size_t(C), size_t(C), 2);
      CHECK_REL(r_dq, rope_dq, 2 * kBf16);
      CHECK_REL(r_dk, rope_dk, 2 * kBf16);
      CHECK_REL(r_dv, rdv, kBf16);
    }
  }
  ops::cuda_attention_tensor_cores = true;
  ops::cuda_attention_deterministic = false;
  ops::cuda_attention_wgmma = true;
}

// The deterministic backward gives the same bits on every run; the single pass differs from
// it only by the order of dq's fp32 additions (and so, after rounding to bf16, by at most a
// few ulps in a few elements), and computes dk and dv with the same per-key-tile code.
TEST_CASE("cuda attention backward: deterministic path repeats bitwise, single pass agrees with it") {
  const int64_t B = 2, T = 300, H = 2, hd = 64;
  const size_t n = size_t(B * T * H * hd);
  auto d_q = upload_bf16(randn(n)), d_k = upload_bf16(randn(n)), d_v = upload_bf16(randn(n));
  auto d_dout = upload_bf16(randn(n));
  auto V4 = [&](DeviceBuffer<bf16>& x) { return x.view({B, T, H, hd}); };
  DeviceBuffer<bf16> d_out(n);
  DeviceBuffer<float> d_cache(size_t(ops::cuda_attention_cache_size(B, T, H)));
  auto cache_view = d_cache.view({int64_t(d_cache.size())});
  ops::attention_forward(ctx(), V4(d_out), cache_view, V4(d_q), V4(d_k), V4(d_v));
  std::vector<bf16> g[3][3];  // run (deterministic, deterministic, single pass) × (dq, dk, dv)
  for (int run = 0; run < 3; ++run) {
    ops::cuda_attention_deterministic = run < 2;
    auto d_dq = poisoned<bf16>(n), d_dk = poisoned<bf16>(n), d_dv = poisoned<bf16>(n);
    ops::attention_backward(ctx(), V4(d_dq), V4(d_dk), V4(d_dv), V4(d_dout), cache_view, V4(d_q), V4(d_k), V4(d_v),
                            V4(d_out));
    ctx().synchronize();
    g[run][0] = d_dq.to_host();
    g[run][1] = d_dk.to_host();
    g[run][2] = d_dv.to_host();
  }
  ops::cuda_attention_deterministic = false;
  for (int i = 0; i < 3; ++i) {
    size_t diff = 0;
    for (size_t e = 0; e < n; ++e) diff += g[0][i][e].bits != g[1][i][e].bits;
    CHECK(diff == 0);
  }
  for (int i = 0; i < 3; ++i) {
    const double e = rel_err(to_float(g[2][i]), to_float(g[0][i]), kNoise);
    std::printf("  single pass vs deterministic, %s: rel err %.3e\n", i == 0 ? "dq" : i == 1 ? "dk" : "dv", e);
    CHECK(e < 5e-3);
  }
}

TEST_CASE("cuda ops reject wrong shapes with an Error") {
  DeviceBuffer<bf16> a(64), b(64);
  CHECK_THROWS_AS(ops::swiglu_forward(ctx(), a.view({8, 8}), a.view({8, 8}), b.view({4, 16})), Error);
  DeviceBuffer<float> c(64);
  CHECK_THROWS_AS(ops::attention_forward(ctx(), a.view({1, 1, 1, 48}), c.view({2}), a.view({1, 1, 1, 48}),
                                         a.view({1, 1, 1, 48}), a.view({1, 1, 1, 48})),
                  Error);
  // A RoPE table of another head dimension, or too few positions, is refused by name.
  DeviceBuffer<bf16> x(4 * 32);
  auto v = x.view({1, 4, 1, 32});
  DeviceBuffer<float> cache(size_t(ops::cuda_attention_cache_size(1, 4, 1)));
  for (const auto& [positions, hd] : {std::pair<int64_t, int64_t>{8, 64}, {3, 32}}) {
    ops::CudaRopeTable table(positions, hd);
    const std::string e = error_of([&] {
      ops::attention_backward(ctx(), v, v, v, v, cache.view({int64_t(cache.size())}), v, v, v, v, &table);
    });
    CHECK(e.find("RoPE table") != std::string::npos);
  }
}
