// Checkpoints: round trip, the manifest's checks, and what survives a save cut short.
#include <filesystem>
#include <fstream>

#include "resbm/core/rng.hpp"
#include "resbm/io/checkpoint.hpp"
#include "resbm/optim/adamw.hpp"
#include "support/catch.hpp"

using namespace resbm;
namespace fs = std::filesystem;

namespace {

struct Model {
  ParamArena<float> arena;
  Model() {
    arena.add("blocks.0.attn.wq.weight", {8, 4}, ParamKind::matrix);
    arena.add("norm.weight", {4}, ParamKind::gain);
    arena.allocate();
  }
  void fill(uint64_t seed) {
    for (size_t i = 0; i < arena.size(); ++i) arena.params()[i] = Philox::normal(seed, 0, i);
  }
};

io::Json config(int d) {
  io::Json j = io::Json::object();
  j.set("d_model", d);
  j.set("optimizer", "adamw");
  return j;
}

std::string fresh_dir(const char* name) {
  auto d = fs::temp_directory_path() / cat("resbm-ckpt-", name, "-", ::getpid());
  fs::remove_all(d);
  return d.string();
}

// Parameters only: the arena's alignment padding is not part of a checkpoint.
bool same(ParamArena<float>& a, ParamArena<float>& b) {
  for (size_t p = 0; p < a.infos().size(); ++p)
    for (int64_t i = 0; i < a.param(p).numel(); ++i)
      if (a.param(p)[i] != b.param(p)[i]) return false;
  return true;
}

}  // namespace

TEST_CASE("checkpoint round trip, newest and explicit steps, two saves kept") {
  const auto dir = fresh_dir("roundtrip");
  Model m;
  optim::AdamW opt(m.arena, {});
  for (int step : {5, 10, 15}) {
    m.fill(uint64_t(step));
    io::save_checkpoint(dir, "stage-0", step, step, m.arena, opt.state(), config(4));
  }
  CHECK(io::checkpoint_steps(dir, "stage-0") == std::vector<int64_t>{10, 15});
  CHECK_FALSE(fs::exists(fs::path(dir) / "stage-0.step-00000005.params.safetensors"));
  Model back, want;
  optim::AdamW opt2(back.arena, {});
  auto got = io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4));
  want.fill(15);
  CHECK(got.step == 15);
  CHECK(same(back.arena, want.arena));
  got = io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4), 10);
  want.fill(10);
  CHECK(got.step == 10);
  CHECK(same(back.arena, want.arena));
  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4), 5),
                    Catch::Matchers::Contains("has no save of step 5"));
  fs::remove_all(dir);
}

TEST_CASE("a truncated, corrupted or foreign checkpoint is refused with the reason") {
  const auto dir = fresh_dir("bad");
  Model m;
  m.fill(1);
  optim::AdamW opt(m.arena, {});
  io::save_checkpoint(dir, "stage-0", 3, 3, m.arena, opt.state(), config(4));
  const auto params = fs::path(dir) / "stage-0.step-00000003.params.safetensors";
  Model back;
  optim::AdamW opt2(back.arena, {});

  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(8)),
                    Catch::Matchers::Contains("was written with d_model = 4 but this run has d_model = 8"));

  const auto size = fs::file_size(params);
  {
    std::fstream f(params, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(size - 3));
    char c = 0;
    f.read(&c, 1);
    f.seekp(std::streamoff(size - 3));
    c = char(c ^ 0x40);
    f.write(&c, 1);
  }
  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4)),
                    Catch::Matchers::Contains("is corrupted (crc32c"));
  fs::resize_file(params, size - 10);
  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4)),
                    Catch::Matchers::Contains("truncated"));
  fs::remove(params);
  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4)),
                    Catch::Matchers::Contains("is missing"));
  CHECK_THROWS_WITH(io::load_checkpoint(dir, "stage-9", back.arena, opt2.state(), config(4)),
                    Catch::Matchers::Contains("no checkpoint manifest"));
  fs::remove_all(dir);
}

TEST_CASE("a save cut short before its manifest leaves the previous checkpoint loadable") {
  const auto dir = fresh_dir("cut");
  Model m;
  optim::AdamW opt(m.arena, {});
  m.fill(7);
  io::save_checkpoint(dir, "stage-0", 7, 7, m.arena, opt.state(), config(4));
  // The next save wrote its params file, then the process died: no manifest update.
  m.fill(8);
  io::save_tensors((fs::path(dir) / "stage-0.step-00000008.params.safetensors").string(), io::named_params(m.arena));
  Model back, want;
  optim::AdamW opt2(back.arena, {});
  auto got = io::load_checkpoint(dir, "stage-0", back.arena, opt2.state(), config(4));
  want.fill(7);
  CHECK(got.step == 7);
  CHECK(same(back.arena, want.arena));
  fs::remove_all(dir);
}
