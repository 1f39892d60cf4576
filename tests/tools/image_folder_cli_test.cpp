// `--dataset images:<dir>[@size]` from the CLI as docs/training.md describes it: class sub-folders
// become labels for --class-cond, @size is parsed strictly, eval reads the folder at the model's own
// size and says that it scores the folder's images (there is no test split). A tiny folder of PNGs
// is made on the spot; the CLI runs as a child process (tests/tools/cli_util.h).
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/image_io.h"
#include "core/safetensors.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// Two classes ("circles", "squares") of n 20x20 RGB PNGs each, with a little noise.
std::string make_class_folder(const std::string& root, int n) {
  uint32_t state = 12345;
  for (const char* cls : {"circles", "squares"}) {
    fs::create_directories(root + "/" + cls);
    for (int i = 0; i < n; ++i) {
      Image8 img{20, 20, 3, std::vector<uint8_t>(20 * 20 * 3)};
      for (size_t p = 0; p < img.pixels.size(); ++p) {
        state = state * 1664525u + 1013904223u;
        img.pixels[p] = static_cast<uint8_t>((cls[0] == 'c' ? 60 : 180) + (state >> 28));
      }
      write_png(root + "/" + cls + "/" + std::to_string(i) + ".png", img);
    }
  }
  return root;
}

std::vector<std::string> args_for(const std::string& dataset, const std::string& out) {
  std::vector<std::string> a = test::train_args("", out, 1, 0);
  for (size_t i = 0; i + 1 < a.size(); ++i)
    if (a[i] == "--dataset") a[i + 1] = dataset;
  return a;
}

}  // namespace

TEST_CASE("images:<dir>: sub-folders are classes for --class-cond; eval reads at the model's size and says what it scores",
          "[cpu][tools][data]") {
  test::TempDir dir;
  const std::string folder = make_class_folder(dir / "shapes", 4);
  const std::string out = dir / "run", ckpt = out + "/checkpoint.safetensors";
  std::vector<std::string> train = args_for("images:" + folder + "@12", out);
  train.push_back("--class-cond");
  std::string log;
  int code = test::run(train, dir / "train.log", &log);
  INFO(log);
  REQUIRE(code == 0);
  const nlohmann::json unet = nlohmann::json::parse(read_safetensors(ckpt).metadata.at("unet"));
  CHECK(unet.at("num_classes") == 2);
  CHECK(unet.at("image_size") == 12);
  CHECK(unet.at("in_channels") == 3);

  // eval on the training folder (its default) and on the folder named without @size: both read
  // the images at the model's 12x12, and say they are the folder's images, not a test split.
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{}, std::vector<std::string>{"--dataset", "images:" + folder}}) {
    std::vector<std::string> eval = {test::cli_path(), "eval", ckpt, "-n", "3", "--strata", "2", "--inversion-count",
                                     "2", "--inversion-steps", "2", "--device", "cpu", "--json", dir / "e.json"};
    eval.insert(eval.end(), extra.begin(), extra.end());
    code = test::run(eval, dir / "eval.log", &log);
    INFO(log);
    REQUIRE(code == 0);
    CHECK_THAT(log, Contains("no test split") && !Contains("test images"));
    const nlohmann::json j = nlohmann::json::parse(test::slurp_text(dir / "e.json"));
    CHECK(j.at("split") == "all");
    CHECK(j.at("images") == 3);
  }
  // The training folder is what it scored, and it says so.
  code = test::run({test::cli_path(), "eval", ckpt, "-n", "2", "--strata", "2", "--inversion-count", "0", "--device",
                    "cpu"},
                   dir / "eval2.log", &log);
  CHECK(code == 0);
  CHECK_THAT(log, Contains("trained on"));

  // A grid of classes cycled over whole rounds has a row per class: 8 images of 2 classes are 2
  // rows of 4 (in order they would be 3 columns, ceil(sqrt(8))), and cell (c, j) is image
  // c + 2 j, the j-th image of class c.
  {
    std::vector<std::string> sample = {test::cli_path(), "sample", ckpt, "--count", "8", "--steps", "2",
                                       "--upscale", "1", "--grid", dir / "rows.png", "--image-dir", dir / "rows",
                                       "--device", "cpu"};
    code = test::run(sample, dir / "sample.log", &log);
    INFO(log);
    REQUIRE(code == 0);
    const Image8 grid = read_image_u8(dir / "rows.png", 3);
    const int cell = 12 + 2;  // the image and the 2-pixel border between cells
    REQUIRE(grid.width == 4 * cell + 2);
    REQUIRE(grid.height == 2 * cell + 2);
    for (int c = 0; c < 2; ++c)
      for (int j = 0; j < 4; ++j) {
        char name[32];
        std::snprintf(name, sizeof name, "%05d.png", c + 2 * j);
        const Image8 img = read_image_u8((fs::path(dir / "rows") / name).string(), 3);
        bool same = true;
        for (int y = 0; y < 12; ++y)
          for (int x = 0; x < 12; ++x)
            for (int ch = 0; ch < 3; ++ch)
              same = same && img.pixels[(y * 12 + x) * 3 + ch] ==
                                 grid.pixels[((2 + c * cell + y) * grid.width + 2 + j * cell + x) * 3 + ch];
        CAPTURE(c, j);
        CHECK(same);
      }
  }

  // Without --class-cond the same folder trains unlabelled, every image of every sub-folder.
  code = test::run(args_for("images:" + folder + "@8", dir / "plain"), dir / "plain.log", &log);
  INFO(log);
  CHECK(code == 0);
  CHECK(nlohmann::json::parse(read_safetensors(dir / "plain/checkpoint.safetensors").metadata.at("unet"))
            .at("num_classes") == 0);
}

TEST_CASE("images:<dir>@size: a size that is not a whole number of pixels is refused naming the spec",
          "[cpu][tools][data]") {
  test::TempDir dir;
  const std::string folder = make_class_folder(dir / "shapes", 1);
  for (const std::string size : {"abc", "", "12x12", "0", "99999", "-4", "8.5"}) {
    const std::string spec = "images:" + folder + "@" + size;
    std::string log;
    const int code = test::run(args_for(spec, dir / "run"), dir / "log.txt", &log);
    INFO(log);
    CHECK(code == 1);
    CHECK_THAT(log, Contains(spec + "'") && Contains("whole number of pixels from 1 to 4096"));
    CHECK_THAT(log, !Contains("stoi"));
    CHECK_FALSE(fs::exists(dir / "run"));
  }
}
