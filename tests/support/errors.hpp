#pragma once
// What the tests ask of an error: its message, matched by substring so a test pins the part
// that tells its case apart from the others.
#include <string>

#include "resbm/core/error.hpp"

namespace resbm::test {

// The message of the resbm::Error that f throws, or "<no error>".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace resbm::test
