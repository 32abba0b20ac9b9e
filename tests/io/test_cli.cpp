// io::Cli: flags parse into their targets, bad input is an Error naming the flag, and
// refused flags (a GPU trainer's share of the CPU trainer's flags) are refused by name.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "resbm/io/cli.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using resbm::test::error_of;
using resbm::test::has;

namespace {

struct Parsed {
  int steps = 10;
  double lr = 0.5;
  bool fast = false;
  std::string name = "x";
};

io::Cli make_cli(Parsed& p) {
  io::Cli cli("prog", "a test program");
  cli.flag("steps", &p.steps, "steps").flag("lr", &p.lr, "rate").flag("fast", &p.fast, "go").flag("name", &p.name, "n");
  cli.refuse({"save", "resume"}, "is not supported here yet", "drop it");
  cli.refuse({"skip-nonfinite"}, "is CPU-only", "train on the CPU");
  return cli;
}

// Parses argv (after the program name); the Error message, or "" when it parsed.
std::string parse(Parsed& p, std::vector<const char*> args) {
  io::Cli cli = make_cli(p);
  args.insert(args.begin(), "prog");
  const std::string e = error_of([&] { cli.parse(int(args.size()), args.data()); });
  return e == "<no error>" ? "" : e;
}

}  // namespace

TEST_CASE("cli: flags parse into their targets, with a space or =, booleans without a value") {
  Parsed p;
  CHECK(parse(p, {"--steps", "30", "--lr=0.25", "--fast", "--name", "run"}) == "");
  CHECK(p.steps == 30);
  CHECK(p.lr == 0.25);
  CHECK(p.fast);
  CHECK(p.name == "run");
}

TEST_CASE("cli: an unknown flag, a missing value or a bad number is an Error naming the flag") {
  Parsed p;
  CHECK(has(parse(p, {"--stepz", "3"}), "unknown flag --stepz"));
  CHECK(has(parse(p, {"--steps"}), "--steps needs a value"));
  CHECK(has(parse(p, {"--steps", "3x"}), "--steps got '3x', not a number"));
  CHECK(has(parse(p, {"--fast=maybe"}), "not a boolean"));
}

TEST_CASE("cli: a refused flag is an Error with its reason and fix, with or without a value") {
  Parsed p;
  for (std::vector<const char*> args : {std::vector<const char*>{"--save", "ckpt"}, {"--save=ckpt"}, {"--save"}}) {
    const std::string e = parse(p, args);
    INFO(e);
    CHECK(has(e, "--save is not supported here yet"));
    CHECK(has(e, "drop it"));
  }
  CHECK(has(parse(p, {"--steps", "3", "--skip-nonfinite"}), "--skip-nonfinite is CPU-only"));
  CHECK(has(parse(p, {"--resume", "x"}), "--resume is not supported here yet"));
  CHECK(parse(p, {"--steps", "3"}) == "");  // the others still parse
}

TEST_CASE("cli: --help lists the flags with their defaults and the refused ones by reason") {
  Parsed p;
  io::Cli cli = make_cli(p);
  char* buf = nullptr;
  size_t len = 0;
  std::FILE* out = open_memstream(&buf, &len);
  REQUIRE(out != nullptr);
  cli.print_help(out);
  std::fclose(out);
  const std::string help(buf, len);
  std::free(buf);
  CHECK(has(help, "--steps V"));
  CHECK(has(help, "[default: 10]"));
  CHECK(has(help, "refused (\"--flag is not supported here yet\"): --save, --resume"));
  CHECK(has(help, "refused (\"--flag is CPU-only\"): --skip-nonfinite"));
}
