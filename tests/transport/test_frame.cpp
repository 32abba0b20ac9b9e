#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "resbm/transport/frame.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::transport;

using resbm::test::error_of;
using resbm::test::has;

namespace {

std::vector<std::byte> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = std::byte(rng() & 0xFF);
  return v;
}

FrameHeader sample_header(std::span<const std::byte> payload) {
  FrameHeader h;
  h.kind = Kind::gradient;
  h.step = 0x0102030405060708ull;
  h.micro_batch = 77;
  h.stream = 3;
  return seal(h, payload);
}

// A header whose header crc is valid again after a deliberate edit, to reach the checks
// that follow the crc.
void reseal_header(std::byte* p) {
  uint32_t c = ~crc32c_update(~0u, p, 36);
  for (int i = 0; i < 4; ++i) p[36 + i] = std::byte(c >> (8 * i));
}

}  // namespace

TEST_CASE("crc32c matches the standard check value and the software tables") {
  const char* check = "123456789";
  REQUIRE(crc32c(std::as_bytes(std::span(check, 9))) == 0xE3069283u);
  REQUIRE(crc32c({}) == 0u);
  auto data = random_bytes(3 * 4096 * 3 + 123, 7);
  for (size_t off : {size_t(0), size_t(1), size_t(5)})
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(100), size_t(4096 * 3),
                     size_t(4096 * 3 + 9), data.size() - 5}) {
      uint32_t fast = crc32c_update(~0u, data.data() + off, n);
      uint32_t slow = crc32c_update_sw(~0u, data.data() + off, n);
      INFO("offset " << off << " length " << n);
      REQUIRE(fast == slow);
    }
  // Pieces chain to the crc of the whole.
  Crc32c inc;
  inc.update(data.data(), 1000);
  inc.update(data.data() + 1000, data.size() - 1000);
  REQUIRE(inc.value() == crc32c(data));
}

TEST_CASE("crc32c: the fast paths agree with the tables at every block boundary and in pieces") {
  // Around the lengths where the paths change: the fused superblock (3 crc32 streams and
  // the carry-less folding), the three-stream tail, the single stream; at odd offsets.
  auto data = random_bytes(200000, 11);
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 2100; ++n) lengths.push_back(n);
  for (size_t base : {size_t(7232), size_t(2 * 7232), size_t(12288), size_t(65536), size_t(3 * 7232 + 768)})
    for (size_t d = base - 17; d <= base + 17; ++d) lengths.push_back(d);
  lengths.push_back(data.size() - 7);
  size_t mismatches = 0;
  for (size_t off : {size_t(0), size_t(1), size_t(7)})
    for (size_t n : lengths)
      mismatches += crc32c_update(0x9E3779B9u, data.data() + off, n) != crc32c_update_sw(0x9E3779B9u, data.data() + off, n);
  REQUIRE(mismatches == 0);
  // A 64 KiB payload fed in the uneven pieces a socket returns chains to the one-shot crc.
  std::span<const std::byte> payload(data.data() + 3, 65536);
  Crc32c pieces;
  for (size_t at = 0, k = 1; at < payload.size(); at += k, k = k * 3 + 5)
    pieces.update(payload.data() + at, std::min(k, payload.size() - at));
  REQUIRE(pieces.value() == crc32c(payload));
  REQUIRE(pieces.value() == ~crc32c_update_sw(~0u, payload.data(), payload.size()));
}

TEST_CASE("a header round-trips and is 48 little-endian bytes") {
  auto payload = random_bytes(1000, 1);
  FrameHeader h = sample_header(payload);
  HeaderBytes b = encode_header(h);
  REQUIRE(b.size() == 48);
  REQUIRE(std::memcmp(b.data(), "RSBM", 4) == 0);
  REQUIRE(b[4] == std::byte{1});
  REQUIRE(b[5] == std::byte{0});
  REQUIRE(b[8] == std::byte{0x08});  // step, least significant byte first
  REQUIRE(b[15] == std::byte{0x01});
  for (size_t i = 40; i < 48; ++i) REQUIRE(b[i] == std::byte{0});
  FrameHeader back = decode_header(b.data(), b.size(), Limits{});
  REQUIRE(back == h);
  REQUIRE(back.payload_len == 1000);
  verify_payload(back, payload);
  for (Kind k : {Kind::activation, Kind::gradient, Kind::handshake, Kind::handshake_ack,
                 Kind::shutdown, Kind::heartbeat}) {
    FrameHeader hk = h;
    hk.kind = k;
    auto bk = encode_header(hk);
    REQUIRE(decode_header(bk.data(), bk.size(), Limits{}).kind == k);
  }
}

TEST_CASE("every single-byte corruption of a header is refused with a clear Error") {
  auto payload = random_bytes(64, 2);
  HeaderBytes good = encode_header(sample_header(payload));
  for (size_t i = 0; i < kHeaderSize; ++i)
    for (uint8_t flip : {uint8_t(0x01), uint8_t(0x80), uint8_t(0xFF)}) {
      HeaderBytes bad = good;
      bad[i] ^= std::byte(flip);
      std::string e = error_of([&] { decode_header(bad.data(), bad.size(), Limits{}); });
      INFO("byte " << i << " xor " << int(flip) << ": " << e);
      if (i < 4)
        REQUIRE(has(e, "not a resbm peer or wrong port"));
      else if (i < 6)
        REQUIRE(has(e, "frame format version"));
      else if (i < 40)
        REQUIRE(has(e, "frame header corrupted in transit"));
      else
        REQUIRE(has(e, "reserved frame header byte"));
    }
}

TEST_CASE("fields that pass the header crc are still validated") {
  auto payload = random_bytes(16, 3);
  HeaderBytes b = encode_header(sample_header(payload));
  SECTION("unknown kind") {
    for (uint16_t k : {uint16_t(0), uint16_t(9), uint16_t(0xFFFF)}) {
      HeaderBytes bad = b;
      bad[6] = std::byte(k & 0xFF);
      bad[7] = std::byte(k >> 8);
      reseal_header(bad.data());
      REQUIRE(has(error_of([&] { decode_header(bad.data(), bad.size(), Limits{}); }),
                  cat("frame has unknown kind ", k)));
    }
  }
  SECTION("oversized declared length, before anything is allocated") {
    FrameHeader h = sample_header(payload);
    h.payload_len = ~uint64_t(0);  // 16 EiB: allocating it would throw or crash
    HeaderBytes bad = encode_header(h);
    REQUIRE(error_of([&] { decode_header(bad.data(), bad.size(), Limits{1000}); }) ==
            "payload of 18446744073709551615 bytes exceeds the configured maximum 1000 (fix: "
            "raise --max-frame or check the peer's config)");
    h.payload_len = 1000;
    bad = encode_header(h);
    REQUIRE(decode_header(bad.data(), bad.size(), Limits{1000}).payload_len == 1000);
    h.payload_len = 1001;
    bad = encode_header(h);
    REQUIRE(has(error_of([&] { decode_header(bad.data(), bad.size(), Limits{1000}); }),
                "payload of 1001 bytes exceeds the configured maximum 1000"));
  }
  SECTION("another version") {
    HeaderBytes bad = b;
    bad[4] = std::byte{2};
    reseal_header(bad.data());
    REQUIRE(has(error_of([&] { decode_header(bad.data(), bad.size(), Limits{}); }),
                "peer speaks frame format version 2 but this build speaks version 1"));
  }
}

TEST_CASE("garbage is not a resbm peer") {
  const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234";
  std::string e = error_of([&] {
    decode_header(reinterpret_cast<const std::byte*>(http), kHeaderSize, Limits{});
  });
  REQUIRE(has(e, "frame starts with \"GET \" instead of \"RSBM\": not a resbm peer or wrong port"));
  auto noise = random_bytes(48, 9);
  REQUIRE(has(error_of([&] { decode_header(noise.data(), noise.size(), Limits{}); }),
              "not a resbm peer or wrong port"));
}

TEST_CASE("every payload bit flip and every truncation is refused") {
  auto payload = random_bytes(40, 4);
  FrameHeader h = sample_header(payload);
  for (size_t i = 0; i < payload.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = payload;
      bad[i] ^= std::byte(1u << bit);
      REQUIRE(has(error_of([&] { verify_payload(h, bad); }), "payload corrupted in transit"));
    }
  // The whole frame cut at every offset: the header part is truncated, the payload part
  // is shorter than announced.
  HeaderBytes hb = encode_header(h);
  std::vector<std::byte> frame(hb.begin(), hb.end());
  frame.insert(frame.end(), payload.begin(), payload.end());
  for (size_t n = 0; n < frame.size(); ++n) {
    std::string e = error_of([&] {
      FrameHeader got = decode_header(frame.data(), n, Limits{});
      verify_payload(got, std::span(frame).subspan(kHeaderSize, n - kHeaderSize));
    });
    INFO("cut at " << n << ": " << e);
    if (n < kHeaderSize)
      REQUIRE(has(e, cat("frame header truncated: ", n, " of 48 bytes")));
    else
      REQUIRE(has(e, cat("frame carries ", n - kHeaderSize, " payload bytes but its header announced 40")));
  }
}
