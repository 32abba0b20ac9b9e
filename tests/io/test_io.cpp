#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "resbm/io/io.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::io;
namespace fs = std::filesystem;

using resbm::test::error_of;
using resbm::test::has;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
void put_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
}

struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() /
           ("resbm_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

uint64_t le64(const std::string& b, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(static_cast<unsigned char>(b[at + size_t(i)])) << (8 * i);
  return v;
}
std::string le64_bytes(uint64_t v) {
  std::string b(8, '\0');
  for (int i = 0; i < 8; ++i) b[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return b;
}

}  // namespace

TEST_CASE("JSON round trips through the compact writer") {
  Json doc = Json::object();
  doc.set("z", 1);
  doc.set("a", -2.5);
  doc.set("null", nullptr);
  doc.set("t", true);
  doc.set("s", "quote\" backslash\\ nl\n tab\t bell\x07 \xc3\xa9");
  doc.set("list", JsonArray{Json(1), Json("two"), Json::array(), Json::object()});
  std::string text = doc.dump();
  // Insertion order is kept; integers have no ".0"; control characters are escaped.
  CHECK(text ==
        "{\"z\":1,\"a\":-2.5,\"null\":null,\"t\":true,"
        "\"s\":\"quote\\\" backslash\\\\ nl\\n tab\\t bell\\u0007 \xc3\xa9\","
        "\"list\":[1,\"two\",[],{}]}");
  Json back = Json::parse(text);
  CHECK(back == doc);
  CHECK(back.dump() == text);
  CHECK(back.at("s").as_string() == doc.at("s").as_string());

  // Doubles come back bit-identical, integers print as integers.
  for (double d : {0.1, 1.0 / 3.0, 6.02214076e23, -1e-300, 123456789.125, 4e15,
                   std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max()}) {
    Json j = Json::parse(Json(d).dump());
    CHECK(j.as_number() == d);
  }
  CHECK(Json(1000000).dump() == "1000000");
  CHECK(Json(-42).dump() == "-42");
  CHECK(Json(int64_t(9007199254740992)).dump() == "9007199254740992");
  CHECK(Json(3.0).dump() == "3");
  CHECK(Json::parse("1e2").as_int64() == 100);
  CHECK(Json::parse(" [ 1 , 2 ] ").size() == 2);
  CHECK(Json::parse("\"\\ud83d\\ude00\\u00e9\\/\"").as_string() == "\xf0\x9f\x98\x80\xc3\xa9/");
  CHECK(Json::parse("1e-400").as_number() == 0.0);

  CHECK(has(error_of([] { Json(uint64_t(1) << 60); }), "beyond 2^53"));
  CHECK(has(error_of([] { Json(NAN).dump(); }), "no NaN or infinity"));
  CHECK(has(error_of([] { Json(std::string("\xff")).dump(); }), "invalid UTF-8"));
  CHECK(has(error_of([] { Json::parse("2.5").as_int64(); }), "not an integer"));
  CHECK(has(error_of([] { Json::parse("{}").at("k"); }), "no member \"k\""));
  CHECK(has(error_of([] { Json::parse("[]").as_string(); }), "JSON value is an array, not a string"));
}

TEST_CASE("JSON parser rejects malformed input with a byte offset") {
  auto err = [](std::string_view s) { return error_of([&] { Json::parse(s); }); };
  CHECK(has(err(""), "at byte 0: expected a value"));
  CHECK(has(err("{\"a\":1,}"), "at byte 7: expected a string as object key"));
  CHECK(has(err("[1,2"), "at byte 4: expected ',' or ']' in array"));
  CHECK(has(err("{\"a\" 1}"), "at byte 5: expected ':' after object key"));
  CHECK(has(err("[1] x"), "at byte 4: unexpected text after the JSON value"));
  CHECK(has(err("01"), "leading zero"));
  CHECK(has(err("1."), "digit after the decimal point"));
  CHECK(has(err("-"), "expected a value"));
  CHECK(has(err("1e400"), "too large for a double"));
  CHECK(has(err("NaN"), "expected a value"));
  CHECK(has(err("tru"), "expected 'true'"));
  CHECK(has(err("\"abc"), "unterminated string"));
  CHECK(has(err("\"a\nb\""), "at byte 2: control character"));
  CHECK(has(err("\"\\x\""), "invalid escape"));
  CHECK(has(err("\"\\ud800\""), "without its low surrogate"));
  CHECK(has(err("\"\xc3\""), "invalid UTF-8"));
  CHECK(has(err("{\"a\":1,\"a\":2}"), "duplicate object key \"a\""));
  CHECK(has(err("/* c */ 1"), "expected a value"));
  std::string deep(300, '[');
  deep += std::string(300, ']');
  CHECK(has(err(deep), "deeper than the limit of 256"));
  CHECK_NOTHROW(Json::parse(std::string(200, '[') + std::string(200, ']')));
  CHECK(has(err("[1]"), "<no error>"));
}

TEST_CASE("safetensors round trip with metadata") {
  TempDir dir;
  std::vector<float> a(2 * 3), b(5), empty;
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f - 1.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = float(i) * 1e-3f;
  const std::string path = dir.file("ckpt.safetensors");
  save_safetensors(path,
                   {{"layers.0.w", Tensor<const float>(a.data(), {2, 3})},
                    {"norm", Tensor<const float>(b.data(), {5})},
                    {"nothing", Tensor<const float>(empty.data(), {0, 4})}},
                   {{"step", "120"}, {"config", "{\"d\":8}"}});

  SafetensorsFile f = load_safetensors(path);
  CHECK(f.names() == std::vector<std::string>{"layers.0.w", "norm", "nothing"});
  CHECK(f.metadata().at("step") == "120");
  CHECK(f.metadata().at("config") == "{\"d\":8}");
  CHECK(f.contains("norm"));
  CHECK(!f.contains("missing"));
  CHECK(f.shape("layers.0.w") == std::vector<int64_t>{2, 3});

  std::vector<float> a2(6), b2(5);
  f.read_into("layers.0.w", Tensor<float>(a2.data(), {2, 3}));
  f.read_into("norm", Tensor<float>(b2.data(), {5}));
  CHECK(a2 == a);
  CHECK(b2 == b);
  CHECK_NOTHROW(f.read_into("nothing", Tensor<float>(nullptr, {0, 4})));

  CHECK(has(error_of([&] { f.read_into("layers.0.w", Tensor<float>(a2.data(), {3, 2})); }),
            "tensor 'layers.0.w' has shape [2, 3] in '"));
  CHECK(has(error_of([&] { f.read_into("layers.0.w", Tensor<float>(a2.data(), {3, 2})); }),
            "but the destination has shape [3, 2]"));
  CHECK(has(error_of([&] { f.read_into("missing", Tensor<float>(a2.data(), {6})); }),
            "has no tensor 'missing'"));
  CHECK(has(error_of([&] {
              save_safetensors(path, {{"x", Tensor<const float>(a.data(), {6})},
                                      {"x", Tensor<const float>(a.data(), {6})}});
            }),
            "tensor 'x' is saved twice"));
  // The failed save left the previous checkpoint intact.
  CHECK(load_safetensors(path).names().size() == 3);
}

TEST_CASE("safetensors byte layout matches the format") {
  TempDir dir;
  const std::string path = dir.file("tiny.safetensors");
  float v[3] = {1.0f, -2.0f, 0.25f};
  save_safetensors(path, {{"w", Tensor<const float>(v, {1, 3})}}, {{"k", "v"}});
  std::string bytes = read_bytes(path);
  uint64_t n = le64(bytes, 0);
  CHECK(n % 8 == 0);
  REQUIRE(bytes.size() == 8 + n + 12);
  std::string header = bytes.substr(8, n);
  CHECK(header.find_last_not_of(' ') + 1 ==
        std::string("{\"__metadata__\":{\"k\":\"v\"},\"w\":{\"dtype\":\"F32\",\"shape\":[1,3],"
                    "\"data_offsets\":[0,12]}}")
            .size());
  CHECK(header.rfind("{\"__metadata__\":{\"k\":\"v\"},\"w\":{\"dtype\":\"F32\",\"shape\":[1,3],"
                     "\"data_offsets\":[0,12]}}",
                     0) == 0);
  Json h = Json::parse(header);  // trailing spaces are whitespace
  CHECK(h.at("w").at("data_offsets").as_array()[1].as_int64() == 12);
  float back[3];
  std::memcpy(back, bytes.data() + 8 + n, 12);
  CHECK(back[0] == 1.0f);
  CHECK(back[1] == -2.0f);
  CHECK(back[2] == 0.25f);
}

TEST_CASE("safetensors loading rejects damaged files with clear errors") {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::vector<float> a(16, 1.5f);
  save_safetensors(path, {{"a", Tensor<const float>(a.data(), {4, 4})},
                          {"b", Tensor<const float>(a.data(), {2})}});
  const std::string good = read_bytes(path);
  const uint64_t n = le64(good, 0);
  auto load_err = [&](const std::string& bytes) {
    put_bytes(path, bytes);
    return error_of([&] { load_safetensors(path); });
  };
  // A file whose header is `json` (padded) followed by `data_bytes` zero bytes.
  auto with_header = [](std::string json, size_t data_bytes) {
    json.append((8 - json.size() % 8) % 8, ' ');
    return le64_bytes(json.size()) + json + std::string(data_bytes, '\0');
  };

  CHECK(load_err(good) == "<no error>");
  CHECK(has(error_of([&] { load_safetensors(dir.file("none.safetensors")); }), "does not exist"));
  CHECK(has(load_err(good.substr(0, 5)), "shorter than its 8-byte header length"));
  CHECK(has(load_err(good.substr(0, good.size() - 4)),
            "is truncated: tensor 'b' ends at data byte 72 but the data section has 68 bytes"));
  CHECK(has(load_err(le64_bytes(good.size()) + good.substr(8)),
            "but only " + std::to_string(good.size() - 8) + " bytes follow"));
  CHECK(has(load_err(le64_bytes(uint64_t(1) << 40) + good.substr(8)), "above the 100 MB limit"));
  std::string corrupt = good;
  corrupt[8 + 5] = '#';
  CHECK(has(load_err(corrupt), "has a corrupt header: malformed JSON at byte 5"));

  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[20],\"data_offsets\":[0,80]}}", 8)),
            "ends at data byte 80 but the data section has 8 bytes"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12)),
            "has 12 bytes of data but shape [2] of F32 needs 8"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8)),
            "unknown dtype \"Q4\""));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                 12)),
            "overlaps the previous tensor"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16)),
            "belong to no tensor"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12)),
            "trailing bytes"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8)),
            "shape entry that is not a size"));
  CHECK(has(load_err(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8)),
            "end before they begin"));
  CHECK(has(load_err(with_header("[1]", 0)), "header is not a JSON object"));
  CHECK(has(load_err(with_header("{\"__metadata__\":{\"k\":1}}", 0)), "metadata value \"k\" is not a string"));

  // A BF16 tensor from another tool loads, and only reading it as F32 fails.
  put_bytes(path, with_header("{\"h\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4));
  SafetensorsFile f(path);
  float out[2];
  CHECK(has(error_of([&] { f.read_into("h", Tensor<float>(out, {2})); }), "is BF16 but read_into reads F32"));
  (void)n;
}

TEST_CASE("MetricsLog writes one flushed JSON object per line") {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  {
    MetricsLog log(path);
    log.log({{"step", 1}, {"loss", 4.25}, {"lr", 3e-4}});
    // Flushed: visible to another reader before the log is closed.
    CHECK(read_bytes(path) == "{\"step\":1,\"loss\":4.25,\"lr\":3e-04}\n");
    Json rec = Json::object();
    rec.set("step", 2);
    rec.set("note", "eval\nline");
    log.write(rec);
    CHECK(has(error_of([&] { log.write(Json(3)); }), "metrics record is a number, not an object"));
  }
  {
    MetricsLog more(path, /*append=*/true);
    more.log({{"step", 3}});
  }
  std::ifstream in(path);
  std::string line;
  std::vector<Json> lines;
  while (std::getline(in, line)) lines.push_back(Json::parse(line));
  REQUIRE(lines.size() == 3);
  CHECK(lines[1].at("note").as_string() == "eval\nline");
  CHECK(lines[2].at("step").as_int64() == 3);

  CHECK(has(error_of([&] { MetricsLog(dir.file("no/such/dir/m.jsonl")); }),
            "cannot open metrics log"));
}

TEST_CASE("Progress prints plain lines every k steps when not on a terminal") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f);
  {
    Progress p(100, f);
    CHECK(!p.is_tty());
    CHECK(p.every() == 5);
    for (int64_t s = 1; s <= 100; ++s) p.update(s, 3.0 - double(s) * 0.01, 12345.0, double(s) * 0.5);
    p.finish();
  }
  std::rewind(f);
  std::string text;
  char buf[4096];
  while (size_t r = std::fread(buf, 1, sizeof buf, f)) text.append(buf, r);
  std::fclose(f);
  CHECK(text.find('\r') == std::string::npos);
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  REQUIRE(lines.size() == 20);
  CHECK(lines[0] == "step 5/100 | loss 2.9500 | 12.3k tok/s | elapsed 3s | ETA 48s");
  CHECK(has(lines.back(), "step 100/100"));
  CHECK(has(lines.back(), "ETA 0s"));

  // An explicit interval, and a run stopped between two reports still shows where it ended.
  std::FILE* g = std::tmpfile();
  {
    Progress p(1000, g, 3);
    for (int64_t s = 1; s <= 7; ++s) p.update(s, 1.0, 2e6, 3700.0);
    p.finish();
  }
  std::rewind(g);
  text.clear();
  while (size_t r = std::fread(buf, 1, sizeof buf, g)) text.append(buf, r);
  std::fclose(g);
  CHECK(has(text, "step 3/1000"));
  CHECK(has(text, "step 6/1000"));
  CHECK(has(text, "step 7/1000 | loss 1.0000 | 2.00M tok/s | elapsed 1h01m40s"));

  CHECK(has(error_of([] { Progress(0, stderr); }), "at least 1 step"));
  CHECK(has(error_of([] { Progress(10, stderr).update(11, 0, 0, 0); }), "outside [0, 10]"));
}
