#pragma once
// The wire format shared by every transport: a fixed 48-byte little-endian header and a
// payload. Everything a receiver sizes from the peer (the payload allocation above all) is
// validated here first, so a garbage or hostile byte stream is an Error, never a huge
// allocation or a crash.
//
//   offset  size  field
//        0     4  magic        "RSBM" (the bytes 'R','S','B','M' in this order)
//        4     2  version      kFrameVersion
//        6     2  kind         Kind
//        8     8  step         optimizer step
//       16     4  micro_batch
//       20     4  stream       boundary id
//       24     8  payload_len  bytes following the header
//       32     4  crc          crc32c of the payload
//       36     4  header_crc   crc32c of bytes [0, 36)
//       40     8  reserved     zero
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>


#include "resbm/core/crc32c.hpp"
#include "resbm/core/error.hpp"

namespace resbm::transport {

inline constexpr size_t kHeaderSize = 48;
inline constexpr uint16_t kFrameVersion = 1;
// 'R','S','B','M' read as a little-endian u32: the stream starts with the readable "RSBM".
inline constexpr uint32_t kMagic = 0x4D425352u;

enum class Kind : uint16_t {
  activation = 1,
  gradient = 2,
  handshake = 3,
  handshake_ack = 4,
  shutdown = 5,
  heartbeat = 6,
  control = 7,          // small per-step exchanges of the runner (gradient-norm reduction)
  eval_activation = 8,  // forward-only traffic of validation, kept apart from training's
};

inline const char* kind_name(Kind k) {
  switch (k) {
    case Kind::activation: return "activation";
    case Kind::gradient: return "gradient";
    case Kind::handshake: return "handshake";
    case Kind::handshake_ack: return "handshake_ack";
    case Kind::shutdown: return "shutdown";
    case Kind::heartbeat: return "heartbeat";
    case Kind::control: return "control";
    case Kind::eval_activation: return "eval_activation";
  }
  return "unknown";
}

inline bool valid_kind(uint16_t k) { return k >= 1 && k <= 8; }

// What a receiver accepts. The bound protects memory: a declared length above it is
// refused before anything is allocated.
struct Limits {
  uint64_t max_payload = uint64_t(256) << 20;
};

// The header as the program sees it. Links fill payload_len and crc from the payload they
// send; on receipt both are the validated values from the wire.
struct FrameHeader {
  Kind kind = Kind::activation;
  uint64_t step = 0;
  uint32_t micro_batch = 0;
  uint32_t stream = 0;
  uint64_t payload_len = 0;
  uint32_t crc = 0;  // crc32c of the payload

  friend bool operator==(const FrameHeader&, const FrameHeader&) = default;
};

// CRC-32C lives in core/crc32c.hpp (checkpoints use it too); the frame code names it here.
using resbm::Crc32c;
using resbm::crc32c;
using resbm::crc32c_update;
using resbm::crc32c_update_sw;

// ---------------------------------------------------------------------------------------
namespace detail {
inline void put16(std::byte* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = std::byte(v >> (8 * i));
}
inline void put32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = std::byte(v >> (8 * i));
}
inline void put64(std::byte* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = std::byte(v >> (8 * i));
}
inline uint16_t get16(const std::byte* p) { return uint16_t(uint16_t(p[0]) | uint16_t(p[1]) << 8); }
inline uint32_t get32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | uint32_t(p[i]);
  return v;
}
inline uint64_t get64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | uint64_t(p[i]);
  return v;
}
inline std::string hex32(uint32_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 7; i >= 0; --i) s += digits[(v >> (4 * i)) & 15];
  return s;
}
inline constexpr size_t kHeaderCrcOffset = 36;
inline constexpr size_t kReservedOffset = 40;
}  // namespace detail

using HeaderBytes = std::array<std::byte, kHeaderSize>;

// The first 4 bytes of a frame. A stream reader checks them as soon as they arrive: a
// client of another protocol that sends a short request and waits is then told "wrong
// port" at once, instead of timing out waiting for a 48-byte header.
inline void check_magic(const std::byte* p) {
  using namespace detail;
  if (get32(p) == kMagic) return;
  std::string seen;
  for (int i = 0; i < 4; ++i) {
    unsigned c = unsigned(p[i]);
    seen += (c >= 0x20 && c < 0x7f) ? std::string(1, char(c)) : cat("\\x", hex32(c).substr(8));
  }
  fail(cat("frame starts with \"", seen, "\" instead of \"RSBM\": not a resbm peer or wrong port"),
       "point this stage at the address and port of a resbm stage");
}

// Writes the 48 header bytes, header crc included, from `h` as given (payload_len and crc
// are taken as they are: links set them from the payload).
inline void encode_header(const FrameHeader& h, std::byte* out) {
  using namespace detail;
  std::memset(out, 0, kHeaderSize);
  put32(out + 0, kMagic);
  put16(out + 4, kFrameVersion);
  put16(out + 6, uint16_t(h.kind));
  put64(out + 8, h.step);
  put32(out + 16, h.micro_batch);
  put32(out + 20, h.stream);
  put64(out + 24, h.payload_len);
  put32(out + 32, h.crc);
  put32(out + kHeaderCrcOffset, ~crc32c_update(~0u, out, kHeaderCrcOffset));
}

inline HeaderBytes encode_header(const FrameHeader& h) {
  HeaderBytes b;
  encode_header(h, b.data());
  return b;
}

// Validates and decodes a header. Checks run in the order that names the likeliest cause
// first: a stream that does not start with the magic is not ours at all (wrong port), a
// different version is a different build, and only then is a bad header crc corruption.
// payload_len is checked against the limits last, so the caller may allocate from the
// returned header.
inline FrameHeader decode_header(const std::byte* p, size_t n, const Limits& limits) {
  using namespace detail;
  RESBM_CHECK(n >= kHeaderSize, cat("frame header truncated: ", n, " of ", kHeaderSize, " bytes"),
              "the connection dropped mid-frame; check the peer's log");
  check_magic(p);
  uint16_t version = get16(p + 4);
  RESBM_CHECK(version == kFrameVersion,
              cat("peer speaks frame format version ", version, " but this build speaks version ",
                  kFrameVersion),
              "run the same resbm version on every stage");
  uint32_t want = get32(p + kHeaderCrcOffset);
  uint32_t got = ~crc32c_update(~0u, p, kHeaderCrcOffset);
  RESBM_CHECK(want == got,
              cat("frame header corrupted in transit (header crc32c ", hex32(got), ", expected ",
                  hex32(want), ")"),
              "check the network path (NIC, proxy, cable); the frame cannot be trusted");
  uint16_t kind = get16(p + 6);
  RESBM_CHECK(valid_kind(kind), cat("frame has unknown kind ", kind),
              "run the same resbm version on every stage");
  for (size_t i = kReservedOffset; i < kHeaderSize; ++i)
    RESBM_CHECK(p[i] == std::byte{0},
                cat("reserved frame header byte ", i, " is ", unsigned(p[i]), ", not 0"),
                "run the same resbm version on every stage, or check the network path");
  FrameHeader h;
  h.kind = Kind(kind);
  h.step = get64(p + 8);
  h.micro_batch = get32(p + 16);
  h.stream = get32(p + 20);
  h.payload_len = get64(p + 24);
  h.crc = get32(p + 32);
  RESBM_CHECK(h.payload_len <= limits.max_payload,
              cat("payload of ", h.payload_len, " bytes exceeds the configured maximum ",
                  limits.max_payload),
              "raise --max-frame or check the peer's config");
  return h;
}

// Error unless `payload` is what the header announced.
inline void verify_payload(const FrameHeader& h, std::span<const std::byte> payload) {
  RESBM_CHECK(payload.size() == h.payload_len,
              cat("frame carries ", payload.size(), " payload bytes but its header announced ",
                  h.payload_len),
              "check the network path; the frame cannot be trusted");
  uint32_t got = crc32c(payload);
  RESBM_CHECK(got == h.crc,
              cat("payload corrupted in transit (", kind_name(h.kind), " frame, step ", h.step,
                  ", micro-batch ", h.micro_batch, ": crc32c ", detail::hex32(got), ", header says ",
                  detail::hex32(h.crc), ")"),
              "check the network path (NIC, proxy, cable); the frame was rejected");
}

// A header for `payload`: the given routing fields with the length and crc filled in.
inline FrameHeader seal(FrameHeader h, std::span<const std::byte> payload) {
  h.payload_len = payload.size();
  h.crc = crc32c(payload);
  return h;
}

}  // namespace resbm::transport
