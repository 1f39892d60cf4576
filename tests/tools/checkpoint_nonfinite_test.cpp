// A checkpoint whose tensors hold NaN or Inf is refused on load, naming the tensor: by sample, eval,
// train --resume and load_checkpoint (the C API's loader); --allow-nonfinite loads it with a
// warning. The CLI runs as a child process (tests/tools/cli_util.h).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;

namespace {

// A copy of `from` at `to` with one value of tensor `name` replaced by `value`.
void damage(const std::string& from, const std::string& to, const std::string& name, float value) {
  SafeTensors st = read_safetensors(from);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (auto& [n, t] : st.tensors) {
    Tensor c = t.clone();
    if (n == name) c.data<float>()[c.numel() / 2] = value;
    tensors.emplace_back(n, c);
  }
  write_safetensors_atomic(to, tensors, st.metadata);
}

}  // namespace

TEST_CASE("a checkpoint holding NaN or Inf is refused naming the tensor, or loaded with --allow-nonfinite",
          "[cpu][tools][reliability]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string out = dir / "run", good = out + "/checkpoint.safetensors";
  std::string log;
  REQUIRE(test::run(test::train_args(data, out, 2, 0), dir / "train.log", &log) == 0);
  const std::string nan_ckpt = dir / "nan.safetensors", inf_ckpt = dir / "inf.safetensors";
  damage(good, nan_ckpt, "ema.down.0.res.0.conv1.weight", std::numeric_limits<float>::quiet_NaN());
  damage(good, inf_ckpt, "model.out_conv.bias", std::numeric_limits<float>::infinity());

  // In process: the loader every path shares.
  CHECK_NOTHROW(train::load_checkpoint(good, Device::cpu()));
  CHECK_THROWS_WITH(train::load_checkpoint(nan_ckpt, Device::cpu()),
                    Contains("ema.down.0.res.0.conv1.weight") && Contains("NaN or Inf"));
  CHECK_THROWS_WITH(train::load_checkpoint(inf_ckpt, Device::cpu(), false), Contains("model.out_conv.bias"));
  const train::LoadedModel m = train::load_checkpoint(nan_ckpt, Device::cpu(), true, /*allow_nonfinite=*/true);
  CHECK(m.nonfinite == std::vector<std::string>{"ema.down.0.res.0.conv1.weight"});
  CHECK(train::load_checkpoint(good, Device::cpu()).nonfinite.empty());

  const std::vector<std::string> sample = {test::cli_path(), "sample", nan_ckpt, "-n", "2", "--steps", "2",
                                           "--device", "cpu", "--grid", dir / "g.png"};
  int code = test::run(sample, dir / "s.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("nan.safetensors") && Contains("ema.down.0.res.0.conv1.weight") &&
                      Contains("--allow-nonfinite"));
  CHECK_FALSE(std::filesystem::exists(dir / "g.png"));

  std::vector<std::string> allowed = sample;
  allowed.push_back("--allow-nonfinite");
  code = test::run(allowed, dir / "s2.log", &log);
  INFO(log);
  CHECK(code == 0);
  CHECK_THAT(log, Contains("warning") && Contains("ema.down.0.res.0.conv1.weight"));

  code = test::run({test::cli_path(), "eval", inf_ckpt, "--dataset", data, "-n", "2", "--strata", "2",
                    "--inversion-count", "0", "--device", "cpu"},
                   dir / "e.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("model.out_conv.bias") && Contains("NaN or Inf"));

  // --resume reads every tensor (weights, EMA, AdamW moments) and refuses the same way.
  damage(good, good, "opt.m.conv_in.weight", std::numeric_limits<float>::quiet_NaN());
  std::vector<std::string> resume = test::train_args(data, out, 4, 0);
  resume.push_back("--resume");
  code = test::run(resume, dir / "r.log", &log);
  INFO(log);
  CHECK(code == 1);
  CHECK_THAT(log, Contains("opt.m.conv_in.weight") && Contains("cannot resume"));
}
