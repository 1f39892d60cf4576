// A `diffuse train` refused while it is being set up (a bad dataset, a model the config cannot
// build) leaves the disk as it found it: no folder it made, no `.lock` in a folder that existed.
// The CLI runs as a child process (tests/tools/cli_util.h).
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/image_io.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) out.push_back(fs::relative(e.path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> with(std::vector<std::string> args, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == flag) {
      args[i + 1] = value;
      return args;
    }
  args.push_back(flag);
  args.push_back(value);
  return args;
}

}  // namespace

TEST_CASE("train refused during setup removes the folders it made and its lock file", "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string missing = "idx:" + (dir / "no-images") + "," + (dir / "no-labels");
  struct Case {
    const char* what;
    std::vector<std::string> args;
  };
  const std::string fresh = dir / "new/nested/run";  // three folders the run would make
  const std::vector<Case> cases = {
      {"a dataset that cannot be read", with(test::train_args(data, fresh, 1, 0), "--dataset", missing)},
      {"an image folder that does not exist", with(test::train_args(data, fresh, 1, 0), "--dataset",
                                                   "images:" + (dir / "no-such-folder"))},
      {"a model key the UNet does not have", with(test::train_args(data, fresh, 1, 0), "--model", R"({"widht": 3})")},
      {"a batch larger than the dataset", with(test::train_args(data, fresh, 1, 0), "--batch", "64")},
      {"--class-cond on an image folder without class sub-folders",
       with(with(test::train_args(data, fresh, 1, 0), "--dataset", "images:" + (dir / "flat") + "@8"), "--class-cond",
            "")},
  };
  fs::create_directories(dir / "flat");
  write_png(dir / "flat/a.png", Image8{8, 8, 3, std::vector<uint8_t>(8 * 8 * 3, 100)});
  // An existing folder with a file of its own: it stays exactly as it was.
  const std::string existing = dir / "existing";
  fs::create_directories(existing + "/keep");
  std::ofstream(existing + "/notes.txt") << "mine";
  const std::vector<std::string> before = listing(existing);
  for (const Case& c : cases) {
    for (const std::string& out : {fresh, existing}) {
      std::vector<std::string> args = with(c.args, "--out", out);
      args.erase(std::remove(args.begin(), args.end(), std::string()), args.end());
      std::string log;
      const int code = test::run(args, dir / "log.txt", &log);
      INFO(c.what << " into " << out << "\n" << log);
      CHECK(code == 1);
      CHECK_FALSE(fs::exists(dir / "new"));
      CHECK(listing(existing) == before);
    }
  }
  // The same folder then takes a good run, which keeps what it wrote.
  std::string log;
  REQUIRE(test::run(test::train_args(data, fresh, 1, 0), dir / "ok.log", &log) == 0);
  CHECK(fs::exists(fresh + "/checkpoint.safetensors"));
}
