// The CUDA wire kernels (ops/cuda/wire.cuh) against the CPU wire policies, byte for byte:
// every encode must write exactly the bytes of the CPU's W::encode, every decode exactly
// the floats of W::decode (bf16 outputs: those rounded to nearest even), on fresh inputs
// that hold what the wire must get right: scales that vary by 10^6 between tokens,
// outliers, zero groups, -0, subnormal groups, exact ties at scale 1 (x = k + 0.5, which
// must round to even) and near ties at scale 1/127 (where an fp32 quotient would round the
// wrong way). Outputs are poisoned first: wire bytes with 0x80 (never a code: codes are in
// [-127, 127], and 0x80808080 is a negative scale), decoded values with NaN, and the
// buffers run 64 bytes past the payload to catch overruns. Errors must carry the CPU's
// exact message.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/ops/cuda/wire.cuh"
#include "cuda/support.cuh"

using namespace resbm;
using namespace resbm::test;
using codec::Bf16Wire;
using codec::Int8Grouped;
using codec::Int8PerToken;
using ops::CudaWireStatus;

namespace {

// A fresh payload: per-token scales 10^[-3, 3], an outlier (x1000) every 37th value, and
// stretches of 256 values (by flattened index / 256 mod 8): 3 exact ties at scale 1 (every
// other value 127, the rest k + 0.5), 5 near ties at scale 1/127, 6 zeros and -0, 7
// subnormals. Rounded to bf16 when the kernel reads bf16.
std::vector<float> wire_input(int64_t tokens, int64_t width, bool bf16_values) {
  const uint64_t s = next_stream();
  const int64_t n = tokens * width;
  std::vector<float> x(static_cast<size_t>(n));
  const float near_scale = 1.0f / 127.0f;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t tok = width ? i / width : 0;
    const float u = Philox::uniform(0xc0de, s, uint64_t(2 * i));
    const float nrm = Philox::normal(0xc0de, s, uint64_t(2 * i + 1));
    const int k = int(u * 253.0f) - 126;  // -126 .. 126
    float v;
    switch ((i / 256) % 8) {
      case 3: v = i % 2 ? (u < 0.5f ? 127.0f : -127.0f) : float(k) + (k < 0 ? -0.5f : 0.5f); break;
      case 5:
        v = i % 2 ? 1.0f : std::nextafter((float(k) + 0.5f) * (near_scale), u < 0.5f ? 0.0f : 200.0f);
        break;
      case 6: v = i % 3 ? 0.0f : -0.0f; break;
      case 7: v = nrm * 1e-40f; break;
      default: {
        const float tok_scale = std::pow(10.0f, 6.0f * Philox::uniform(0xc0de, s ^ 0xffff, uint64_t(tok)) - 3.0f);
        v = nrm * tok_scale * (i % 37 == 0 ? 1000.0f : 1.0f);
      }
    }
    x[size_t(i)] = bf16_values ? round_bf16(v) : v;
  }
  return x;
}

template <class T>
std::vector<T> as(const std::vector<float>& f) {
  if constexpr (std::is_same_v<T, float>)
    return f;
  else
    return to_bf16(f);
}

template <class W>
std::string wire_label() {
  if constexpr (std::is_same_v<W, Int8PerToken> || std::is_same_v<W, Bf16Wire>)
    return W::name;
  else
    return std::string(W::name) + "<" + std::to_string(W::group) + ">";
}

template <class T>
const char* type_label() {
  return std::is_same_v<T, float> ? "fp32" : "bf16";
}

// GPU encode and decode of one [tokens, width] payload against the CPU, byte for byte.
// `offset` elements shift the input off 16-byte alignment (the scalar fallback path).
template <class W, class T>
void check_round_trip(int64_t tokens, int64_t width, int64_t offset = 0) {
  const auto x = wire_input(tokens, width, std::is_same_v<T, bf16>);
  const int64_t n = tokens * width;
  const size_t bytes = W::bytes(tokens, width);
  std::vector<std::byte> ref(bytes);
  W::encode(x.data(), tokens, width, ref.data());

  std::vector<T> xt = as<T>(x);
  xt.insert(xt.begin(), size_t(offset), T{});
  auto d_x = upload(xt, 1);  // one past the end: never empty, at 0 tokens or width 0
  auto wire = poisoned_wire(bytes);
  CudaWireStatus status;
  ops::wire_encode<W, T>(ctx(), status, CudaTensor<const T>(d_x.data() + offset, {tokens, width}),
                         wire.view({int64_t(wire.size())}));
  status.check(ctx());
  const int64_t diff = first_diff(wire.to_host(), ref);
  std::printf("  %-20s %s tokens %6ld width %3ld%s: %8zu bytes %s\n", wire_label<W>().c_str(), type_label<T>(),
              long(tokens), long(width), offset ? " (unaligned)" : "", bytes,
              diff < 0 ? "equal" : ("DIFFER at byte " + std::to_string(diff)).c_str());
  CHECK(diff == -1);

  // Decode the CPU's bytes.
  std::vector<float> y_ref(static_cast<size_t>(n));
  W::decode(ref.data(), tokens, width, y_ref.data());
  auto d_wire = poisoned_wire(bytes);
  d_wire.from_host(ref.data(), ref.size());
  auto y = poisoned<T>(size_t(n) + size_t(offset) + 1);
  ops::wire_decode<W, T>(ctx(), status, d_wire.view({int64_t(d_wire.size())}),
                         CudaTensor<T>(y.data() + offset, {tokens, width}));
  status.check(ctx());
  const auto got = y.to_host();
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    bool same;
    if constexpr (std::is_same_v<T, float>)
      same = float_bits(got[size_t(offset + i)]) == float_bits(y_ref[size_t(i)]);
    else
      same = got[size_t(offset + i)].bits == bf16::from_float(y_ref[size_t(i)]).bits;
    if (!same && bad++ == 0) first = i;
  }
  if (bad) std::printf("    decode: %ld of %ld values differ, first at %ld\n", long(bad), long(n), long(first));
  CHECK(bad == 0);
}

template <class W>
void round_trips() {
  struct S {
    int64_t tokens, width;
  };
  for (S s : {S{1, 1}, S{3, 2}, S{5, 3}, S{1000, 2}, S{4099, 8}, S{257, 64}, S{33, 100}, S{16384, 2},
              S{16384, 8}, S{16384, 64}, S{7, 0}, S{0, 8}}) {
    check_round_trip<W, float>(s.tokens, s.width);
    check_round_trip<W, bf16>(s.tokens, s.width);
  }
  check_round_trip<W, float>(1000, 8, 1);
  check_round_trip<W, bf16>(1000, 8, 3);
}

}  // namespace

TEST_CASE("cuda int8-grouped wire is the CPU's bytes, both ways") {
  round_trips<Int8Grouped<16>>();  // the lanes path (4 fp32 / 2 bf16 lanes a group)
  round_trips<Int8Grouped<64>>();
  round_trips<Int8Grouped<128>>();  // 32 fp32 lanes; bf16 16
  round_trips<Int8Grouped<256>>();  // too wide for fp32 lanes (one thread a group), 32 bf16 lanes
  round_trips<Int8Grouped<3>>();    // one thread a group
}

TEST_CASE("cuda int8-per-token and bf16 wires are the CPU's bytes, both ways") {
  round_trips<Int8PerToken>();
  round_trips<Bf16Wire>();
}

TEST_CASE("cuda wire: a non-finite input is the CPU's Error") {
  auto run = [](auto wire_tag, auto type_tag, int64_t tokens, int64_t width, std::vector<std::pair<int64_t, float>> bad) {
    using W = decltype(wire_tag);
    using T = decltype(type_tag);
    auto x = wire_input(tokens, width, std::is_same_v<T, bf16>);
    for (auto [i, v] : bad) x[size_t(i)] = v;
    std::vector<std::byte> ref(W::bytes(tokens, width));
    const std::string want = error_of([&] { W::encode(x.data(), tokens, width, ref.data()); });
    auto d_x = upload(as<T>(x));
    auto wire = poisoned_wire(ref.size());
    CudaWireStatus status;
    ops::wire_encode<W, T>(ctx(), status, CudaTensor<const T>(d_x.data(), {tokens, width}), wire.view({int64_t(wire.size())}));
    const std::string got = error_of([&] { status.check(ctx()); });
    std::printf("  %-20s %s: %s\n", wire_label<W>().c_str(), type_label<T>(), got.c_str());
    CHECK(want != "<no error>");
    CHECK(got == want);
    CHECK(!status.armed());  // usable again after the throw
  };
  const float nan = std::nanf(""), inf = INFINITY;
  // Two bad values: the report must name the first one, whichever thread sees it first.
  run(Int8Grouped<16>{}, float{}, 4099, 8, {{30001, nan}, {2085, -inf}});
  run(Int8Grouped<16>{}, bf16{}, 4099, 8, {{30001, inf}, {2085, nan}});
  run(Int8Grouped<3>{}, float{}, 1000, 2, {{1999, nan}, {1500, inf}});
  run(Int8PerToken{}, float{}, 1000, 64, {{64 * 999 + 63, nan}, {64 * 700 + 5, nan}});
  run(Int8PerToken{}, bf16{}, 1000, 2, {{7, inf}});
  run(Bf16Wire{}, float{}, 1000, 8, {{4000, nan}, {3999, 3.4e38f}});  // finite, but inf in bf16
  run(Bf16Wire{}, bf16{}, 1000, 8, {{17, -inf}});
}

TEST_CASE("cuda wire: a payload that decodes to a non-finite value is the CPU's Error") {
  auto run = [](auto wire_tag, int64_t tokens, int64_t width, std::vector<size_t> nan_bytes) {
    using W = decltype(wire_tag);
    const auto x = wire_input(tokens, width, false);
    std::vector<std::byte> bytes(W::bytes(tokens, width));
    W::encode(x.data(), tokens, width, bytes.data());
    for (size_t b : nan_bytes) bytes[b] = std::byte{0xff};
    std::vector<float> y(size_t(tokens * width));
    const std::string want = error_of([&] { W::decode(bytes.data(), tokens, width, y.data()); });
    auto d_wire = poisoned_wire(bytes.size());
    d_wire.from_host(bytes.data(), bytes.size());
    for (bool as_bf16 : {false, true}) {
      DeviceBuffer<float> yf(y.size());
      DeviceBuffer<bf16> yb(y.size());
      CudaWireStatus status;
      if (as_bf16)
        ops::wire_decode<W, bf16>(ctx(), status, d_wire.view({int64_t(d_wire.size())}), yb.view({tokens, width}));
      else
        ops::wire_decode<W, float>(ctx(), status, d_wire.view({int64_t(d_wire.size())}), yf.view({tokens, width}));
      const std::string got = error_of([&] { status.check(ctx()); });
      std::printf("  %-20s -> %s: %s\n", wire_label<W>().c_str(), as_bf16 ? "bf16" : "fp32", got.c_str());
      CHECK(want != "<no error>");
      CHECK(got == want);
    }
  };
  // fp32 scales whose top bytes are 0xff are NaN; the bf16 high byte 0xff with any low
  // byte >= 0x80 is a NaN too.
  run(Int8Grouped<16>{}, 4099, 8, {4 * 1000 + 3, 4 * 1000 + 2, 4 * 77 + 3, 4 * 77 + 2});
  run(Int8Grouped<3>{}, 1000, 2, {4 * 500 + 3, 4 * 500 + 2});
  run(Int8PerToken{}, 1000, 64, {4 * 999 + 3, 4 * 999 + 2, 4 * 321 + 3, 4 * 321 + 2});
  run(Bf16Wire{}, 1000, 8, {2 * 5000 + 1, 2 * 5000, 2 * 6000 + 1, 2 * 6000});
}

TEST_CASE("cuda wire: misuse is an Error") {
  DeviceBuffer<float> x(64);
  x.fill_bytes(0);
  DeviceBuffer<std::byte> wire(256);
  CudaWireStatus status;
  const int64_t need = int64_t(Int8Grouped<16>::bytes(8, 8));
  auto encode = [&](int64_t bytes) {
    ops::wire_encode<Int8Grouped<16>, float>(ctx(), status, x.view({8, 8}), wire.view({bytes}));
  };
  CHECK_THROWS_AS(encode(need - 1), Error);  // a wire buffer one byte short
  encode(need);
  CHECK_THROWS_AS(encode(need), Error);  // a status reused before check()
  status.check(ctx());
  // The fused kernel's limits.
  DeviceBuffer<bf16> act(48 * 8), w(65 * 64);
  CHECK_THROWS_AS(ops::fused_linear_encode<Int8Grouped<16>>(ctx(), status, act.view({8, 48}), w.view({2, 48}), {},
                                                            wire.view({256})),
                  Error);  // H not a multiple of 32
  CHECK_THROWS_AS(ops::fused_linear_encode<Int8Grouped<16>>(ctx(), status, w.view({65, 64}), w.view({65, 64}), {},
                                                            wire.view({256})),
                  Error);  // r > 64
  CHECK(!status.armed());
}

namespace {

// fused_linear_encode against a double reference of z and the CPU's W::encode of the z
// the kernel computed (written to z_out): z within fp32 summation rounding, wire bytes
// equal; then again without z_out (the production path), bytes equal again.
template <class W>
void check_fused(int64_t N, int64_t H, int64_t r, int64_t d_resid) {
  const uint64_t s = next_stream();
  std::vector<float> act(size_t(N * H)), w(size_t(r * H)), res(size_t(N * d_resid));
  for (size_t i = 0; i < act.size(); ++i)
    act[i] = round_bf16(Philox::normal(0xf00d, s, i) * (i % 53 == 0 ? 30.0f : 1.0f));
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = round_bf16(Philox::normal(0xf00d, s + 1000000, i) / std::sqrt(float(H)));
  for (size_t i = 0; i < res.size(); ++i) res[i] = round_bf16(2.0f * Philox::normal(0xf00d, s + 2000000, i));

  auto d_act = upload(as<bf16>(act)), d_w = upload(as<bf16>(w)), d_res = upload(as<bf16>(res));
  const size_t bytes = W::bytes(N, r);
  auto wire = poisoned_wire(bytes), wire2 = poisoned_wire(bytes);
  auto z = poisoned<float>(size_t(N * r) + 1);
  CudaTensor<const bf16> resid = d_resid ? CudaTensor<const bf16>(d_res.data(), {N, d_resid}) : CudaTensor<const bf16>{};
  CudaWireStatus status;
  ops::fused_linear_encode<W>(ctx(), status, d_act.view({N, H}), d_w.view({r, H}), resid, wire.view({int64_t(wire.size())}),
                              z.view({N, r}));
  status.check(ctx());
  ops::fused_linear_encode<W>(ctx(), status, d_act.view({N, H}), d_w.view({r, H}), resid, wire2.view({int64_t(wire2.size())}));
  status.check(ctx());

  const auto zg = z.to_host();
  int64_t far = 0;
  double worst = 0;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < r; ++j) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < H; ++k) {
        const double p = double(act[size_t(t * H + k)]) * double(w[size_t(j * H + k)]);
        ref += p;
        mag += std::fabs(p);
      }
      if (d_resid) {
        ref += res[size_t(t * d_resid + j)];
        mag += std::fabs(res[size_t(t * d_resid + j)]);
      }
      const double err = std::fabs(double(zg[size_t(t * r + j)]) - ref) / (mag + 1e-30);
      worst = std::max(worst, std::isfinite(err) ? err : INFINITY);
      if (!(err <= 1e-5)) ++far;
    }
  std::vector<std::byte> ref(bytes);
  W::encode(zg.data(), N, r, ref.data());
  const int64_t diff = first_diff(wire.to_host(), ref), diff2 = first_diff(wire2.to_host(), ref);
  std::printf("  fused %-20s N %5ld H %3ld r %2ld residual %3ld: z err %.1e of sum|terms|, bytes %s, without z %s\n",
              wire_label<W>().c_str(), long(N), long(H), long(r), long(d_resid), worst, diff < 0 ? "equal" : "DIFFER",
              diff2 < 0 ? "equal" : "DIFFER");
  CHECK(far == 0);
  CHECK(diff == -1);
  CHECK(diff2 == -1);
}

template <class W>
void fused_cases() {
  for (int64_t r : {1, 2, 3, 8, 13, 32, 64})
    for (int64_t H : {256, 96})
      for (int64_t N : {int64_t(77), int64_t(4099)}) check_fused<W>(N, H, r, (r + N) % 2 ? 160 : 0);
  check_fused<W>(1, 256, 2, 256);
  check_fused<W>(16384, 256, 8, 256);
  check_fused<W>(3000, 768, 64, 768);  // H > 256: k in chunks of 256
}

}  // namespace

TEST_CASE("cuda fused encoder output + int8 wire: the CPU's bytes of the z it computed") {
  fused_cases<Int8Grouped<16>>();  // the Resbm preset's forward wire
  fused_cases<Int8Grouped<64>>();
  fused_cases<Int8PerToken>();     // ResbmLinear's
  fused_cases<Int8Grouped<5>>();   // groups that cut tokens anywhere: 80- to 320-token tiles
  fused_cases<Int8Grouped<256>>();  // per warp, one thread a group, at r = 16..64; tiles below
}

TEST_CASE("cuda fused encoder output: a non-finite z is the CPU's Error") {
  const int64_t N = 300, H = 256, r = 8;
  std::vector<float> act(size_t(N * H), 0.5f), w(size_t(r * H), 0.01f);
  act[size_t(200 * H + 17)] = INFINITY;  // token 200: inf · w = inf in every column
  act[size_t(250 * H + 3)] = std::nanf("");
  std::vector<float> z(size_t(N * r), 1.0f);
  for (int64_t j = 0; j < r; ++j) z[size_t(200 * r + j)] = INFINITY;
  std::vector<std::byte> ref(Int8Grouped<16>::bytes(N, r));
  const std::string want = error_of([&] { Int8Grouped<16>::encode(z.data(), N, r, ref.data()); });
  auto d_act = upload(as<bf16>(act)), d_w = upload(as<bf16>(w));
  auto wire = poisoned_wire(ref.size());
  CudaWireStatus status;
  ops::fused_linear_encode<Int8Grouped<16>>(ctx(), status, d_act.view({N, H}), d_w.view({r, H}), {},
                                            wire.view({int64_t(wire.size())}));
  const std::string got = error_of([&] { status.check(ctx()); });
  std::printf("  fused: %s\n", got.c_str());
  CHECK(want != "<no error>");
  CHECK(got == want);
}
