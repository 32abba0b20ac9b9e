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
//   gradient: ‖gpu − cpu‖ / ‖cpu‖ within bf16 bounds (vocabularies 256, 32 and 64: the
//   re-embedding's gradient by the one-hot GEMM, 65: by atomics);
// - the decoder's gradient wire is exactly BwdWire::encode of the GPU's own fp32 dy;
// - a non-finite h gives the CPU encoder's exact Error.
// Written outputs are poisoned first (NaN, wire bytes 0x80 plus a guard that must stay
// 0x80); parameter gradients accumulate from zero on both.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "resbm/codec/cuda/residual_bottleneck.cuh"
#include "resbm/codec/presets.hpp"
#include "resbm/core/rng.hpp"
#include "support/catch.hpp"

using namespace resbm;

namespace {

struct GpuGate {
  GpuGate() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      std::printf("no CUDA device: skipped\n");
      std::fflush(stdout);
      std::_Exit(77);
    }
  }
} gpu_gate;

CudaContext& ctx() {
  static CudaContext c(0);
  return c;
}
Context& host() {
  static Context c(0);
  return c;
}

uint64_t next_stream() {
  static uint64_t s = 9000;
  return s++;
}

std::vector<float> randn(size_t n, float scale = 1.0f, float shift = 0.0f) {
  const uint64_t s = next_stream();
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = round_bf16(shift + scale * Philox::normal(0xc0dec, s, i));
  return v;
}
std::vector<int32_t> rand_ids(size_t n, int32_t V) {
  const uint64_t s = next_stream();
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(Philox::bits64(0xc0dec, s, i) % uint64_t(V));
  return v;
}

std::vector<bf16> to_bf16(const std::vector<float>& f) {
  std::vector<bf16> b(f.size());
  for (size_t i = 0; i < f.size(); ++i) b[i] = bf16::from_float(f[i]);
  return b;
}
template <class T>
DeviceBuffer<T> upload(const std::vector<T>& h) {
  DeviceBuffer<T> d(h.size());
  d.from_host(h.data(), h.size());
  return d;
}
DeviceBuffer<bf16> upload_bf16(const std::vector<float>& h) { return upload(to_bf16(h)); }
std::vector<float> download(const DeviceBuffer<bf16>& d, size_t n) {
  ctx().synchronize();
  std::vector<bf16> b(n);
  d.to_host(b.data(), n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = b[i].to_float();
  return f;
}
std::vector<float> download(const float* p, size_t n) {
  ctx().synchronize();
  std::vector<float> f(n);
  if (n) RESBM_CUDA_CHECK(cudaMemcpy(f.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost));
  return f;
}
std::vector<std::byte> download_bytes(const DeviceBuffer<std::byte>& d) {
  ctx().synchronize();
  return d.to_host();
}

// ‖a − b‖ / ‖b‖ in double; infinite when a holds a NaN or an infinity.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    const double e = double(a[i]) - double(b[i]);
    num += e * e;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, double(a.size()) * 1e-12));
}

#define CHECK_REL(name, a, b, bound)                                  \
  do {                                                                \
    const double e_ = rel_err(a, b);                                  \
    std::printf("  %-28s rel err %.3g (bound %.0e)\n", name, e_, bound); \
    INFO(name << " rel err " << e_);                                  \
    CHECK(e_ <= (bound));                                             \
  } while (0)

// Fresh wire bytes poisoned with 0x80, plus a guard of 64 bytes that must stay so.
constexpr size_t kGuard = 64;
DeviceBuffer<std::byte> poisoned_wire(size_t bytes) {
  DeviceBuffer<std::byte> d(bytes + kGuard);
  d.fill_bytes(0x80);
  return d;
}
bool guard_intact(const std::vector<std::byte>& w, size_t bytes) {
  for (size_t i = bytes; i < w.size(); ++i)
    if (w[i] != std::byte{0x80}) return false;
  return true;
}

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

template <int R>
void check_codec(int64_t N, int d, int vocab) {
  using Codec = codec::presets::Resbm<R>;
  using Gpu = codec::CudaResidualBottleneck<Codec>;
  using FW = typename Codec::fwd_wire;
  using BW = typename Codec::bwd_wire;
  std::printf("Resbm<%d>: N %lld, d %d, vocab %d\n", R, static_cast<long long>(N), d, vocab);
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

  fill_params(enc_a);
  fill_params(dec_a);
  genc.upload_params(std::vector<float>(enc_a.params(), enc_a.params() + enc_a.size()));
  gdec.upload_params(std::vector<float>(dec_a.params(), dec_a.params() + dec_a.size()));

  const auto h = randn(size_t(N) * size_t(d));
  const auto ids = rand_ids(size_t(N), vocab);
  auto h_dev = upload_bf16(h);
  auto ids_dev = upload(ids);

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
  DeviceBuffer<float> z_dev(size_t(N) * R);
  z_dev.fill_bytes(0xff);
  genc.forward(ges, CudaTensor<const bf16>(h_dev.data(), {N, d}), wire_dev.view({int64_t(wbytes + kGuard)}),
               z_dev.view({N, R}));
  genc.check(ges);
  const auto wire_gpu = download_bytes(wire_dev);
  const auto z_gpu = download(z_dev.data(), size_t(N) * R);
  CHECK(guard_intact(wire_gpu, wbytes));
  {
    std::vector<std::byte> want(wbytes);
    codec::wire_encode<FW>(z_gpu.data(), N, R, want);
    CHECK(std::memcmp(want.data(), wire_gpu.data(), wbytes) == 0);  // the GPU's z, encoded by the CPU wire
  }
  const std::vector<float> z_cpu(es.z.data(), es.z.data() + size_t(N) * R);
  CHECK_REL("encoder z", z_gpu, z_cpu, 2e-2);
  {
    std::vector<float> dq_gpu(size_t(N) * R), dq_cpu(size_t(N) * R);
    codec::wire_decode<FW>(std::span<const std::byte>(wire_gpu.data(), wbytes), N, R, dq_gpu.data());
    codec::wire_decode<FW>(wire_cpu, N, R, dq_cpu.data());
    size_t same = 0;
    for (size_t i = 0; i < wbytes; ++i) same += wire_gpu[i] == wire_cpu[i];
    std::printf("  wire bytes equal to the CPU's: %zu of %zu\n", same, wbytes);
    CHECK_REL("encoder wire (decoded)", dq_gpu, dq_cpu, 2e-2);
  }

  // ---- decoder forward, from the CPU's wire
  auto ds = dec.make_activations(N);
  std::vector<float> hout_cpu(size_t(N) * size_t(d));
  dec.forward(host(), ds, wire_cpu, ids, Tensor<float>(hout_cpu.data(), {N, d}));

  auto gds = gdec.make_activations(N);
  for (auto* buf : {&gds.y, &gds.pre, &gds.act}) buf->fill_bytes(0xff);
  auto wire_in = upload(wire_cpu);
  DeviceBuffer<bf16> hout_dev(size_t(N) * size_t(d));
  hout_dev.fill_bytes(0xff);
  gdec.forward(gds, CudaTensor<const std::byte>(wire_in.data(), {int64_t(wbytes)}),
               CudaTensor<const int32_t>(ids_dev.data(), {N}), hout_dev.view({N, d}));
  gdec.check(gds);
  {
    const auto y_gpu = download(gds.y, size_t(N) * R);
    const std::vector<float> y_cpu(ds.y.data(), ds.y.data() + size_t(N) * R);
    CHECK_REL("decoder y (bf16)", y_gpu, y_cpu, 4e-3);
  }
  CHECK_REL("decoder h'", download(hout_dev, size_t(N) * size_t(d)), hout_cpu, 1e-2);

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
  CHECK(guard_intact(gwire_gpu, gbytes));
  {
    const auto dy_gpu = download(gdec.code_grad().data, size_t(N) * R);
    std::vector<std::byte> want(gbytes);
    codec::wire_encode<BW>(dy_gpu.data(), N, R, want);
    CHECK(std::memcmp(want.data(), gwire_gpu.data(), gbytes) == 0);
    std::vector<float> dq_gpu(size_t(N) * R), dq_cpu(size_t(N) * R);
    codec::wire_decode<BW>(std::span<const std::byte>(gwire_gpu.data(), gbytes), N, R, dq_gpu.data());
    codec::wire_decode<BW>(gwire_cpu, N, R, dq_cpu.data());
    CHECK_REL("decoder gradient wire (dec.)", dq_gpu, dq_cpu, 2e-2);
  }
  {
    const auto g = gdec.download_grads();
    for (const ParamInfo& p : dec_a.infos()) CHECK_REL(p.name.c_str(), entry(g, p), entry(dec_a.grads(), p), 2e-2);
  }

  // ---- encoder backward, from the CPU's gradient wire; the GPU writes dh (the CPU adds
  // into zeros)
  std::vector<float> dh_cpu(size_t(N) * size_t(d), 0.0f);
  enc.backward(host(), es, gwire_cpu, Tensor<float>(dh_cpu.data(), {N, d}));
  DeviceBuffer<bf16> dh_dev(size_t(N) * size_t(d));
  dh_dev.fill_bytes(0xff);
  auto gwire_in = upload(gwire_cpu);
  genc.backward(ges, CudaTensor<const std::byte>(gwire_in.data(), {int64_t(gbytes)}), dh_dev.view({N, d}));
  genc.check(ges);
  {
    CHECK_REL("encoder dh", download(dh_dev, size_t(N) * size_t(d)), dh_cpu, 2e-2);
    const auto g = genc.download_grads();
    for (const ParamInfo& p : enc_a.infos()) CHECK_REL(p.name.c_str(), entry(g, p), entry(enc_a.grads(), p), 2e-2);
  }

  // ---- a non-finite input: the CPU encoder's Error, word for word
  {
    auto bad = h;
    bad[size_t(N / 2) * size_t(d) + 3] = NAN;
    std::string cpu_msg, gpu_msg;
    try {
      enc.forward(host(), es, Tensor<const float>(bad.data(), {N, d}), {}, wire_cpu);
    } catch (const Error& e) {
      cpu_msg = e.what();
    }
    auto bad_dev = upload_bf16(bad);
    genc.forward(ges, CudaTensor<const bf16>(bad_dev.data(), {N, d}), wire_dev.view({int64_t(wbytes)}));
    try {
      genc.check(ges);
    } catch (const Error& e) {
      gpu_msg = e.what();
    }
    INFO("cpu: " << cpu_msg << " / gpu: " << gpu_msg);
    CHECK(!cpu_msg.empty());
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
      DeviceBuffer<bf16> yb(n), dxb(n);
      yb.fill_bytes(0xff);
      dxb.fill_bytes(0xff);
      ops::silu_forward<bf16>(ctx(), yb.view({N, F}), CudaTensor<const bf16>(xb.data(), {N, F}));
      ops::silu_backward<bf16>(ctx(), dxb.view({N, F}), CudaTensor<const bf16>(dyb.data(), {N, F}),
                               CudaTensor<const bf16>(xb.data(), {N, F}));
      std::printf("silu N %lld F %lld\n", static_cast<long long>(N), static_cast<long long>(F));
      CHECK_REL("silu bf16 forward", download(yb, n), y_ref, 4e-3);
      CHECK_REL("silu bf16 backward", download(dxb, n), dx_ref, 4e-3);
      // fp32
      auto xf = upload(x), dyf = upload(dy);
      DeviceBuffer<float> yf(n), dxf(n);
      yf.fill_bytes(0xff);
      dxf.fill_bytes(0xff);
      ops::silu_forward<float>(ctx(), yf.view({N, F}), CudaTensor<const float>(xf.data(), {N, F}));
      ops::silu_backward<float>(ctx(), dxf.view({N, F}), CudaTensor<const float>(dyf.data(), {N, F}),
                                CudaTensor<const float>(xf.data(), {N, F}));
      CHECK_REL("silu fp32 forward", download(yf.data(), n), y_ref, 2e-6);
      CHECK_REL("silu fp32 backward", download(dxf.data(), n), dx_ref, 2e-6);
    }
  }
}

TEST_CASE("cuda Resbm<2> halves match the cpu codec", "[cuda][codec]") {
  check_codec<2>(4099, 256, 256);
  check_codec<2>(16, 64, 32);
}

TEST_CASE("cuda Resbm<8> halves match the cpu codec", "[cuda][codec]") {
  check_codec<8>(4096, 256, 256);
  check_codec<8>(1037, 128, 65);
}

TEST_CASE("cuda Resbm<16> halves match the cpu codec", "[cuda][codec]") {
  check_codec<16>(1037, 128, 64);
}
