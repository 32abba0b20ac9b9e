// Wire policies: exact payload sizes and bytes, round-trip error bounds, zero rows, refusal
// of non-finite input and of buffers that are too small.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "resbm/codec/concepts.hpp"
#include "resbm/codec/wire/bf16.hpp"
#include "resbm/codec/wire/fp32.hpp"
#include "resbm/codec/wire/fp8_e4m3.hpp"
#include "resbm/codec/wire/int4_grouped.hpp"
#include "resbm/codec/wire/int8_grouped.hpp"
#include "resbm/codec/wire/int8_per_token.hpp"
#include "resbm/core/rng.hpp"
#include "support/catch.hpp"

using namespace resbm;
using namespace resbm::codec;
using Catch::Matchers::Contains;

namespace {

// Shapes with odd widths, widths below and above the group size, and N·width not a
// multiple of any group size used below.
const std::vector<std::pair<int64_t, int64_t>> kShapes{{1, 1}, {3, 2}, {5, 7}, {4, 64}, {7, 33}, {2, 257}, {0, 5}, {6, 0}};

std::vector<float> randn(size_t n, uint64_t stream, float scale = 1.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * Philox::normal(7, stream, i);
  return v;
}

template <class W>
std::vector<std::byte> enc(const std::vector<float>& x, int64_t N, int64_t w) {
  std::vector<std::byte> out(W::bytes(N, w));
  wire_encode<W>(x.data(), N, w, out);
  return out;
}

template <class W>
std::vector<float> roundtrip(const std::vector<float>& x, int64_t N, int64_t w) {
  auto bytes = enc<W>(x, N, w);
  std::vector<float> y(x.size(), -1.0f);
  wire_decode<W>(bytes, N, w, y.data());
  return y;
}

std::vector<uint8_t> u8(const std::vector<std::byte>& b) {
  std::vector<uint8_t> v;
  for (std::byte x : b) v.push_back(uint8_t(x));
  return v;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A user wire that forgot decode.
struct NoDecode {
  static constexpr const char* name = "no-decode";
  static size_t bytes(int64_t, int64_t) { return 0; }
  static void encode(const float*, int64_t, int64_t, std::byte*) {}
};

}  // namespace

TEST_CASE("wire policies model the concept") {
  STATIC_REQUIRE(WirePolicy<Fp32Wire>);
  STATIC_REQUIRE(WirePolicy<Bf16Wire>);
  STATIC_REQUIRE(WirePolicy<Fp8E4M3PerToken>);
  STATIC_REQUIRE(WirePolicy<Int8PerToken>);
  STATIC_REQUIRE(WirePolicy<Int8Grouped<3>>);
  STATIC_REQUIRE(WirePolicy<Int4Grouped<5>>);
  STATIC_REQUIRE(!WirePolicy<NoDecode>);
  STATIC_REQUIRE(!WirePolicy<float>);
}

TEST_CASE("exact payload sizes for every policy and shape") {
  for (auto [N, w] : kShapes) {
    INFO("N=" << N << " width=" << w);
    const int64_t n = N * w;
    CHECK(Fp32Wire::bytes(N, w) == size_t(4 * n));
    CHECK(Bf16Wire::bytes(N, w) == size_t(2 * n));
    CHECK(Fp8E4M3PerToken::bytes(N, w) == size_t(4 * N + n));
    CHECK(Int8PerToken::bytes(N, w) == size_t(4 * N + n));
    CHECK(Int8Grouped<64>::bytes(N, w) == size_t(4 * ceil_div(n, 64) + n));
    CHECK(Int8Grouped<5>::bytes(N, w) == size_t(4 * ceil_div(n, 5) + n));
    CHECK(Int4Grouped<64>::bytes(N, w) == size_t(4 * ceil_div(n, 64) + ceil_div(n, 2)));
    CHECK(Int4Grouped<3>::bytes(N, w) == size_t(4 * ceil_div(n, 3) + ceil_div(n, 2)));
  }
  // The preset's narrow code: d = 256, r = 2, 1024 tokens -> 2048 codes + 32 scales.
  CHECK(Int8Grouped<64>::bytes(1024, 2) == 2048 + 32 * 4);
  CHECK_THROWS_AS(Fp32Wire::bytes(-1, 3), Error);
  CHECK_THROWS_AS(Int8Grouped<64>::bytes(2, -3), Error);
}

TEST_CASE("exact bytes: fp32 and bf16 are little-endian value arrays") {
  std::vector<float> x{1.0f, -2.0f, 0.5f};
  CHECK(u8(enc<Fp32Wire>(x, 1, 3)) ==
        std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x00, 0x3f});
  // 1 + 2^-8 is a tie between bf16 1.0 (even) and 1 + 2^-7: ties go to even -> 0x3f80.
  // 1 + 3·2^-8 ties between 1 + 2^-7 (odd mantissa) and 1 + 2^-6 (even) -> 0x3f82.
  std::vector<float> y{1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -3.0f};
  CHECK(u8(enc<Bf16Wire>(y, 3, 1)) == std::vector<uint8_t>{0x80, 0x3f, 0x82, 0x3f, 0x40, 0xc0});
}

TEST_CASE("exact bytes: int8 per token, scale first, ties to even") {
  // Row 0: absmax 127 -> scale 1; -63.5 is a tie -> -64. Row 1: all zero -> scale 0.
  std::vector<float> x{127.0f, -63.5f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  CHECK(u8(enc<Int8PerToken>(x, 2, 4)) ==
        std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3f, 0, 0, 0, 0,  // scales 1.0f, 0.0f
                             0x7f, 0xc0, 0x00, 0x01, 0, 0, 0, 0});
}

TEST_CASE("exact bytes: grouped int8 and int4 groups cross token boundaries") {
  // 2 tokens x 3 values, G = 4: groups {x0..x3}, {x4, x5}.
  std::vector<float> x{254.0f, 2.0f, -254.0f, 3.0f, 0.5f, -1.0f};
  // Group 0: scale 2 -> 127, 1, -127, 2 (1.5 ties to 2). Group 1: absmax 1 -> scale 1/127:
  // 63.5 -> 64, -127.
  const float s1 = 1.0f / 127.0f;
  uint32_t b1;
  std::memcpy(&b1, &s1, 4);
  std::vector<uint8_t> want{0x00, 0x00, 0x00, 0x40, uint8_t(b1), uint8_t(b1 >> 8), uint8_t(b1 >> 16), uint8_t(b1 >> 24),
                            0x7f, 0x01, 0x81, 0x02, 0x40, 0x81};
  CHECK(u8(enc<Int8Grouped<4>>(x, 2, 3)) == want);

  // 5 values x 1 token, G = 3: scales 7/7 = 1 and 3.5/7 = 0.5.
  std::vector<float> z{7.0f, -3.0f, 2.5f, 3.5f, -1.0f};
  // Codes: 7, -3, 2 (2.5 ties to 2) | 7, -2; packed low nibble first, odd tail high nibble 0.
  CHECK(u8(enc<Int4Grouped<3>>(z, 1, 5)) ==
        std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x3f,  // 1.0f, 0.5f
                             uint8_t(0x07 | 0xd0), uint8_t(0x02 | 0x70), 0x0e});
}

TEST_CASE("exact bytes: fp8 e4m3fn codes") {
  // absmax 448 -> scale 1, so the codes are those of the values themselves.
  std::vector<float> x{448.0f, 1.0f, 0.5f, -2.0f, 3.0f / 512, -0.0f, 1.0625f, 1.1875f, 240.0f};
  auto b = u8(enc<Fp8E4M3PerToken>(x, 1, int64_t(x.size())));
  REQUIRE(b.size() == 4 + x.size());
  CHECK(std::vector<uint8_t>(b.begin(), b.begin() + 4) == std::vector<uint8_t>{0x00, 0x00, 0x80, 0x3f});
  // 448 = 0.1111.110; 1 = 0.0111.000; 0.5 = 0.0110.000; -2 = 1.1000.000; 3·2^-9 subnormal
  // 0.0000.011; -0 -> 0; 1.0625 ties between 1 (even) and 1.125 -> 0x38; 1.1875 ties
  // between 1.125 (odd) and 1.25 (even) -> 0x3a; 240 = 1.875·2^7 = 0.1110.111.
  CHECK(std::vector<uint8_t>(b.begin() + 4, b.end()) ==
        std::vector<uint8_t>{0x7e, 0x38, 0x30, 0xc0, 0x03, 0x00, 0x38, 0x3a, 0x77});
}

TEST_CASE("round-trip error bounds") {
  for (auto [N, w] : kShapes) {
    INFO("N=" << N << " width=" << w);
    const size_t n = size_t(N * w);
    auto x = randn(n, 11 + uint64_t(N * 1000 + w), 3.0f);
    // Rows of very different magnitudes exercise the per-token scales.
    for (int64_t t = 0; t < N; ++t)
      for (int64_t c = 0; c < w; ++c) x[size_t(t * w + c)] *= std::pow(10.0f, float(t % 4) - 2);

    // fp32: exact.
    CHECK(roundtrip<Fp32Wire>(x, N, w) == x);
    {  // bf16: relative 2^-8 (round to nearest even is within 2^-9).
      auto y = roundtrip<Bf16Wire>(x, N, w);
      for (size_t i = 0; i < n; ++i) CHECK(std::abs(x[i] - y[i]) <= std::ldexp(std::abs(x[i]), -8));
    }
    {  // fp8 e4m3 per token: relative 2^-4, absolute 2^-10·scale below the normals.
      auto y = roundtrip<Fp8E4M3PerToken>(x, N, w);
      for (int64_t t = 0; t < N; ++t) {
        float m = 0;
        for (int64_t c = 0; c < w; ++c) m = std::max(m, std::abs(x[size_t(t * w + c)]));
        const float s = m / 448.0f;
        for (int64_t c = 0; c < w; ++c) {
          const size_t i = size_t(t * w + c);
          CHECK(std::abs(x[i] - y[i]) <= std::ldexp(std::abs(x[i]), -4) + std::ldexp(s, -10) + 1e-6f * m);
        }
      }
    }
    {  // int8 per token: absmax/254.
      auto y = roundtrip<Int8PerToken>(x, N, w);
      for (int64_t t = 0; t < N; ++t) {
        float m = 0;
        for (int64_t c = 0; c < w; ++c) m = std::max(m, std::abs(x[size_t(t * w + c)]));
        for (int64_t c = 0; c < w; ++c) {
          const size_t i = size_t(t * w + c);
          CHECK(std::abs(x[i] - y[i]) <= m / 254.0f * (1 + 1e-6f));
        }
      }
    }
    {  // grouped int8 / int4: absmax_group/254 and /14.
      auto check_grouped = [&](const std::vector<float>& y, int64_t G, float denom) {
        for (int64_t g0 = 0; g0 < int64_t(n); g0 += G) {
          const int64_t g1 = std::min<int64_t>(g0 + G, int64_t(n));
          float m = 0;
          for (int64_t i = g0; i < g1; ++i) m = std::max(m, std::abs(x[size_t(i)]));
          for (int64_t i = g0; i < g1; ++i) CHECK(std::abs(x[size_t(i)] - y[size_t(i)]) <= m / denom * (1 + 1e-6f));
        }
      };
      check_grouped(roundtrip<Int8Grouped<64>>(x, N, w), 64, 254.0f);
      check_grouped(roundtrip<Int8Grouped<5>>(x, N, w), 5, 254.0f);
      check_grouped(roundtrip<Int4Grouped<64>>(x, N, w), 64, 14.0f);
      check_grouped(roundtrip<Int4Grouped<3>>(x, N, w), 3, 14.0f);
    }
  }
}

TEST_CASE("zero rows and groups decode to exact zeros") {
  std::vector<float> x(3 * 5, 0.0f);
  for (int c = 0; c < 5; ++c) x[size_t(5 + c)] = float(c) - 2.0f;  // only token 1 is nonzero
  auto all_ok = [&](const std::vector<float>& y, size_t from, size_t to) {
    for (size_t i = from; i < to; ++i)
      if (y[i] != 0.0f || std::signbit(y[i]) || std::isnan(y[i])) return false;
    return true;
  };
  CHECK(all_ok(roundtrip<Fp8E4M3PerToken>(x, 3, 5), 0, 5));
  CHECK(all_ok(roundtrip<Fp8E4M3PerToken>(x, 3, 5), 10, 15));
  CHECK(all_ok(roundtrip<Int8PerToken>(x, 3, 5), 10, 15));
  CHECK(all_ok(roundtrip<Int8Grouped<5>>(x, 3, 5), 0, 5));
  CHECK(all_ok(roundtrip<Int4Grouped<5>>(x, 3, 5), 10, 15));
  std::vector<float> zeros(64, 0.0f);
  CHECK(all_ok(roundtrip<Int8Grouped<64>>(zeros, 32, 2), 0, 64));
  CHECK(all_ok(roundtrip<Int4Grouped<64>>(zeros, 32, 2), 0, 64));
  // Subnormal absmax: the scale underflows to 0 or a subnormal, never a NaN.
  std::vector<float> tiny{1e-44f, -1e-45f};
  for (float v : roundtrip<Int8PerToken>(tiny, 1, 2)) CHECK(std::isfinite(v));
  for (float v : roundtrip<Fp8E4M3PerToken>(tiny, 1, 2)) CHECK(std::isfinite(v));
}

TEMPLATE_TEST_CASE("non-finite input is refused, naming the wire and the token", "", Fp32Wire, Bf16Wire,
                   Fp8E4M3PerToken, Int8PerToken, Int8Grouped<4>, Int4Grouped<4>) {
  using W = TestType;
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(4 * 3, 1.0f);
    x[2 * 3 + 1] = bad;  // token 2
    std::vector<std::byte> out(W::bytes(4, 3));
    CHECK_THROWS_WITH(wire_encode<W>(x.data(), 4, 3, out), Contains(W::name) && Contains("non-finite value at token 2"));
  }
}

TEST_CASE("bf16 refuses finite values that overflow it") {
  std::vector<float> x{std::numeric_limits<float>::max()};
  std::vector<std::byte> out(2);
  CHECK_THROWS_WITH(wire_encode<Bf16Wire>(x.data(), 1, 1, out), Contains("non-finite value at token 0"));
}

TEMPLATE_TEST_CASE("buffers too small are refused; decode reads only bytes()", "", Fp32Wire, Bf16Wire,
                   Fp8E4M3PerToken, Int8PerToken, Int8Grouped<4>, Int4Grouped<4>) {
  using W = TestType;
  auto x = randn(5 * 3, 3);
  const size_t need = W::bytes(5, 3);
  std::vector<std::byte> small(need - 1);
  CHECK_THROWS_AS(wire_encode<W>(x.data(), 5, 3, small), Error);
  std::vector<float> y(x.size());
  CHECK_THROWS_AS(wire_decode<W>(std::span<const std::byte>(small), 5, 3, y.data()), Error);

  // A larger buffer is fine: encode writes exactly bytes() and leaves the rest alone, and
  // decode reads none of the tail (garbage there changes nothing).
  std::vector<std::byte> big(need + 16, std::byte{0xa5});
  wire_encode<W>(x.data(), 5, 3, big);
  for (size_t i = need; i < big.size(); ++i) CHECK(big[i] == std::byte{0xa5});
  std::vector<float> y1(x.size()), y2(x.size());
  wire_decode<W>(big, 5, 3, y1.data());
  for (size_t i = need; i < big.size(); ++i) big[i] = std::byte{0xff};
  wire_decode<W>(big, 5, 3, y2.data());
  CHECK(y1 == y2);
}

TEST_CASE("corrupt payloads are refused on decode, not turned into NaN") {
  std::vector<std::byte> fp8(4 + 2, std::byte{0});
  fp8[2] = std::byte{0x80};
  fp8[3] = std::byte{0x3f};      // scale 1
  fp8[5] = std::byte{0x7f};      // the e4m3fn NaN code
  std::vector<float> y(2);
  CHECK_THROWS_WITH(wire_decode<Fp8E4M3PerToken>(fp8, 1, 2, y.data()), Contains("non-finite"));
  std::vector<std::byte> i8(4 + 2, std::byte{0});
  i8[2] = std::byte{0xc0};
  i8[3] = std::byte{0x7f};       // scale +inf
  CHECK_THROWS_AS(wire_decode<Int8PerToken>(i8, 1, 2, y.data()), Error);
}
