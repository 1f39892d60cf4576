// `diffuse train` when the world gets in the way: the disk refuses a write, the output folder
// cannot exist, another run holds the folder. Each case checks the message a user sees and that
// nothing written earlier was lost. The CLI runs as a child process (tests/tools/cli_util.h).
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

int64_t checkpoint_step(const std::string& path) {
  return read_safetensors(path).tensors.at("trainer.state").to_vector_i64()[0];
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("train: a file-size limit during a checkpoint write is a clear error; the previous checkpoint survives",
          "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 64, test::next_seed());
  const std::string out = dir / "run", ckpt = out + "/checkpoint.safetensors";
  std::string log;
  REQUIRE(test::run(test::train_args(data, out, 2, 2), dir / "first.log", &log) == 0);
  REQUIRE(checkpoint_step(ckpt) == 2);
  const std::string before = test::slurp_text(ckpt);

  // Resume under RLIMIT_FSIZE below the checkpoint's size (prlimit sets it for the child only;
  // the small writes before it, the lock and the log, still fit). Without SIGXFSZ ignored, the
  // kernel would kill the run silently at the first oversized write.
  std::vector<std::string> args = {"/usr/bin/prlimit", "--fsize=" + std::to_string(before.size() / 2), "--"};
  for (const std::string& a : test::train_args(data, out, 6, 2)) args.push_back(a);
  args.push_back("--resume");
  const int code = test::run(args, dir / "limited.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("cannot write '" + ckpt + "'") && Contains("File too large") &&
                      Contains("the previous file, if any, is unchanged"));
  CHECK(test::slurp_text(ckpt) == before);
  CHECK(checkpoint_step(ckpt) == 2);
  train::load_checkpoint(ckpt, Device::cpu());
  for (const std::string& f : listing(out)) CHECK(f.find(".tmp.") == std::string::npos);

  // The limit lifted, the run resumes from the surviving checkpoint and finishes.
  std::vector<std::string> again = test::train_args(data, out, 6, 2);
  again.push_back("--resume");
  REQUIRE(test::run(again, dir / "resumed.log", &log) == 0);
  CHECK_THAT(log, Contains("resumed from " + ckpt + " at step 2"));
  CHECK(checkpoint_step(ckpt) == 6);
}

TEST_CASE("train: a file-size limit during the sample grid's PNG write is a clear error; the checkpoint is written",
          "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 64, test::next_seed());
  const std::string out = dir / "run", ckpt = out + "/checkpoint.safetensors";
  // The final grid is written after the final checkpoint. A grid of 800 samples of a half-width
  // model (2 DDIM steps, 2x upscaled: about 330 KB of PNG) is larger than that model's checkpoint
  // (about 210 KB; the test_util tiny model's is 700 KB, larger than any quick grid), so a
  // file-size limit between the two sizes fails only the PNG. The first run measures both.
  auto with_small_model = [](std::vector<std::string> args) {
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--sample-count") args[i + 1] = "800";
      if (args[i] == "--model") args[i + 1] = R"({"base_channels":4,"channel_mult":[1,2],"groups":2,"attention_resolutions":[]})";
    }
    return args;
  };
  std::string log;
  REQUIRE(test::run(with_small_model(test::train_args(data, out, 2, 0)), dir / "sizes.log", &log) == 0);
  const auto png_size = fs::file_size(out + "/samples_final.png"), ckpt_size = fs::file_size(ckpt);
  INFO("png " << png_size << " bytes, checkpoint " << ckpt_size << " bytes");
  // The test's premise: without it no limit fails only the PNG, and the test would prove nothing.
  REQUIRE(png_size > ckpt_size);
  const std::string png_before = test::slurp_text(out + "/samples_final.png");
  std::vector<std::string> limited = {"/usr/bin/prlimit", "--fsize=" + std::to_string((png_size + ckpt_size) / 2), "--"};
  for (const std::string& a : with_small_model(test::train_args(data, out, 4, 0))) limited.push_back(a);
  limited.push_back("--resume");
  const int code = test::run(limited, dir / "limited.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("cannot write '" + out + "/samples_final.png'") && Contains("File too large"));
  CHECK(test::slurp_text(out + "/samples_final.png") == png_before);  // the previous grid is intact
  CHECK(checkpoint_step(ckpt) == 4);                                    // the work is saved
  for (const std::string& f : listing(out)) CHECK(f.find(".tmp.") == std::string::npos);
}

TEST_CASE("train: an output folder that cannot be created fails before training starts", "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 64, test::next_seed());
  // Tests run as root, where permissions stop nothing: a path under a regular file cannot exist
  // for anyone.
  std::ofstream(dir / "a-file") << "x";
  const std::string out = dir / "a-file/run";
  std::string log;
  const auto t0 = std::chrono::steady_clock::now();
  const int code = test::run(test::train_args(data, out, 1000, 10), dir / "out.log", &log);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("cannot create the output folder " + out) && Contains("Not a directory"));
  CHECK_THAT(log, !Contains("train ["));  // no progress line: no step ran
  CHECK(secs < 30);
}

TEST_CASE("train: a second run on the same output folder refuses, naming the lock; the first is unharmed",
          "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 64, test::next_seed());
  const std::string out = dir / "run", ckpt = out + "/checkpoint.safetensors";
  const pid_t first = test::spawn(test::train_args(data, out, 1000000, 2), dir / "first.log");
  // Wait until the first run holds the lock and has written a checkpoint.
  for (int i = 0; i < 6000 && !fs::exists(ckpt); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(fs::exists(ckpt));

  std::string log;
  std::vector<std::string> second = test::train_args(data, out, 10, 2);
  second.push_back("--resume");
  const int code = test::run(second, dir / "second.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("is in use by another run") && Contains(out + "/.lock") &&
                      Contains("process " + std::to_string(first)));
  CHECK(::kill(first, 0) == 0);  // still running

  // SIGTERM: the first run stops at the next step boundary, saves, and exits 130.
  ::kill(first, SIGTERM);
  const int first_code = test::wait_child(first);
  // Once seen under heavy load: the first run died of SIGABRT (-6) here. Its log says why.
  INFO("first run's log:\n" << test::slurp_text(dir / "first.log"));
  CHECK(first_code == 130);
  CHECK(checkpoint_step(ckpt) > 0);
  train::load_checkpoint(ckpt, Device::cpu());
}
