// `diffuse train`'s flags come from the training config's one list of fields
// (models/train/config_fields.h): --help shows each with its help text, and a value outside a
// field's range is refused naming the flag, before anything is written.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "models/train/config_fields.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

TEST_CASE("CLI: train --help shows a flag for every field of the training config, with its help", "[cpu][tools]") {
  test::TempDir dir;
  std::string log;
  REQUIRE(test::run({test::cli_path(), "train", "--help"}, dir / "help.txt", &log) == 0);
  int flags = 0;
  train::for_each_field([&](const auto& f) {
    INFO(f.key);
    if (f.flag_kind == train::FlagKind::none) {
      CHECK_THAT(log, !Contains(f.flag_name() + " "));
      return;
    }
    ++flags;
    CHECK_THAT(log, Contains(f.flag_name()) && Contains(std::string(f.help)));
  });
  CHECK(flags >= 35);
}

TEST_CASE("CLI: train refuses a flag's value outside its field's range, naming the flag", "[cpu][tools]") {
  test::TempDir dir;
  const std::vector<std::vector<std::string>> cases = {
      {"--timesteps", "1", "must be at least 2"}, {"--log-every", "0", "must be at least 1"},
      {"--lr", "-1", "must be positive"},          {"--ema-decay", "1", "must be in [0, 1)"},
      {"--beta-start", "1.5", "must be in (0, 1)"}, {"--variance", "large", "beta_tilde, beta or learned"},
      {"--super-res-aug", "1.5", "must be in [0, 1]"}, {"--super-res", "-2", "must be at least 0"},
  };
  int k = 0;
  for (const auto& c : cases) {
    const std::string out = dir / ("run" + std::to_string(k++));
    std::string log;
    const int code = test::run({test::cli_path(), "train", c[0], c[1], "--steps", "1", "--out", out}, dir / "log.txt", &log);
    INFO(c[0] << " " << c[1] << "\n" << log);
    CHECK(code != 0);
    CHECK_THAT(log, Contains(c[0]) && Contains(c[2]));
    CHECK_FALSE(fs::exists(out));
  }
}
