#pragma once
// Command-line flags as data: each flag is a name, a help line and a target variable.
// `--help` prints them all with their defaults; an unknown flag, a missing value or a value
// that does not parse is an Error that names the flag and says to run --help.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "resbm/core/error.hpp"

namespace resbm::io {

class Cli {
 public:
  Cli(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  template <class V>
  Cli& flag(std::string name, V* target, std::string help) {
    Flag f{std::move(name), std::move(help), to_text(*target), !std::is_same_v<V, bool>, {}};
    const std::string fname = f.name;
    f.set = [target, fname](std::string_view text) { parse_into(fname, text, target); };
    flags_.push_back(std::move(f));
    return *this;
  }

  // Flags this program knows but does not take (a GPU trainer's share of a CPU trainer's
  // flags): giving one, with or without a value, is an Error "--name <why>" with `fix`;
  // --help lists them.
  Cli& refuse(std::initializer_list<const char*> names, std::string why, std::string fix) {
    for (const char* n : names) refused_.push_back({n, why, fix});
    return *this;
  }

  // Returns false when --help was printed (the caller exits 0).
  bool parse(int argc, const char* const* argv) {
    for (int i = 1; i < argc; ++i) {
      std::string_view arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_help(stdout);
        return false;
      }
      RESBM_CHECK(arg.size() > 2 && arg.substr(0, 2) == "--", cat("unexpected argument '", arg, "'"),
                  cat("flags start with --; run ", program_, " --help"));
      std::string name(arg.substr(2));
      std::string value;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      for (const Refused& r : refused_)
        RESBM_CHECK(r.name != name, cat("--", name, " ", r.why), r.fix);
      Flag* f = find(name);
      RESBM_CHECK(f, cat("unknown flag --", name), cat("run ", program_, " --help for the list"));
      if (f->takes_value && !has_value) {
        RESBM_CHECK(i + 1 < argc, cat("--", name, " needs a value"), cat("run ", program_, " --help"));
        value = argv[++i];
      } else if (!f->takes_value && !has_value) {
        value = "true";
      }
      f->set(value);
      f->given = true;
    }
    return true;
  }

  bool given(const std::string& name) const {
    for (const auto& f : flags_)
      if (f.name == name) return f.given;
    return false;
  }

  void print_help(std::FILE* out) const {
    std::fprintf(out, "%s — %s\n\nusage: %s [--flag value]...\n\n", program_.c_str(), summary_.c_str(),
                 program_.c_str());
    for (const auto& f : flags_) {
      std::string left = "  --" + f.name + (f.takes_value ? " V" : "");
      std::fprintf(out, "%-24s %s", left.c_str(), f.help.c_str());
      if (!f.def.empty() && f.takes_value) std::fprintf(out, " [default: %s]", f.def.c_str());
      std::fprintf(out, "\n");
    }
    std::fprintf(out, "  %-22s %s\n", "--help", "print this help and exit");
    for (size_t i = 0; i < refused_.size(); ++i) {  // grouped by reason, in declaration order
      if (i > 0 && refused_[i].why == refused_[i - 1].why) continue;
      std::string names;
      for (size_t j = i; j < refused_.size() && refused_[j].why == refused_[i].why; ++j)
        names += (names.empty() ? "--" : ", --") + refused_[j].name;
      std::fprintf(out, "\nrefused (\"--flag %s\"): %s\n", refused_[i].why.c_str(), names.c_str());
    }
  }

 private:
  struct Flag {
    std::string name, help, def;
    bool takes_value = true;
    std::function<void(std::string_view)> set;
    bool given = false;
  };

  struct Refused {
    std::string name, why, fix;
  };

  Flag* find(const std::string& name) {
    for (auto& f : flags_)
      if (f.name == name) return &f;
    return nullptr;
  }

  template <class V>
  static std::string to_text(const V& v) {
    if constexpr (std::is_same_v<V, std::string>) return v;
    else if constexpr (std::is_same_v<V, bool>) return v ? "true" : "false";
    else {
      std::string s = std::to_string(v);
      if constexpr (std::is_floating_point_v<V>) {  // 0.001000 -> 0.001
        while (s.size() > 1 && s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
      }
      return s;
    }
  }

  template <class V>
  static void parse_into(const std::string& name, std::string_view text, V* target) {
    const std::string t(text);
    const std::string bad = cat("--", name, " got '", t, "'");
    if constexpr (std::is_same_v<V, std::string>) {
      *target = t;
    } else if constexpr (std::is_same_v<V, bool>) {
      RESBM_CHECK(t == "true" || t == "false" || t == "1" || t == "0", cat(bad, ", not a boolean"),
                  "pass true or false");
      *target = t == "true" || t == "1";
    } else {
      size_t used = 0;
      try {
        if constexpr (std::is_floating_point_v<V>) *target = V(std::stod(t, &used));
        else if constexpr (std::is_unsigned_v<V>) *target = V(std::stoull(t, &used));
        else {
          long long v = std::stoll(t, &used);
          RESBM_CHECK(v >= (long long)std::numeric_limits<V>::min() && v <= (long long)std::numeric_limits<V>::max(),
                      cat(bad, ", out of range"), "pass a smaller number");
          *target = V(v);
        }
      } catch (const std::logic_error&) {
        used = 0;
      }
      RESBM_CHECK(used == t.size() && !t.empty(), cat(bad, ", not a number"), cat("pass a number to --", name));
    }
  }

  std::string program_, summary_;
  std::vector<Flag> flags_;
  std::vector<Refused> refused_;
};

}  // namespace resbm::io
