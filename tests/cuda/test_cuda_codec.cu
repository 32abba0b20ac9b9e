// The boundary codec on the GPU (codec/cuda/residual_bottleneck.cuh, ops/cuda/silu.cuh)
// against the CPU codec (codec/residual_bottleneck.hpp) and the CPU SiLU, on fresh Philox
// inputs. Both sides get the same parameters (random, bf16-rounded, so the GPU's bf16 copy
// is exact) and the same bf16-rounded inputs; the decoder and the encoder's backward read
// the CPU's wire bytes, so each half is compared on identical input.
//
// What must match, and how:
// - the encoder's wire is exactly FwdWire::encode of the GPU's own fp32 z (bytes); that z is
//   within bf16 error of the CPU's z (the MLP's hidden activations are bf16 on the GPU);
//   the two wires, decoded, agree to that error plus the rounding flips it causes;
// - decoder output, code gradient (decoded gradient wires), dh and every parameter
//   gradient: ‖gpu − cpu‖ / ‖cpu‖ within bf16 bounds. Paths: the decoder's one-GEMM output
//   [act | onehot(ids) | y] · [fc2 | Eᵀ | I]ᵀ (vocabularies 256, 32, 64) and its gather +
//   atomics fallback (65: not a multiple of 8, 2048: above 1024); the variants' own row
//   layouts (NoIdentity + TokenReembed: one-hot and the bad-id column only; Truncate +
//   NoSideInfo: [act | y]; NoIdentity + NoSideInfo: a plain GEMM); the fused encoder with
//   the SiLU in its loads (Int8Grouped<16>, Int8PerToken) and the separate SiLU pass
//   (Int8Grouped<64> at r = 2, whose groups 16 tokens do not hold);
// - the decoder's gradient wire is exactly BwdWire::encode of the GPU's own fp32 dy;
// - a non-finite h gives the CPU encoder's exact Error.
// Written outputs are poisoned first (NaN, wire bytes 0x80 plus a guard that must stay
// 0x80); parameter gradients accumulate from zero on both. The compared weights are written
// as CudaAdamW writes them (through params() and params_bf16(), no refresh) after a forward
// with other weights, so operands derived from stale weights would fail every comparison.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "resbm/codec/cuda/residual_bottleneck.cuh"
#include "resbm/codec/presets.hpp"
#include "resbm/core/rng.hpp"
#include "cuda/support.cuh"

using namespace resbm;
using namespace resbm::test;

namespace {

// A floor on a reference's mean square: an all-zero reference bounds the output's RMS by
// 1e-6 · bound instead of dividing by 0.
constexpr double kZeroMs = 1e-12;

#define CHECK_REL_NAMED(name, a, b, bound)                                  \
  do {                                                                \
    const double e_ = rel_err(a, b, kZeroMs);                         \
    std::printf("  %-28s rel err %.3g (bound %.0e)\n", name, e_, bound); \
    INFO(name << " rel err " << e_);                                  \
    CHECK(e_ <= (bound));                                             \
  } while (0)

// Random parameters, bf16-rounded: gains 1 ± 0.2, matrices normal / sqrt(fan_in) (the
// codec's own init std; nonzero everywhere, unlike the init, so every path is exercised),
// the re-embedding 0.5 · normal.
void fill_params(ParamArena<float>& a) {
  for (const ParamInfo& p : a.infos()) {
    std::vector<float> v;
    if (p.kind == ParamKind::gain)
      v = randn(p.numel, 0.2f, 1.0f);
    else if (p.kind == ParamKind::embedding)
      v = randn(p.numel, 0.5f);
    else
      v = randn(p.numel, float(1.0 / std::sqrt(double(p.shape[1]))));
    std::copy(v.begin(), v.end(), a.params() + p.offset);
  }
}

std::vector<float> entry(const std::vector<float>& flat, const ParamInfo& p) {
  return std::vector<float>(flat.begin() + long(p.offset), flat.begin() + long(p.offset + p.numel));
}
std::vector<float> entry(const float* flat, const ParamInfo& p) {
  return std::vector<float>(flat + p.offset, flat + p.offset + p.numel);
}

// The weights written as CudaAdamW writes them: the fp32 masters through params(), their
// bf16 copy through params_bf16(), on the half's stream, without refresh_bf16().
template <class Half>
void write_like_optimizer(Half& half, const ParamArena<float>& a) {
  REQUIRE(half.size() == a.size());
  const std::vector<float> w(a.params(), a.params() + a.size());
  const auto w16 = to_bf16(w);
  RESBM_CUDA_CHECK(
      cudaMemcpyAsync(half.params(), w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice, ctx().stream));
  RESBM_CUDA_CHECK(
      cudaMemcpyAsync(half.params_bf16(), w16.data(), w16.size() * sizeof(bf16), cudaMemcpyHostToDevice, ctx().stream));
  ctx().synchronize();
}

template <class Codec>
void check_codec(const char* name, int64_t N, int d, int vocab, bool one_gemm) {
  using Gpu = codec::CudaResidualBottleneck<Codec>;
  using FW = typename Codec::fwd_wire;
  using BW = typename Codec::bwd_wire;
  constexpr int R = Codec::r;
  std::printf("%s: N %lld, d %d, vocab %d\n", name, static_cast<long long>(N), d, vocab);
  const codec::Boundary b{1, d, vocab};

  ParamArena<float> enc_a, dec_a;
  typename Codec::template Encoder<float> enc(b, enc_a);
  typename Codec::template Decoder<float> dec(b, dec_a);
  enc_a.allocate();
  dec_a.allocate();
  typename Gpu::Encoder genc(ctx(), b);
  typename Gpu::Decoder gdec(ctx(), b);
  REQUIRE(genc.layout().size() == enc_a.size());
  REQUIRE(gdec.layout().size() == dec_a.size());
  for (size_t i = 0; i < enc_a.infos().size(); ++i) CHECK(genc.layout().info(i).name == enc_a.info(i).name);
  for (size_t i = 0; i < dec_a.infos().size(); ++i) CHECK(gdec.layout().info(i).name == dec_a.info(i).name);

  // init(seed) uploads the CPU half's init, bit for bit.
  enc.init(7);
  dec.init(7);
  genc.init(7);
  gdec.init(7);
  ctx().synchronize();
  CHECK(genc.download_params() == std::vector<float>(enc_a.params(), enc_a.params() + enc_a.size()));
  CHECK(gdec.download_params() == std::vector<float>(dec_a.params(), dec_a.params() + dec_a.size()));

  CHECK(gdec.one_gemm() == one_gemm);

  const auto h = randn(size_t(N) * size_t(d));
  const auto ids = rand_ids(size_t(N), vocab);
  auto h_dev = upload_bf16(h);
  auto ids_dev = upload(ids);

  // A forward with the init weights first: it builds the derived operands (fc1 ⊙ gain, the
  // decoder's output weight) that the writes below must make stale.
  {
    auto es0 = genc.make_activations(N);
    auto ds0 = gdec.make_activations(N);
    DeviceBuffer<std::byte> w0(genc.wire_bytes(N));
    DeviceBuffer<bf16> h0(size_t(N) * size_t(d));
    genc.forward(es0, CudaTensor<const bf16>(h_dev.data(), {N, d}), w0.view({int64_t(w0.size())}));
    gdec.forward(ds0, CudaTensor<const std::byte>(w0.data(), {int64_t(w0.size())}),
                 CudaTensor<const int32_t>(ids_dev.data(), {N}), h0.view({N, d}));
    genc.check(es0);
    gdec.check(ds0);
  }

  fill_params(enc_a);
  fill_params(dec_a);
  write_like_optimizer(genc, enc_a);
  write_like_optimizer(gdec, dec_a);

  // ---- encoder forward
  auto es = enc.make_activations(N);
  std::vector<std::byte> wire_cpu(enc.wire_bytes(N));
  enc.forward(host(), es, Tensor<const float>(h.data(), {N, d}), {}, wire_cpu);

  auto ges = genc.make_activations(N);
  for (auto* buf : {&ges.pre, &ges.act}) buf->fill_bytes(0xff);
  ges.rstd.fill_bytes(0xff);
  const size_t wbytes = genc.wire_bytes(N);
  REQUIRE(wbytes == wire_cpu.size());
  auto wire_dev = poisoned_wire(wbytes);
  auto z_dev = poisoned<float>(size_t(N) * R);
  genc.forward(ges, CudaTensor<const bf16>(h_dev.data(), {N, d}), wire_dev.view({int64_t(wbytes + kGuard)}),
               z_dev.view({N, R}));
  genc.check(ges);
  const auto wire_gpu = download_bytes(wire_dev);
  const auto z_gpu = download(z_dev);
  {
    std::vector<std::byte> want(wbytes);
    codec::wire_encode<FW>(z_gpu.data(), N, R, want);
    CHECK(first_diff(wire_gpu, want) == -1);  // the GPU's z, encoded by the CPU wire; guard intact
  }
  const std::vector<float> z_cpu(es.z.data(), es.z.data() + size_t(N) * R);
  CHECK_REL_NAMED("encoder z", z_gpu, z_cpu, 2e-2);
  {
    std::vector<float> dq_gpu(size_t(N) * R), dq_cpu(size_t(N) * R);
    codec::wire_decode<FW>(std::span<const std::byte>(wire_gpu.data(), wbytes), N, R, dq_gpu.data());
    codec::wire_decode<FW>(wire_cpu, N, R, dq_cpu.data());
    size_t same = 0;
    for (size_t i = 0; i < wbytes; ++i) same += wire_gpu[i] == wire_cpu[i];
    std::printf("  wire bytes equal to the CPU's: %zu of %zu\n", same, wbytes);
    CHECK_REL_NAMED("encoder wire (decoded)", dq_gpu, dq_cpu, 2e-2);
  }

  // ---- decoder forward, from the CPU's wire
  auto ds = dec.make_activations(N);
  std::vector<float> hout_cpu(size_t(N) * size_t(d));
  dec.forward(host(), ds, wire_cpu, ids, Tensor<float>(hout_cpu.data(), {N, d}));

  auto gds = gdec.make_activations(N);
  for (auto* buf : {&gds.y, &gds.pre, &gds.act}) buf->fill_bytes(0xff);
  auto wire_in = upload(wire_cpu);
  auto hout_dev = poisoned<bf16>(size_t(N) * size_t(d));
  gdec.forward(gds, CudaTensor<const std::byte>(wire_in.data(), {int64_t(wbytes)}),
               CudaTensor<const int32_t>(ids_dev.data(), {N}), hout_dev.view({N, d}));
  gdec.check(gds);
  {
    const auto y_gpu = download(gds.y, size_t(N) * R);
    const std::vector<float> y_cpu(ds.y.data(), ds.y.data() + size_t(N) * R);
    CHECK_REL_NAMED("decoder y (bf16)", y_gpu, y_cpu, 4e-3);
  }
  CHECK_REL_NAMED("decoder h'", download(hout_dev), hout_cpu, 1e-2);

  // ---- decoder backward
  const auto dhout = randn(size_t(N) * size_t(d));
  const size_t gbytes = gdec.grad_bytes(N);
  std::vector<std::byte> gwire_cpu(gbytes);
  dec.backward(host(), ds, Tensor<const float>(dhout.data(), {N, d}), gwire_cpu);

  auto dhout_dev = upload_bf16(dhout);
  auto gwire_dev = poisoned_wire(gbytes);
  gdec.backward(gds, CudaTensor<const bf16>(dhout_dev.data(), {N, d}), gwire_dev.view({int64_t(gbytes + kGuard)}));
  gdec.check(gds);
  const auto gwire_gpu = download_bytes(gwire_dev);
  {
    const auto dy_gpu = download(gdec.code_grad().data, size_t(N) * R);
    std::vector<std::byte> want(gbytes);
    codec::wire_encode<BW>(dy_gpu.data(), N, R, want);
    CHECK(first_diff(gwire_gpu, want) == -1);
    std::vector<float> dq_gpu(size_t(N) * R), dq_cpu(size_t(N) * R);
    codec::wire_decode<BW>(std::span<const std::byte>(gwire_gpu.data(), gbytes), N, R, dq_gpu.data());
    codec::wire_decode<BW>(gwire_cpu, N, R, dq_cpu.data());
    CHECK_REL_NAMED("decoder gradient wire (dec.)", dq_gpu, dq_cpu, 2e-2);
  }
  {
    const auto g = gdec.download_grads();
    for (const ParamInfo& p : dec_a.infos()) CHECK_REL_NAMED(p.name.c_str(), entry(g, p), entry(dec_a.grads(), p), 2e-2);
  }

  // ---- encoder backward, from the CPU's gradient wire; the GPU writes dh (the CPU adds
  // into zeros)
  std::vector<float> dh_cpu(size_t(N) * size_t(d), 0.0f);
  enc.backward(host(), es, gwire_cpu, Tensor<float>(dh_cpu.data(), {N, d}));
  auto dh_dev = poisoned<bf16>(size_t(N) * size_t(d));
  auto gwire_in = upload(gwire_cpu);
  genc.backward(ges, CudaTensor<const std::byte>(gwire_in.data(), {int64_t(gbytes)}), dh_dev.view({N, d}));
  genc.check(ges);
  {
    CHECK_REL_NAMED("encoder dh", download(dh_dev), dh_cpu, 2e-2);
    const auto g = genc.download_grads();
    for (const ParamInfo& p : enc_a.infos()) CHECK_REL_NAMED(p.name.c_str(), entry(g, p), entry(enc_a.grads(), p), 2e-2);
  }

  // ---- a non-finite input: the CPU encoder's Error, word for word
  {
    auto bad = h;
    bad[size_t(N / 2) * size_t(d) + 3] = NAN;
    const std::string cpu_msg =
        error_of([&] { enc.forward(host(), es, Tensor<const float>(bad.data(), {N, d}), {}, wire_cpu); });
    auto bad_dev = upload_bf16(bad);
    genc.forward(ges, CudaTensor<const bf16>(bad_dev.data(), {N, d}), wire_dev.view({int64_t(wbytes)}));
    const std::string gpu_msg = error_of([&] { genc.check(ges); });
    INFO("cpu: " << cpu_msg << " / gpu: " << gpu_msg);
    CHECK(cpu_msg != "<no error>");
    CHECK(gpu_msg == cpu_msg);
  }
}

}  // namespace

TEST_CASE("cuda silu forward and backward match the cpu op", "[cuda][codec]") {
  for (int64_t N : {int64_t(4099), int64_t(3)}) {
    for (int64_t F : {int64_t(256), int64_t(7)}) {
      const size_t n = size_t(N * F);
      const auto x = randn(n, 3.0f), dy = randn(n);
      std::vector<float> y_ref(n), dx_ref(n, 0.0f);
      ops::silu_forward<float>(host(), Tensor<float>(y_ref.data(), {N, F}), Tensor<const float>(x.data(), {N, F}));
      ops::silu_backward<float>(host(), Tensor<float>(dx_ref.data(), {N, F}), Tensor<const float>(dy.data(), {N, F}),
                                Tensor<const float>(x.data(), {N, F}));
      // bf16 (the codec's dtype): vector path at F = 256, scalar at F = 7
      auto xb = upload_bf16(x), dyb = upload_bf16(dy);
      auto yb = poisoned<bf16>(n), dxb = poisoned<bf16>(n);
      ops::silu_forward<bf16>(ctx(), yb.view({N, F}), CudaTensor<const bf16>(xb.data(), {N, F}));
      ops::silu_backward<bf16>(ctx(), dxb.view({N, F}), CudaTensor<const bf16>(dyb.data(), {N, F}),
                               CudaTensor<const bf16>(xb.data(), {N, F}));
      std::printf("silu N %lld F %lld\n", static_cast<long long>(N), static_cast<long long>(F));
      CHECK_REL_NAMED("silu bf16 forward", download(yb), y_ref, 4e-3);
      CHECK_REL_NAMED("silu bf16 backward", download(dxb), dx_ref, 4e-3);
      // fp32
      auto xf = upload(x), dyf = upload(dy);
      auto yf = poisoned<float>(n), dxf = poisoned<float>(n);
      ops::silu_forward<float>(ctx(), yf.view({N, F}), CudaTensor<const float>(xf.data(), {N, F}));
      ops::silu_backward<float>(ctx(), dxf.view({N, F}), CudaTensor<const float>(dyf.data(), {N, F}),
                                CudaTensor<const float>(xf.data(), {N, F}));
      CHECK_REL_NAMED("silu fp32 forward", download(yf), y_ref, 2e-6);
      CHECK_REL_NAMED("silu fp32 backward", download(dxf), dx_ref, 2e-6);
    }
  }
}

TEST_CASE("cuda Resbm<2> halves match the cpu codec", "[cuda][codec]") {
  using C = codec::presets::Resbm<2>;
  check_codec<C>("Resbm<2>", 4099, 256, 256, true);
  check_codec<C>("Resbm<2>", 16, 64, 32, true);
  check_codec<C>("Resbm<2>, vocab above the one-hot's", 1037, 64, 2048, false);
}

TEST_CASE("cuda Resbm<8> halves match the cpu codec", "[cuda][codec]") {
  using C = codec::presets::Resbm<8>;
  check_codec<C>("Resbm<8>", 4096, 256, 256, true);
  check_codec<C>("Resbm<8>, vocab not a multiple of 8", 1037, 128, 65, false);
}

TEST_CASE("cuda Resbm<16> halves match the cpu codec", "[cuda][codec]") {
  check_codec<codec::presets::Resbm<16>>("Resbm<16>", 1037, 128, 64, true);
}

// The identity and side-information variants: each lays out the decoder's row buffer
// differently, and Int8Grouped<64> at r = 2 takes the encoder's separate SiLU pass.
TEST_CASE("cuda ResidualBottleneck variants match the cpu codec", "[cuda][codec]") {
  using codec::Int8Grouped;
  using codec::Int8PerToken;
  using codec::Mlp;
  using codec::ResidualBottleneck;
  check_codec<ResidualBottleneck<rank<2>, Mlp<128, codec::silu>, codec::NoIdentity, Int8Grouped<64>, Int8Grouped<64>,
                                 codec::TokenReembed>>("NoIdentity, TokenReembed, Int8Grouped<64>", 1037, 128, 64, true);
  check_codec<ResidualBottleneck<rank<4>, Mlp<64, codec::silu>, codec::Truncate, Int8PerToken, codec::Bf16Wire,
                                 codec::NoSideInfo>>("Truncate, NoSideInfo, Int8PerToken", 515, 64, 32, true);
  check_codec<ResidualBottleneck<rank<8>, Mlp<64, codec::silu>, codec::NoIdentity, Int8Grouped<16>, Int8Grouped<16>,
                                 codec::NoSideInfo>>("NoIdentity, NoSideInfo", 515, 64, 32, false);
}
