#pragma once
// A small JSON value for safetensors headers, metrics lines, RESULT lines and manifests.
//
// Numbers are doubles, as in JavaScript: integers are exact up to 2^53, and both the
// constructor and as_int64() refuse anything that would not be, rather than round it.
// Objects keep insertion order so the files we write read in the order they were built.
// The parser is strict RFC 8259 (no comments, no trailing commas, no NaN, UTF-8 checked)
// because these files come from disk and sockets: a malformed one is an Error with the
// byte offset, never a best guess.
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "resbm/core/error.hpp"

namespace resbm::io {

class Json;
using JsonArray = std::vector<Json>;
using JsonObject = std::vector<std::pair<std::string, Json>>;

namespace detail {
// 2^53: the largest range in which every integer has an exact double.
inline constexpr double kMaxExactInt = 9007199254740992.0;

// Length of the UTF-8 sequence starting at s[i], or 0 if it is not valid UTF-8 (overlong
// forms, surrogates and code points above U+10FFFF included).
inline size_t utf8_len(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || c > 0xF4 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xC0) != 0x80) return 0;
  if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong 3-byte
  if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // UTF-16 surrogate
  if (c == 0xF0 && b(i + 1) < 0x90) return 0;   // overlong 4-byte
  if (c == 0xF4 && b(i + 1) >= 0x90) return 0;  // above U+10FFFF
  return n;
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}
}  // namespace detail

class Json {
 public:
  enum class Type { null, boolean, number, string, array, object };

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : v_(b) {}
  template <class N>
    requires(std::is_arithmetic_v<N> && !std::is_same_v<N, bool>)
  Json(N n) {
    if constexpr (std::is_integral_v<N>) {
      // Compared as long double so that 2^64-1 does not round to 2^64 before the test.
      RESBM_CHECK(std::fabs(static_cast<long double>(n)) <= detail::kMaxExactInt,
                  cat("integer ", n, " is beyond 2^53 and cannot be stored exactly in JSON"),
                  "store it as a string");
      v_ = static_cast<double>(n);
    } else {
      v_ = static_cast<double>(n);
    }
  }
  Json(const char* s) : v_(std::string(s)) {}
  Json(std::string s) : v_(std::move(s)) {}
  Json(std::string_view s) : v_(std::string(s)) {}
  Json(JsonArray a) : v_(std::move(a)) {}
  Json(JsonObject o) : v_(std::move(o)) {}

  static Json array() { return Json(JsonArray{}); }
  static Json object() { return Json(JsonObject{}); }

  Type type() const { return Type(v_.index()); }
  bool is_null() const { return type() == Type::null; }
  bool is_bool() const { return type() == Type::boolean; }
  bool is_number() const { return type() == Type::number; }
  bool is_string() const { return type() == Type::string; }
  bool is_array() const { return type() == Type::array; }
  bool is_object() const { return type() == Type::object; }

  static const char* type_name(Type t) {
    switch (t) {
      case Type::null: return "null";
      case Type::boolean: return "a boolean";
      case Type::number: return "a number";
      case Type::string: return "a string";
      case Type::array: return "an array";
      case Type::object: return "an object";
    }
    return "?";
  }

  bool as_bool() const { return get<bool>(Type::boolean); }
  double as_number() const { return get<double>(Type::number); }
  const std::string& as_string() const { return get<std::string>(Type::string); }
  const JsonArray& as_array() const { return get<JsonArray>(Type::array); }
  JsonArray& as_array() { return get<JsonArray>(Type::array); }
  const JsonObject& as_object() const { return get<JsonObject>(Type::object); }
  JsonObject& as_object() { return get<JsonObject>(Type::object); }

  // The number as an integer; Error unless it is one exactly.
  int64_t as_int64() const {
    double d = as_number();
    RESBM_CHECK(std::nearbyint(d) == d && std::fabs(d) <= detail::kMaxExactInt,
                cat("JSON number ", dump_number(d), " is not an integer within +-2^53"),
                "write a whole number");
    return static_cast<int64_t>(d);
  }

  // Member lookup: nullptr when absent.
  const Json* find(std::string_view key) const {
    for (const auto& [k, v] : as_object())
      if (k == key) return &v;
    return nullptr;
  }
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  const Json& at(std::string_view key) const {
    const Json* v = find(key);
    RESBM_CHECK(v, cat("JSON object has no member \"", key, "\""),
                "add the member or check its spelling");
    return *v;
  }
  // Sets a member, replacing an existing one in place (its position is kept).
  Json& set(std::string key, Json value) {
    auto& o = as_object();
    for (auto& [k, v] : o)
      if (k == key) return v = std::move(value);
    o.emplace_back(std::move(key), std::move(value));
    return o.back().second;
  }
  void push_back(Json value) { as_array().push_back(std::move(value)); }
  size_t size() const {
    if (is_array()) return as_array().size();
    if (is_object()) return as_object().size();
    fail(cat("size() of JSON ", type_name(type())), "call size() on an array or an object");
  }

  friend bool operator==(const Json& a, const Json& b) { return a.v_ == b.v_; }

  // Compact text: no spaces, members in insertion order.
  std::string dump() const {
    std::string out;
    write(out);
    return out;
  }

  static Json parse(std::string_view text, int max_depth = 256);

  // Shortest text that parses back to the same double; integers without ".0".
  static std::string dump_number(double d) {
    RESBM_CHECK(std::isfinite(d), cat("cannot write ", d, " as JSON: it has no NaN or infinity"),
                "check the value for divergence, or store it as a string");
    char buf[32];
    if (std::nearbyint(d) == d && std::fabs(d) < detail::kMaxExactInt) {
      if (d == 0) return std::signbit(d) ? "-0" : "0";
      auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(d));
      return std::string(buf, r.ptr);
    }
    auto r = std::to_chars(buf, buf + sizeof buf, d);
    return std::string(buf, r.ptr);
  }

 private:
  template <class T>
  const T& get(Type want) const {
    RESBM_CHECK(type() == want, cat("JSON value is ", type_name(type()), ", not ", type_name(want)),
                "check the document against the expected layout");
    return std::get<T>(v_);
  }
  template <class T>
  T& get(Type want) {
    RESBM_CHECK(type() == want, cat("JSON value is ", type_name(type()), ", not ", type_name(want)),
                "check the document against the expected layout");
    return std::get<T>(v_);
  }

  static void write_string(std::string& out, std::string_view s) {
    out += '"';
    for (size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      size_t n = detail::utf8_len(s, i);
      RESBM_CHECK(n != 0, cat("string has invalid UTF-8 at byte ", i, " and cannot be written as JSON"),
                  "hex- or base64-encode binary data before putting it in JSON");
      if (n > 1) {
        out.append(s.substr(i, n));
      } else if (c == '"' || c == '\\') {
        out += '\\';
        out += char(c);
      } else if (c < 0x20) {
        switch (c) {
          case '\n': out += "\\n"; break;
          case '\r': out += "\\r"; break;
          case '\t': out += "\\t"; break;
          case '\b': out += "\\b"; break;
          case '\f': out += "\\f"; break;
          default: {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          }
        }
      } else {
        out += char(c);
      }
      i += n;
    }
    out += '"';
  }

  void write(std::string& out) const {
    switch (type()) {
      case Type::null: out += "null"; break;
      case Type::boolean: out += std::get<bool>(v_) ? "true" : "false"; break;
      case Type::number: out += dump_number(std::get<double>(v_)); break;
      case Type::string: write_string(out, std::get<std::string>(v_)); break;
      case Type::array: {
        out += '[';
        bool first = true;
        for (const auto& e : std::get<JsonArray>(v_)) {
          if (!first) out += ',';
          first = false;
          e.write(out);
        }
        out += ']';
        break;
      }
      case Type::object: {
        out += '{';
        bool first = true;
        for (const auto& [k, e] : std::get<JsonObject>(v_)) {
          if (!first) out += ',';
          first = false;
          write_string(out, k);
          out += ':';
          e.write(out);
        }
        out += '}';
        break;
      }
    }
  }

  std::variant<std::nullptr_t, bool, double, std::string, JsonArray, JsonObject> v_;
};

namespace detail {
class JsonParser {
 public:
  JsonParser(std::string_view s, int max_depth) : s_(s), max_depth_(max_depth) {}

  Json document() {
    RESBM_CHECK(max_depth_ >= 1, cat("JSON depth limit ", max_depth_, " is below 1"),
                "pass a depth limit of at least 1");
    ws();
    Json v = value(0);
    ws();
    if (i_ != s_.size()) error("unexpected text after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    std::string near;
    if (i_ < s_.size()) {
      unsigned char c = static_cast<unsigned char>(s_[i_]);
      static const char hex[] = "0123456789abcdef";
      if (c >= 0x20 && c < 0x7f)
        near = std::string(" (found '") + char(c) + "')";
      else
        near = std::string(" (found byte 0x") + hex[c >> 4] + hex[c & 15] + ")";
    } else {
      near = " (found end of input)";
    }
    fail(cat("malformed JSON at byte ", i_, ": ", what, near),
         "fix or regenerate the document; it must be strict JSON");
  }

  void ws() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) error(cat("expected '", word, "'"));
    i_ += word.size();
  }

  Json value(int depth) {
    if (i_ >= s_.size()) error("expected a value");
    switch (s_[i_]) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Json(string());
      case 't': literal("true"); return Json(true);
      case 'f': literal("false"); return Json(false);
      case 'n': literal("null"); return Json(nullptr);
      default: return number();
    }
  }

  void enter(int depth) {
    if (depth > max_depth_) error(cat("nesting deeper than the limit of ", max_depth_));
  }

  Json object(int depth) {
    enter(depth);
    ++i_;
    JsonObject o;
    ws();
    if (eat('}')) return Json(std::move(o));
    for (;;) {
      ws();
      if (i_ >= s_.size() || s_[i_] != '"') error("expected a string as object key");
      size_t key_at = i_;
      std::string key = string();
      for (const auto& kv : o)
        if (kv.first == key) {
          i_ = key_at;
          error(cat("duplicate object key \"", key, "\""));
        }
      ws();
      if (!eat(':')) error("expected ':' after object key");
      ws();
      Json v = value(depth);
      o.emplace_back(std::move(key), std::move(v));
      ws();
      if (eat('}')) return Json(std::move(o));
      if (!eat(',')) error("expected ',' or '}' in object");
    }
  }

  Json array(int depth) {
    enter(depth);
    ++i_;
    JsonArray a;
    ws();
    if (eat(']')) return Json(std::move(a));
    for (;;) {
      ws();
      a.push_back(value(depth));
      ws();
      if (eat(']')) return Json(std::move(a));
      if (!eat(',')) error("expected ',' or ']' in array");
    }
  }

  uint32_t hex4() {
    if (i_ + 4 > s_.size()) error("\\u escape needs 4 hex digits");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_];
      uint32_t d;
      if (c >= '0' && c <= '9') d = uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') d = uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') d = uint32_t(c - 'A' + 10);
      else error("\\u escape needs 4 hex digits");
      v = v * 16 + d;
      ++i_;
    }
    return v;
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) error("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return out;
      }
      if (c < 0x20) error("control character inside a string (escape it)");
      if (c == '\\') {
        ++i_;
        if (i_ >= s_.size()) error("unterminated escape");
        char e = s_[i_++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            size_t at = i_ - 2;
            uint32_t cp = hex4();
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (!(eat('\\') && eat('u'))) {
                i_ = at;
                error("high surrogate \\u escape without its low surrogate");
              }
              uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) {
                i_ = at;
                error("high surrogate \\u escape followed by a non-low surrogate");
              }
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              i_ = at;
              error("lone low surrogate \\u escape");
            }
            append_utf8(out, cp);
            break;
          }
          default:
            i_ -= 1;
            error("invalid escape in string");
        }
        continue;
      }
      size_t n = utf8_len(s_, i_);
      if (n == 0) error("invalid UTF-8 in string");
      out.append(s_.substr(i_, n));
      i_ += n;
    }
  }

  Json number() {
    size_t start = i_;
    auto digit = [&] { return i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9'; };
    eat('-');
    if (!digit()) error("expected a value");
    if (s_[i_] == '0') {
      ++i_;
      if (digit()) error("leading zero in a number");
    } else {
      while (digit()) ++i_;
    }
    if (eat('.')) {
      if (!digit()) error("expected a digit after the decimal point");
      while (digit()) ++i_;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (!eat('+')) eat('-');
      if (!digit()) error("expected a digit in the exponent");
      while (digit()) ++i_;
    }
    double d = 0;
    auto r = std::from_chars(s_.data() + start, s_.data() + i_, d);
    if (r.ec == std::errc::result_out_of_range) {
      // Underflow to zero is harmless; overflow would need infinity, which JSON lacks.
      bool tiny = false;
      for (size_t k = start; k < i_; ++k)
        if (s_[k] == 'e' || s_[k] == 'E') tiny = s_[k + 1] == '-';
      if (!tiny) {
        i_ = start;
        error("number is too large for a double");
      }
      d = s_[start] == '-' ? -0.0 : 0.0;
    } else if (r.ec != std::errc() || r.ptr != s_.data() + i_) {
      i_ = start;
      error("malformed number");
    }
    return Json(d);
  }

  std::string_view s_;
  int max_depth_;
  size_t i_ = 0;
};
}  // namespace detail

inline Json Json::parse(std::string_view text, int max_depth) {
  return detail::JsonParser(text, max_depth).document();
}

}  // namespace resbm::io
