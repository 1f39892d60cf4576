// `diffuse sample --sampler langevin | pc` end to end on tiny checkpoints: they run, pc with no
// corrector steps writes the ddpm sampler's images byte for byte (also with a hybrid model's
// learned variance), and the Langevin flags are refused where they do not apply.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;
using namespace diffuse;

TEST_CASE("CLI: sample --sampler langevin and pc; pc --corrector-steps 0 is ddpm", "[cpu][tools]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  std::string log;
  for (const char* objective : {"eps", "hybrid"}) {
    INFO("objective " << objective);
    const std::string out = dir / objective;
    std::vector<std::string> train = test::train_args(data, out, 2, 0);
    train.insert(train.end(), {"--objective", objective});
    REQUIRE(test::run(train, dir / "train.log", &log) == 0);
    const std::string ckpt = out + "/checkpoint.safetensors";
    auto sample = [&](const std::string& png, std::vector<std::string> extra) {
      std::vector<std::string> args = {test::cli_path(), "sample", ckpt, "--count", "3", "--steps", "4", "--seed", "5",
                                       "--device", "cpu", "--grid", dir / png};
      args.insert(args.end(), extra.begin(), extra.end());
      const int code = test::run(args, dir / "sample.log", &log);
      INFO(log);
      return code;
    };
    CHECK(sample("ald.png", {"--sampler", "langevin", "--corrector-steps", "2", "--snr", "0.3"}) == 0);
    CHECK(sample("pc.png", {"--sampler", "pc", "--corrector-steps", "2"}) == 0);
    CHECK(sample("pc0.png", {"--sampler", "pc", "--corrector-steps", "0"}) == 0);
    CHECK(sample("ddpm.png", {"--sampler", "ddpm"}) == 0);
    CHECK(test::slurp_text(dir / "pc0.png") == test::slurp_text(dir / "ddpm.png"));
    CHECK(test::slurp_text(dir / "pc.png") != test::slurp_text(dir / "ddpm.png"));
  }
  const std::string ckpt = dir / "eps/checkpoint.safetensors";
  struct Refusal {
    std::vector<std::string> args;
    const char* says;
  };
  const Refusal refusals[] = {
      {{"--sampler", "ddim", "--snr", "0.2"}, "apply to --sampler langevin and pc"},
      {{"--corrector-steps", "3"}, "apply to --sampler langevin and pc, not ddim"},
      {{"--sampler", "langevin", "--corrector-steps", "0"}, "1 or more"},
      {{"--sampler", "pc", "--corrector-steps", "-1"}, "0 or more"},
      {{"--sampler", "pc", "--snr", "0"}, "--snr"},
  };
  for (const Refusal& r : refusals) {
    std::vector<std::string> args = {test::cli_path(), "sample", ckpt, "--count", "1", "--device", "cpu", "--grid",
                                     dir / "refused.png"};
    args.insert(args.end(), r.args.begin(), r.args.end());
    const int code = test::run(args, dir / "refused.log", &log);
    INFO(log);
    CHECK(code != 0);
    CHECK_THAT(log, Contains(r.says));
    CHECK_FALSE(fs::exists(dir / "refused.png"));
  }
}
