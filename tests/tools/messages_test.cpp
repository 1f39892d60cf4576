// What a person sees when `diffuse` refuses: one line saying what is wrong (naming the file, flag
// or key), no source file, line or failed check expression; `--verbose` adds those back for a
// developer. The CLI runs as a child process (tests/tools/cli_util.h).
#include <catch2/catch.hpp>

#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;

namespace {

// A source location as core/check.cpp writes it ("models/nn/unet.cpp:96: "), or a check's text.
bool shows_source(const std::string& text) {
  static const std::regex where(R"([A-Za-z_/]+\.(cpp|h|cu|cuh):[0-9]+)");
  return std::regex_search(text, where) || text.find("(check `") != std::string::npos;
}

}  // namespace

TEST_CASE("CLI errors a user can cause name the problem and show no source location", "[cpu][tools]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  {
    std::ofstream(dir / "garbage.safetensors") << "this is not a checkpoint";
  }
  struct Case {
    std::vector<std::string> args;
    std::string names;  // what the message must mention
  };
  const std::vector<Case> cases = {
      {{"train", "--dataset", data, "--out", dir / "a", "--steps", "1", "--model", R"({"lerning_rate": 1})"},
       "lerning_rate"},
      {{"train", "--dataset", "idx:" + (dir / "missing-images") + "," + (dir / "missing-labels"), "--out", dir / "b",
        "--steps", "1"},
       "missing-images"},
      {{"sample", dir / "none.safetensors", "--grid", dir / "g.png"}, "none.safetensors"},
      {{"sample", dir / "garbage.safetensors", "--grid", dir / "g.png"}, "garbage.safetensors"},
      {{"eval", dir / "garbage.safetensors"}, "garbage.safetensors"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {test::cli_path()};
    args.insert(args.end(), c.args.begin(), c.args.end());
    std::string log;
    const int code = test::run(args, dir / "log.txt", &log);
    INFO("diffuse " << c.args[0] << " ... " << c.names << "\n" << log);
    CHECK(code != 0);
    CHECK_THAT(log, Contains("error") && Contains(c.names));
    CHECK(!shows_source(log));
  }
}

TEST_CASE("diffuse --verbose adds the source location to an error", "[cpu][tools]") {
  test::TempDir dir;
  std::string log;
  const int code = test::run({test::cli_path(), "--verbose", "sample", dir / "none.safetensors", "--grid", dir / "g.png"},
                             dir / "log.txt", &log);
  INFO(log);
  CHECK(code != 0);
  CHECK_THAT(log, Contains("none.safetensors"));
  CHECK(shows_source(log));
}
