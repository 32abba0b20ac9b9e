#pragma once
// The fuzz targets' bodies, shared by the libFuzzer binaries (fuzz_frame.cpp,
// fuzz_handshake.cpp, built by run.sh with clang) and by test_fuzz_corpus.cpp, which
// replays the committed corpus through the very same functions in every ctest run.
//
// Besides "no crash, no sanitizer report", each target checks what the decoders promise:
// a header is accepted only if it re-encodes to the same 48 bytes and announces no more
// than the limit (so a receiver may allocate from it), a payload only if its crc matches,
// and a handshake only if it says what its JSON said and survives encode -> decode.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "resbm/io/json.hpp"
#include "resbm/transport/frame.hpp"
#include "resbm/transport/tcp.hpp"

namespace resbm::fuzz {

[[noreturn]] inline void broken(const char* what) {
  std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
  std::abort();
}
#define RESBM_FUZZ_ASSERT(cond) \
  do {                          \
    if (!(cond)) ::resbm::fuzz::broken(#cond); \
  } while (0)

// Input: one control byte, then a byte stream read frame after frame as a link reads it.
// Control bits 0 and 1 recompute the header / payload crc of every frame before decoding:
// random bytes almost never carry a valid crc32c, and without the fix-ups the fuzzer would
// spend its time on the first check and never reach kind, reserved bytes, length and payload.
// Bits 2-3 pick the payload limit (64 B, 4 KiB, 1 MiB, the default 256 MiB).
inline int frame_one(const uint8_t* data, size_t size) {
  using namespace transport;
  if (size == 0) return 0;
  const uint8_t control = data[0];
  const bool fix_header = control & 1, fix_payload = control & 2;
  static const uint64_t kLimits[4] = {64, 4096, uint64_t(1) << 20, Limits{}.max_payload};
  Limits limits;
  limits.max_payload = kLimits[(control >> 2) & 3];
  std::vector<std::byte> stream(size - 1);
  if (size > 1) std::memcpy(stream.data(), data + 1, size - 1);

  size_t off = 0;
  while (off < stream.size()) {
    std::byte* p = stream.data() + off;
    const size_t left = stream.size() - off;
    if (left >= 4) {
      bool magic_ok = true;
      try {
        check_magic(p);
      } catch (const Error&) {
        magic_ok = false;
      }
      RESBM_FUZZ_ASSERT(magic_ok == (std::memcmp(p, "RSBM", 4) == 0));
    }
    if (fix_header && left >= kHeaderSize) {
      uint32_t c = ~crc32c_update(~0u, p, 36);
      for (int i = 0; i < 4; ++i) p[36 + i] = std::byte(c >> (8 * i));
    }
    FrameHeader h;
    try {
      h = decode_header(p, left, limits);
    } catch (const Error& e) {
      RESBM_FUZZ_ASSERT(!e.problem().empty() && !e.fix().empty());
      return 0;
    }
    RESBM_FUZZ_ASSERT(left >= kHeaderSize);
    RESBM_FUZZ_ASSERT(h.payload_len <= limits.max_payload);
    RESBM_FUZZ_ASSERT(valid_kind(uint16_t(h.kind)));
    HeaderBytes again = encode_header(h);
    RESBM_FUZZ_ASSERT(std::memcmp(again.data(), p, kHeaderSize) == 0);
    off += kHeaderSize;

    // The payload as far as the stream holds it (a link would allocate payload_len, which
    // the assertion above bounds; allocating it here would only slow the fuzzer down).
    const size_t avail = size_t(std::min<uint64_t>(h.payload_len, stream.size() - off));
    std::span<const std::byte> have(stream.data() + off, avail);
    if (fix_payload && avail == h.payload_len) h.crc = crc32c(have);
    try {
      verify_payload(h, have);
    } catch (const Error& e) {
      RESBM_FUZZ_ASSERT(!e.problem().empty() && !e.fix().empty());
      return 0;
    }
    RESBM_FUZZ_ASSERT(avail == h.payload_len && crc32c(have) == h.crc);
    RESBM_FUZZ_ASSERT(seal(h, have) == h);
    off += avail;
  }
  return 0;
}

// Input: the payload of a handshake frame (JSON), as decode_handshake gets it.
inline int handshake_one(const uint8_t* data, size_t size) {
  using namespace transport;
  std::span<const std::byte> payload(reinterpret_cast<const std::byte*>(data), size);
  HandshakeReply r;
  try {
    r = decode_handshake(payload, "fuzz-peer:1");
  } catch (const Error& e) {
    RESBM_FUZZ_ASSERT(!e.problem().empty() && !e.fix().empty());
    return 0;
  }
  // The decoded handshake says exactly what the JSON said: stage and stage count are
  // never taken modulo 2^32 (values out of range are refused above).
  io::Json j = io::Json::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  RESBM_FUZZ_ASSERT(j.at("stage").as_int64() == r.peer.stage);
  RESBM_FUZZ_ASSERT(j.at("n_stages").as_int64() == r.peer.n_stages);
  RESBM_FUZZ_ASSERT(j.at("run_id").as_string() == r.peer.run_id);

  // What this side would answer, and what the peer would make of it.
  std::string again = encode_handshake(r.peer, r.ok, r.error);
  HandshakeReply r2 =
      decode_handshake(std::span(reinterpret_cast<const std::byte*>(again.data()), again.size()), "fuzz-peer:2");
  RESBM_FUZZ_ASSERT(r2.peer.run_id == r.peer.run_id && r2.peer.stage == r.peer.stage &&
                    r2.peer.n_stages == r.peer.n_stages && r2.peer.config_hash == r.peer.config_hash &&
                    r2.ok == r.ok && r2.error == r.error);

  // The check both ends run: accepts or explains, never anything else.
  Handshake mine;
  mine.run_id = "run";
  mine.stage = 1;
  mine.n_stages = 4;
  mine.config_hash = 0xC0FFEE;
  for (int expect : {-1, 0, 2}) {
    mine.expect_peer = expect;
    bool accepted = true;
    try {
      verify_handshake(mine, r.peer, "fuzz-peer:1");
    } catch (const Error& e) {
      RESBM_FUZZ_ASSERT(!e.problem().empty() && !e.fix().empty());
      accepted = false;
    }
    if (accepted)
      RESBM_FUZZ_ASSERT(r.peer.run_id == mine.run_id && r.peer.n_stages == mine.n_stages &&
                        r.peer.config_hash == mine.config_hash && r.peer.stage != mine.stage &&
                        r.peer.stage >= 0 && r.peer.stage < mine.n_stages);
  }
  return 0;
}

}  // namespace resbm::fuzz
