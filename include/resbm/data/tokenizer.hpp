#pragma once
// Tokenizers map text to token ids and back. Two are built in:
//   CharTokenizer: one token per distinct byte of a training corpus (65 for
//     TinyShakespeare), the smallest vocabulary that covers the data.
//   ByteTokenizer: all 256 bytes, identity; covers any input, no file needed.
// A tokenizer is saved next to a run's checkpoints because the ids only mean something
// together with it.
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "resbm/core/error.hpp"
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"

namespace resbm::data {

namespace detail {
// "'a'" for printable ASCII, "'\x07'" otherwise, so the offending byte is visible in logs.
inline std::string describe_byte(unsigned char c) {
  char buf[16];
  if (c >= 0x20 && c < 0x7f)
    std::snprintf(buf, sizeof buf, "'%c'", c);
  else
    std::snprintf(buf, sizeof buf, "'\\x%02X'", c);
  return buf;
}

inline constexpr uint64_t kMaxTokenizerFile = 1 << 20;

inline io::Json load_tokenizer_json(const std::string& path, const char* type) {
  std::string text = io::read_file(path, "tokenizer file", kMaxTokenizerFile);
  io::Json j;
  try {
    j = io::Json::parse(text);
  } catch (const Error& e) {
    fail(cat("tokenizer file '", path, "' is not valid JSON: ", e.problem()),
         "regenerate it by saving the tokenizer again");
  }
  auto bad = [&](const std::string& what) {
    fail(cat("tokenizer file '", path, "': ", what),
         "regenerate it by saving the tokenizer again");
  };
  if (!j.is_object()) bad("the document is not a JSON object");
  const io::Json* t = j.find("type");
  if (!t || !t->is_string()) bad("missing \"type\"");
  if (t->as_string() != type)
    bad(cat("it holds a \"", t->as_string(), "\" tokenizer, not a \"", type, "\" one"));
  const io::Json* v = j.find("version");
  if (!v || !v->is_number() || v->as_number() != 1)
    bad(cat("unsupported version ", v ? v->dump() : std::string("(missing)"), ", expected 1"));
  return j;
}
}  // namespace detail

class CharTokenizer {
 public:
  // The vocabulary is the sorted set of distinct bytes of `corpus`.
  static CharTokenizer build(std::string_view corpus) {
    RESBM_CHECK(!corpus.empty(), "cannot build a character tokenizer from an empty corpus",
                "pass the training text");
    std::array<bool, 256> seen{};
    for (char c : corpus) seen[static_cast<unsigned char>(c)] = true;
    std::vector<unsigned char> symbols;
    for (int b = 0; b < 256; ++b)
      if (seen[size_t(b)]) symbols.push_back(static_cast<unsigned char>(b));
    return CharTokenizer(std::move(symbols));
  }

  int vocab_size() const { return int(symbols_.size()); }
  // The byte behind each id, in id order.
  const std::vector<unsigned char>& symbols() const { return symbols_; }

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      auto c = static_cast<unsigned char>(text[i]);
      int32_t id = index_[c];
      if (id < 0)
        fail(cat("character ", detail::describe_byte(c), " at offset ", i,
                 " is not in the tokenizer's vocabulary of ", symbols_.size(), " symbols"),
             "build the tokenizer from a corpus that contains it, or use ByteTokenizer");
      ids[i] = id;
    }
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      RESBM_CHECK(ids[i] >= 0 && ids[i] < vocab_size(),
                  cat("token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ",
                      vocab_size(), ")"),
                  "decode ids produced by this tokenizer");
      out[i] = static_cast<char>(symbols_[size_t(ids[i])]);
    }
    return out;
  }

  // JSON: {"type":"char","version":1,"symbols":[10,32,...]}; bytes as numbers so any byte,
  // printable or not, survives the round trip.
  void save(const std::string& path) const {
    io::Json j = io::Json::object();
    j.set("type", "char");
    j.set("version", 1);
    io::Json syms = io::Json::array();
    for (unsigned char c : symbols_) syms.push_back(int(c));
    j.set("symbols", std::move(syms));
    io::write_file_atomic(path, j.dump() + "\n", "tokenizer file");
  }

  static CharTokenizer load(const std::string& path) {
    io::Json j = detail::load_tokenizer_json(path, "char");
    auto bad = [&](const std::string& what) {
      fail(cat("tokenizer file '", path, "': ", what),
           "regenerate it by saving the tokenizer again");
    };
    const io::Json* s = j.find("symbols");
    if (!s || !s->is_array()) bad("missing \"symbols\" array");
    if (s->size() == 0) bad("\"symbols\" is empty");
    std::vector<unsigned char> symbols;
    int prev = -1;
    for (size_t i = 0; i < s->size(); ++i) {
      const io::Json& e = s->as_array()[i];
      if (!e.is_number() || !(e.as_number() >= 0 && e.as_number() <= 255) ||
          std::nearbyint(e.as_number()) != e.as_number())
        bad(cat("symbol ", i, " is ", e.dump(), ", not a byte value 0..255"));
      int b = int(e.as_number());
      if (b <= prev) bad(cat("symbols are not strictly increasing at position ", i));
      prev = b;
      symbols.push_back(static_cast<unsigned char>(b));
    }
    return CharTokenizer(std::move(symbols));
  }

 private:
  explicit CharTokenizer(std::vector<unsigned char> symbols) : symbols_(std::move(symbols)) {
    index_.fill(-1);
    for (size_t i = 0; i < symbols_.size(); ++i) index_[symbols_[i]] = int32_t(i);
  }

  std::vector<unsigned char> symbols_;
  std::array<int32_t, 256> index_{};
};

class ByteTokenizer {
 public:
  int vocab_size() const { return 256; }

  std::vector<int32_t> encode(std::string_view text) const {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const {
    std::string out(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      RESBM_CHECK(ids[i] >= 0 && ids[i] < 256,
                  cat("token id ", ids[i], " at position ", i, " is not a byte (0..255)"),
                  "decode ids produced by ByteTokenizer");
      out[i] = static_cast<char>(ids[i]);
    }
    return out;
  }

  // Saved anyway so that a run directory always says which tokenizer its ids belong to.
  void save(const std::string& path) const {
    io::Json j = io::Json::object();
    j.set("type", "byte");
    j.set("version", 1);
    io::write_file_atomic(path, j.dump() + "\n", "tokenizer file");
  }
  static ByteTokenizer load(const std::string& path) {
    detail::load_tokenizer_json(path, "byte");
    return ByteTokenizer{};
  }
};

// What the data pipeline and the sampling CLI need from a tokenizer:
//   encode(text) -> ids, failing (Error) on input it cannot represent, never dropping it;
//   decode(ids) -> text, failing on ids outside [0, vocab_size());
//   vocab_size() -> the embedding / head width;
//   save(path) and T::load(path), so a run can be resumed or sampled with the same ids.
template <class T>
concept Tokenizer = requires(const T& t, std::string_view text, std::span<const int32_t> ids,
                             const std::string& path) {
  { t.encode(text) } -> std::same_as<std::vector<int32_t>>;
  { t.decode(ids) } -> std::same_as<std::string>;
  { t.vocab_size() } -> std::same_as<int>;
  t.save(path);
  { T::load(path) } -> std::same_as<T>;
};

static_assert(Tokenizer<CharTokenizer>);
static_assert(Tokenizer<ByteTokenizer>);

}  // namespace resbm::data
