#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "resbm/data/data.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::data;
namespace fs = std::filesystem;

using resbm::test::error_of;
using resbm::test::has;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

const std::string& corpus() {
  static const std::string text = read_text(RESBM_SOURCE_DIR "/examples/data/tinyshakespeare.txt");
  return text;
}

// A fresh directory per test case, removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() /
           ("resbm_test_data_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string bytes_of(const std::string& path) { return read_text(path); }
void put_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
}

}  // namespace

TEST_CASE("CharTokenizer on TinyShakespeare: 65 symbols, exact round trip") {
  REQUIRE(corpus().size() > 1000000);
  CharTokenizer tok = CharTokenizer::build(corpus());
  CHECK(tok.vocab_size() == 65);
  std::vector<int32_t> ids = tok.encode(corpus());
  REQUIRE(ids.size() == corpus().size());
  for (int32_t id : ids) REQUIRE((id >= 0 && id < 65));
  CHECK(tok.decode(ids) == corpus());
  // Ids follow byte order: '\n' is the smallest byte of the corpus.
  CHECK(tok.encode("\n")[0] == 0);
}

TEST_CASE("CharTokenizer save/load round trip and validation") {
  TempDir dir;
  CharTokenizer tok = CharTokenizer::build(corpus());
  tok.save(dir.file("tok.json"));
  CharTokenizer back = CharTokenizer::load(dir.file("tok.json"));
  CHECK(back.vocab_size() == 65);
  CHECK(back.symbols() == tok.symbols());
  CHECK(back.encode("To be, or not to be") == tok.encode("To be, or not to be"));

  // Non-printable bytes survive too.
  CharTokenizer odd = CharTokenizer::build(std::string("\x01\xff\x00z", 4));
  odd.save(dir.file("odd.json"));
  CHECK(CharTokenizer::load(dir.file("odd.json")).decode(odd.encode(std::string("\xff\x00", 2))) ==
        std::string("\xff\x00", 2));

  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("missing.json")); }), "cannot open"));
  put_bytes(dir.file("bad.json"), "{\"type\":\"char\",\"version\":1,\"symbols\":[3,2]}");
  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("bad.json")); }), "not strictly increasing"));
  put_bytes(dir.file("bad.json"), "{\"type\":\"char\",\"version\":1,\"symbols\":[300]}");
  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("bad.json")); }), "not a byte value"));
  put_bytes(dir.file("bad.json"), "{\"type\":\"char\",\"version\":2,\"symbols\":[1]}");
  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("bad.json")); }), "unsupported version"));
  put_bytes(dir.file("bad.json"), "{\"type\":\"char\",");
  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("bad.json")); }), "not valid JSON"));
  ByteTokenizer{}.save(dir.file("byte.json"));
  CHECK(has(error_of([&] { CharTokenizer::load(dir.file("byte.json")); }),
            "holds a \"byte\" tokenizer"));
  CHECK_NOTHROW(ByteTokenizer::load(dir.file("byte.json")));
}

TEST_CASE("CharTokenizer names an unknown character and its offset") {
  CharTokenizer tok = CharTokenizer::build("abc");
  std::string e = error_of([&] { tok.encode("abcz"); });
  CHECK(has(e, "character 'z' at offset 3"));
  CHECK(has(e, "fix:"));
  CHECK(has(error_of([&] { tok.encode(std::string("ab\x07", 3)); }), "'\\x07' at offset 2"));
  CHECK(has(error_of([&] { tok.decode(std::vector<int32_t>{0, 3}); }), "token id 3 at position 1"));
  CHECK(has(error_of([] { CharTokenizer::build(""); }), "empty corpus"));
}

TEST_CASE("ByteTokenizer is the identity on bytes") {
  ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  std::vector<int32_t> ids = tok.encode(all);
  for (int b = 0; b < 256; ++b) CHECK(ids[size_t(b)] == b);
  CHECK(tok.decode(ids) == all);
  CHECK(tok.vocab_size() == 256);
  CHECK(has(error_of([&] { tok.decode(std::vector<int32_t>{256}); }), "not a byte"));
}

TEST_CASE("Token shards round trip") {
  TempDir dir;
  CharTokenizer tok = CharTokenizer::build(corpus());
  std::vector<int32_t> ids = tok.encode(corpus());
  write_shard(dir.file("tiny.bin"), ids, tok.vocab_size());
  CHECK(fs::file_size(dir.file("tiny.bin")) == 24 + 2 * ids.size());
  TokenShard s = read_shard(dir.file("tiny.bin"));
  CHECK(s.vocab_size == 65);
  CHECK(s.as_int32() == ids);

  std::vector<int32_t> big = {0, 65535, 1234};
  write_shard(dir.file("big.bin"), big, 65536);
  CHECK(read_shard(dir.file("big.bin")).as_int32() == big);

  write_shard(dir.file("empty.bin"), {}, 10);
  CHECK(read_shard(dir.file("empty.bin")).tokens.empty());
  // No temp files are left behind next to the shard.
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 3);
}

TEST_CASE("Token shard writing refuses tokens the format cannot hold") {
  TempDir dir;
  std::vector<int32_t> ids = {1, 2, 70000};
  CHECK(has(error_of([&] { write_shard(dir.file("x.bin"), ids, 65536); }),
            "token 70000 at index 2 is outside the vocabulary [0, 65536) and does not fit in uint16"));
  CHECK(has(error_of([&] { write_shard(dir.file("x.bin"), std::vector<int32_t>{5}, 5); }),
            "token 5 at index 0"));
  CHECK(has(error_of([&] { write_shard(dir.file("x.bin"), std::vector<int32_t>{-1}, 5); }),
            "token -1 at index 0"));
  CHECK(has(error_of([&] { write_shard(dir.file("x.bin"), ids, 70001); }), "outside 1..65536"));
  CHECK(has(error_of([&] { write_shard(dir.file("nodir/x.bin"), std::vector<int32_t>{1}, 5); }),
            "create the directory"));
  CHECK(!fs::exists(dir.file("x.bin")));
}

TEST_CASE("Each kind of shard corruption has its own error") {
  TempDir dir;
  std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const std::string path = dir.file("s.bin");
  write_shard(path, ids, 11);
  const std::string good = bytes_of(path);
  REQUIRE(good.size() == 24 + 20);
  auto error_after = [&](const std::string& bytes) {
    put_bytes(path, bytes);
    return error_of([&] { read_shard(path); });
  };

  CHECK(has(error_of([&] { read_shard(dir.file("none.bin")); }), "does not exist"));
  CHECK(has(error_after(good.substr(0, 10)), "shorter than the 24-byte header"));
  std::string magic = good;
  magic[0] = 'X';
  CHECK(has(error_after(magic), "bad magic \"XESBMTOK\""));
  std::string version = good;
  version[8] = 2;
  CHECK(has(error_after(version), "format version 2"));
  CHECK(has(error_after(good.substr(0, good.size() - 1)), "truncated mid-token"));
  std::string bumped = good;
  bumped[16] = 11;
  CHECK(has(error_after(bumped), "declares 11 tokens but the file holds 10 (the file is truncated"));
  std::string trailing = good + std::string(4, '\0');
  CHECK(has(error_after(trailing), "count does not match the file size"));
  std::string vocab = good;
  vocab[12] = 5;  // tokens 5..10 are now out of range
  CHECK(has(error_after(vocab), "token 5 at index 4, outside its vocabulary [0, 5)"));
  std::string huge = good;
  huge[23] = 0x7f;  // a count of ~2^62 must be refused before anything is allocated
  CHECK(has(error_after(huge), "the file is truncated or the header count is wrong"));
  CHECK(error_after(good) == "<no error>");
}

TEST_CASE("split_train_val takes the first 90% and the last 10%") {
  std::vector<int32_t> t(1000);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i);
  Split s = split_train_val(t);
  CHECK(s.train.size() == 900);
  CHECK(s.val.size() == 100);
  CHECK(s.train.data() == t.data());
  CHECK(s.val[0] == 900);
  CHECK(split_train_val(t, 0.5).val.size() == 500);
  CHECK(has(error_of([&] { split_train_val(t, 1.0); }), "not strictly between 0 and 1"));
  CHECK(has(error_of([&] { split_train_val(t, 0.0); }), "not strictly between 0 and 1"));

  CharTokenizer tok = CharTokenizer::build(corpus());
  std::vector<int32_t> ids = tok.encode(corpus());
  Split c = split_train_val(ids);
  CHECK(c.train.size() + c.val.size() == ids.size());
  CHECK(c.train.size() == size_t(double(ids.size()) * 0.9));
}

TEST_CASE("BatchSampler is a pure function of seed and step") {
  std::vector<int32_t> t(5000);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i);
  const int64_t B = 4, T = 16;
  BatchSampler a(t, B, T, 1234), b(t, B, T, 1234), other(t, B, T, 99);
  std::vector<int32_t> x1(B * T), y1(B * T), x2(B * T), y2(B * T), x3(B * T), y3(B * T);

  a.batch(7, x1.data(), y1.data());
  b.batch(7, x2.data(), y2.data());
  CHECK(x1 == x2);
  CHECK(y1 == y2);
  // Asking again later (as after a resume) gives the same batch: there is no hidden state.
  a.batch(3, x3.data(), y3.data());
  a.batch(7, x2.data(), y2.data());
  CHECK(x1 == x2);
  CHECK(x1 != x3);
  other.batch(7, x3.data(), y3.data());
  CHECK(x1 != x3);

  // Each row is a contiguous window and its targets are the inputs shifted by one.
  for (int64_t r = 0; r < B; ++r)
    for (int64_t i = 0; i < T; ++i) {
      CHECK(x1[size_t(r * T + i)] == x1[size_t(r * T)] + i);
      CHECK(y1[size_t(r * T + i)] == x1[size_t(r * T + i)] + 1);
    }

  // Offsets cover the whole valid range, including the last start (len - T - 1).
  std::vector<int32_t> small(T + 3);
  for (size_t i = 0; i < small.size(); ++i) small[i] = int32_t(i);
  BatchSampler s(small, 1, T, 5);
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 200; ++step) {
    int64_t off = s.offset(step, 0);
    REQUIRE((off >= 0 && off + T + 1 <= int64_t(small.size())));
    seen.insert(off);
  }
  CHECK(seen.size() == 3);
}

TEST_CASE("Evaluation batches tile the split deterministically") {
  std::vector<int32_t> t(1000);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i);
  const int64_t B = 3, T = 10;
  BatchSampler s(t, B, T, 0);
  // 99 whole windows (the last target is token 990 + 9 + 1 = 1000 - 1), 33 batches of 3.
  CHECK(s.eval_batches() == 33);
  std::vector<int32_t> x(B * T), y(B * T), x2(B * T), y2(B * T);
  std::set<int32_t> starts;
  for (int64_t i = 0; i < s.eval_batches(); ++i) {
    s.eval_batch(i, x.data(), y.data());
    s.eval_batch(i, x2.data(), y2.data());
    CHECK(x == x2);
    for (int64_t r = 0; r < B; ++r) {
      CHECK(x[size_t(r * T)] == int32_t((i * B + r) * T));
      for (int64_t k = 0; k < T; ++k) CHECK(y[size_t(r * T + k)] == x[size_t(r * T + k)] + 1);
      starts.insert(x[size_t(r * T)]);
    }
  }
  CHECK(starts.size() == 99);  // every window visited once
  CHECK(*starts.rbegin() == 980);

  // A split that is not a whole number of batches wraps its last batch to the start.
  std::vector<int32_t> u(45);
  for (size_t i = 0; i < u.size(); ++i) u[i] = int32_t(i);
  BatchSampler w(u, 3, 10, 0);
  CHECK(w.eval_batches() == 2);  // 4 windows
  w.eval_batch(1, x.data(), y.data());
  CHECK(x[0] == 30);
  CHECK(x[10] == 5);  // window 4: offset 40 wraps modulo the 35 valid starts
  CHECK(y[19] == 15);

  // The smallest possible split still gives one batch.
  std::vector<int32_t> tiny(T + 1, 7);
  CHECK(BatchSampler(tiny, 4, T, 0).eval_batches() == 1);
}

TEST_CASE("BatchSampler refuses data shorter than one window") {
  std::vector<int32_t> t(64);
  std::string e = error_of([&] { BatchSampler(t, 2, 64, 0); });
  CHECK(has(e, "data has 64 tokens but a window of seq_len 64 needs at least 65"));
  CHECK(has(error_of([&] { BatchSampler(t, 0, 8, 0); }), "batch size 0"));
  CHECK(has(error_of([&] { BatchSampler(t, 2, 0, 0); }), "sequence length 0"));
  BatchSampler ok(t, 2, 8, 0);
  std::vector<int32_t> x(16), y(16);
  CHECK(has(error_of([&] { ok.batch(-1, x.data(), y.data()); }), "step -1"));
  CHECK(has(error_of([&] { ok.batch(0, nullptr, y.data()); }), "null"));

  // The validation share of a small corpus is what usually trips this.
  std::vector<int32_t> corpus_ids(600);
  Split sp = split_train_val(corpus_ids);
  CHECK(has(error_of([&] { BatchSampler(sp.val, 8, 64, 0); }), "needs at least 65"));
}
