// Writes the seed corpus of the fuzz targets: valid frames and handshakes, and the edge
// cases next to them. The files are committed; rerun after a wire-format change:
//   g++ -std=c++20 -Iinclude tests/fuzz/make_corpus.cpp -o /tmp/make_corpus && /tmp/make_corpus tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "resbm/transport/frame.hpp"
#include "resbm/transport/tcp.hpp"

using namespace resbm::transport;
namespace fs = std::filesystem;

using Bytes = std::vector<unsigned char>;

void put(const fs::path& p, const Bytes& b) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  if (!f || std::fwrite(b.data(), 1, b.size(), f) != b.size()) {
    std::perror(p.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

Bytes frame(Kind k, const std::string& payload, uint64_t step = 3, uint32_t mb = 1) {
  FrameHeader h;
  h.kind = k;
  h.step = step;
  h.micro_batch = mb;
  auto span = std::as_bytes(std::span(payload.data(), payload.size()));
  HeaderBytes hb = encode_header(seal(h, span));
  Bytes out(reinterpret_cast<const unsigned char*>(hb.data()), reinterpret_cast<const unsigned char*>(hb.data()) + hb.size());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// A frame-target input: the control byte, then the stream.
Bytes input(unsigned char control, std::initializer_list<Bytes> frames) {
  Bytes out{control};
  for (const Bytes& f : frames) out.insert(out.end(), f.begin(), f.end());
  return out;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  fs::path fr = fs::path(argv[1]) / "frame", hsd = fs::path(argv[1]) / "handshake";
  fs::create_directories(fr);
  fs::create_directories(hsd);

  Handshake h;
  h.run_id = "run-1";
  h.stage = 0;
  h.n_stages = 4;
  h.config_hash = 0xC0FFEE;
  const std::string hs = encode_handshake(h);
  const std::string act(64, 'a');

  put(fr / "activation", input(0, {frame(Kind::activation, act)}));
  put(fr / "handshake", input(0, {frame(Kind::handshake, hs)}));
  put(fr / "heartbeat_then_shutdown", input(0, {frame(Kind::heartbeat, ""), frame(Kind::shutdown, "")}));
  put(fr / "every_kind", input(12, {frame(Kind::activation, "x"), frame(Kind::gradient, "yy"), frame(Kind::control, "z"),
                                    frame(Kind::eval_activation, "w"), frame(Kind::handshake_ack, hs)}));
  Bytes truncated = frame(Kind::gradient, act);
  truncated.resize(20);
  put(fr / "truncated_header", input(0, {truncated}));
  Bytes short_payload = frame(Kind::gradient, act);
  short_payload.resize(kHeaderSize + 10);
  put(fr / "truncated_payload", input(0, {short_payload}));
  put(fr / "http_request", input(0, {Bytes{'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/', '1', '.', '1', '\r', '\n'}}));
  put(fr / "tls_client_hello", input(0, {Bytes{0x16, 0x03, 0x01, 0x00, 0xf4, 0x01, 0x00, 0x00, 0xf0, 0x03, 0x03}}));
  Bytes big = frame(Kind::activation, "");
  big[24 + 7] = 0x7f;  // payload_len near 2^63, header crc fixed up by control bit 0
  put(fr / "huge_length", input(1, {big}));
  Bytes over = frame(Kind::activation, std::string(100, 'o'));
  put(fr / "over_64_byte_limit", input(0, {over}));
  Bytes kind = frame(Kind::activation, "k");
  kind[6] = 99;
  put(fr / "unknown_kind", input(1, {kind}));
  Bytes reserved = frame(Kind::activation, "r");
  reserved[45] = 1;
  put(fr / "reserved_byte", input(1, {reserved}));
  Bytes version = frame(Kind::activation, "v");
  version[4] = 2;
  put(fr / "version_2", input(1, {version}));
  Bytes corrupt = frame(Kind::activation, act);
  corrupt[kHeaderSize + 5] ^= 0x10;
  put(fr / "corrupt_payload", input(0, {corrupt}));
  put(fr / "corrupt_payload_fixed", input(2, {corrupt}));
  Bytes hcrc = frame(Kind::activation, act);
  hcrc[9] ^= 1;
  put(fr / "corrupt_header", input(0, {hcrc}));

  auto text = [](const std::string& s) { return Bytes(s.begin(), s.end()); };
  put(hsd / "valid", text(hs));
  put(hsd / "refusal", text(encode_handshake(h, false, "peer 1.2.3.4:5 (stage 1) runs config hash \"x\"\n")));
  put(hsd / "valid_stage_1", text(R"({"run_id":"run","stage":0,"n_stages":4,"config_hash":"0000000000c0ffee","ok":true})"));
  put(hsd / "missing_field", text(R"({"run_id":"run-1","stage":0,"config_hash":"0000000000c0ffee","ok":true})"));
  put(hsd / "bad_hash", text(R"({"run_id":"run-1","stage":0,"n_stages":4,"config_hash":"C0FFEE","ok":true})"));
  put(hsd / "hash_not_hex", text(R"({"run_id":"run-1","stage":0,"n_stages":4,"config_hash":"00000000000000zz","ok":true})"));
  put(hsd / "stage_fraction", text(R"({"run_id":"r","stage":1.5,"n_stages":4,"config_hash":"0000000000000000","ok":true})"));
  put(hsd / "stage_negative", text(R"({"run_id":"r","stage":-1,"n_stages":4,"config_hash":"0000000000000000","ok":true})"));
  put(hsd / "stage_huge", text(R"({"run_id":"r","stage":1e300,"n_stages":4,"config_hash":"0000000000000000","ok":true})"));
  put(hsd / "wrong_types", text(R"({"run_id":7,"stage":"0","n_stages":[],"config_hash":{},"ok":"yes"})"));
  put(hsd / "unicode_run_id", text(R"({"run_id":"r\u00e9\ud83d\ude00\u0000","stage":2,"n_stages":4,"config_hash":"ffffffffffffffff","ok":true,"error":"\t"})"));
  put(hsd / "duplicate_keys", text(R"({"run_id":"a","run_id":"b","stage":0,"n_stages":4,"config_hash":"0000000000000001","ok":true})"));
  put(hsd / "deep_nesting", text(std::string(300, '[') + std::string(300, ']')));
  put(hsd / "not_an_object", text("[1,2,3]"));
  put(hsd / "empty", Bytes{});
  put(hsd / "truncated", text(R"({"run_id":"run-1","stage":0,"n_sta)"));
  std::printf("corpus written to %s\n", argv[1]);
  return 0;
}
