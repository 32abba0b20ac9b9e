// Inputs the fuzzers (tests/fuzz) found to be mishandled, kept as tests. A case tagged
// Each case failed before its fix.
#include <string>

#include "resbm/transport/tcp.hpp"
#include "support/catch.hpp"

using namespace resbm;
using namespace resbm::transport;

namespace {
HandshakeReply decode(const std::string& json) {
  return decode_handshake(std::span(reinterpret_cast<const std::byte*>(json.data()), json.size()), "1.2.3.4:5");
}
}  // namespace

// fuzz_handshake, tests/fuzz/corpus/handshake/stage_wraps_modulo_2_32: "stage" and
// "n_stages" are read as int64 and narrowed to int, so 4294967298 arrives as stage 2 and
// passes verify_handshake for a peer that expects stage 2. decode_handshake should refuse
// numbers outside [0, 2^31).
TEST_CASE("handshake: a stage index beyond int is refused, not wrapped") {
  const std::string wrapped =
      R"({"run_id":"run","stage":4294967298,"n_stages":4,"config_hash":"0000000000c0ffee","ok":true})";
  std::string error;
  try {
    HandshakeReply r = decode(wrapped);
    INFO("decoded as stage " << r.peer.stage);
  } catch (const Error& e) {
    error = e.what();
  }
  REQUIRE(error.find("stage") != std::string::npos);
}

TEST_CASE("handshake: a stage count beyond int is refused, not wrapped") {
  const std::string wrapped =
      R"({"run_id":"run","stage":1,"n_stages":4294967300,"config_hash":"0000000000c0ffee","ok":true})";
  std::string error;
  try {
    decode(wrapped);
  } catch (const Error& e) {
    error = e.what();
  }
  REQUIRE(error.find("n_stages") != std::string::npos);
}
