#pragma once
// One error type for the whole library. Every message says what was wrong and what to
// do about it: `RESBM_CHECK(cond, "what", "fix")`.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace resbm {

class Error : public std::runtime_error {
 public:
  Error(std::string what, std::string fix)
      : std::runtime_error(fix.empty() ? what : what + " (fix: " + fix + ")"),
        problem_(std::move(what)), fix_(std::move(fix)) {}
  const std::string& problem() const noexcept { return problem_; }
  const std::string& fix() const noexcept { return fix_; }

 private:
  std::string problem_, fix_;
};

// Builds a message from streamable parts: cat("d_model ", d, " is odd").
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

[[noreturn]] inline void fail(std::string what, std::string fix = {}) {
  throw Error(std::move(what), std::move(fix));
}

}  // namespace resbm

#define RESBM_CHECK(cond, what, fix)                  \
  do {                                                \
    if (!(cond)) ::resbm::fail((what), (fix));        \
  } while (0)
