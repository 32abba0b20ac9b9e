// `resbm-train --device cuda` against `resbm-train --device cpu` on the same flags: the
// first losses agree to bf16 tolerance (the GPU computes in bf16 with fp32 accumulation,
// the CPU in fp32), for the character vocabulary (65 symbols: the padded-logits path) and
// the byte one, whole and as a 2-stage pipeline with the resbm and dense codecs (the CPU's
// stage threads against the GPU's stages in one process), with AdamW and Muon; what the GPU
// loop does not support is refused by name.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "resbm/io/json.hpp"
#include "cuda/support.cuh"  // its gate skips (exit 77) where there is no GPU

using namespace resbm;
namespace fs = std::filesystem;

namespace {

const std::string kTrain = std::string(RESBM_BINARY_DIR) + "/examples/resbm-train";
// The GPU loop alone: its own flags (--profile-step, --autotune, ...) are not resbm-train's.
const std::string kTrainCuda = std::string(RESBM_BINARY_DIR) + "/examples/resbm-train-cuda";

// Runs resbm-train with `flags`, returns the exit status and the combined output.
int run(const std::string& flags, std::string* out, const std::string& binary = kTrain) {
  // A missing binary fails the test (CMake builds both before it), rather than skipping it.
  INFO(binary << " is not built: build the resbm-train and resbm-train-cuda targets");
  REQUIRE(fs::exists(binary));
  const fs::path log = fs::temp_directory_path() / ("resbm-train-cuda-test-" + std::to_string(::getpid()) + ".log");
  const std::string cmd = binary + " " + flags + " > " + log.string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream f(log);
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  fs::remove(log);
  return rc;
}

// The train_loss of each step, from a --metrics JSONL file.
std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> l;
  std::ifstream f(metrics);
  for (std::string line; std::getline(f, line);) {
    const io::Json j = io::Json::parse(line);
    if (j.contains("train_loss")) l.push_back(j.at("train_loss").as_number());
  }
  return l;
}

void compare(const std::string& tokenizer, const std::string& extra = "") {
  const fs::path dir = fs::temp_directory_path() / ("resbm-train-cuda-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string common = "--tokenizer " + tokenizer +
                             " --d-model 64 --layers 2 --heads 2 --seq 64 --batch 4 --steps 3 --warmup 1"
                             " --eval-batches 1 --optimizer adamw --seed 3 " + extra;
  std::string out;
  const int rc_cpu = run(common + " --device cpu --threads 4 --metrics " + (dir / "cpu.jsonl").string(), &out);
  INFO(out);
  REQUIRE(rc_cpu == 0);
  const int rc_gpu = run(common + " --device cuda --metrics " + (dir / "gpu.jsonl").string(), &out);
  INFO(out);
  REQUIRE(rc_gpu == 0);
  const auto cpu = losses(dir / "cpu.jsonl"), gpu = losses(dir / "gpu.jsonl");
  fs::remove_all(dir);
  REQUIRE(cpu.size() == 3);
  REQUIRE(gpu.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    const double rel = std::fabs(gpu[i] - cpu[i]) / std::fabs(cpu[i]);
    std::printf("%s %s step %zu: loss cpu %.6f cuda %.6f rel %.2e\n", tokenizer.c_str(), extra.c_str(), i + 1, cpu[i],
                gpu[i], rel);
    CHECK(rel < 5e-3);
  }
}

}  // namespace

TEST_CASE("resbm-train --device cuda: first losses as --device cpu (char and byte vocabularies)") {
  compare("char");
  compare("byte");
}

TEST_CASE("resbm-train --device cuda --optimizer muon: first losses as --device cpu (whole, and 2 stages of resbm)") {
  compare("char", "--optimizer muon");
  compare("byte", "--optimizer muon --stages 2 --codec resbm --rank 2");
}

TEST_CASE("resbm-train --device cuda --stages 2: first losses as the CPU pipeline (resbm and dense codecs)") {
  compare("char", "--stages 2 --codec resbm --rank 2 --micro-batches 2");
  compare("byte", "--stages 2 --codec dense");
}

TEST_CASE("resbm-train --device cuda refuses what it does not support, by name") {
  std::string out;
  CHECK(run("--device cuda --stages 2 --codec subspace --steps 1", &out) != 0);
  CHECK(out.find("codec 'subspace' has no GPU halves") != std::string::npos);
  CHECK(run("--device cuda --stages 2 --stage 0 --steps 1", &out) != 0);
  CHECK(out.find("--stage is not supported with --device cuda") != std::string::npos);
  CHECK(run("--device cuda --stages 5 --layers 4 --steps 1", &out) != 0);
  CHECK(out.find("exceeds the model's 4 layers") != std::string::npos);
  CHECK(run("--device cuda --batch 4 --micro-batches 3 --steps 1", &out) != 0);
  CHECK(out.find("--micro-batches 3 does not divide --batch 4") != std::string::npos);
  CHECK(run("--device cuda --optimizer sgd --steps 1", &out) != 0);
  CHECK(out.find("unknown optimizer 'sgd'") != std::string::npos);
  CHECK(run("--device cuda --save /tmp/x --steps 1", &out) != 0);
  CHECK(out.find("--save is not supported with --device cuda") != std::string::npos);
  CHECK(run("--profile-step 3 --steps 3", &out, kTrainCuda) != 0);
  CHECK(out.find("--profile-step 3 is not a step of this run (0 .. 2)") != std::string::npos);
}
