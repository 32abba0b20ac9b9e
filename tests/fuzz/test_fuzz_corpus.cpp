// Replays the committed fuzz corpus (seeds and the reproducers of fixed crashes) through
// the fuzz targets' own bodies, so that every ctest run, sanitizer builds included,
// exercises them without clang or libFuzzer. An invariant violation aborts the test.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "targets.hpp"

namespace fs = std::filesystem;

namespace {

template <class F>
size_t replay(const std::string& target, F&& one) {
  fs::path dir = fs::path(RESBM_SOURCE_DIR) / "tests" / "fuzz" / "corpus" / target;
  REQUIRE(fs::is_directory(dir));
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    INFO(f.string());
    REQUIRE(one(bytes.data(), bytes.size()) == 0);
  }
  return files.size();
}

}  // namespace

TEST_CASE("fuzz corpus: frames") { REQUIRE(replay("frame", resbm::fuzz::frame_one) >= 10); }

TEST_CASE("fuzz corpus: handshakes") { REQUIRE(replay("handshake", resbm::fuzz::handshake_one) >= 10); }
