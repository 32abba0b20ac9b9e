// libFuzzer entry point; the body is resbm::fuzz::handshake_one (targets.hpp). Built by run.sh:
//   clang++ -std=c++20 -fsanitize=fuzzer,address,undefined
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return resbm::fuzz::handshake_one(data, size);
}
