// Every enumerated flag and config key accepts exactly its names and refuses anything else with
// the list of valid ones, through the real CLI (a child process, tests/tools/cli_util.h); the
// name tables themselves round-trip; `--spacing logsnr` reaches the log-SNR grid.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/enum_names.h"
#include "core/safetensors.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

template <class E>
void check_table_round_trips() {
  for (const auto& e : enum_names<E>()) {
    CHECK(parse_enum<E>(e.name, "thing") == e.value);
    CHECK(enum_name(e.value) == e.name);
  }
  // No near misses: case, padding, the empty string.
  const std::string first(enum_names<E>()[0].name);
  std::string upper = first;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const std::string& bad : {upper, first + " ", std::string()}) {
    if (bad == first) continue;
    CHECK_THROWS_WITH(parse_enum<E>(bad, "thing"), Contains("unknown thing '" + bad + "'") && Contains(enum_list<E>()));
  }
}

}  // namespace

TEST_CASE("name tables: every name parses to its value and back; near misses are refused with the list",
          "[cpu][tools][enum]") {
  check_table_round_trips<diffusion::Spacing>();
  check_table_round_trips<diffusion::SamplerKind>();
  check_table_round_trips<train::Objective>();
  check_table_round_trips<train::ScheduleKind>();
  check_table_round_trips<train::LossWeight>();
  check_table_round_trips<train::TSampling>();
  check_table_round_trips<nn::InitScheme>();
  check_table_round_trips<nn::TimeEmbeddingKind>();
  check_table_round_trips<OnOff>();
  CHECK(enum_list<diffusion::Spacing>() == "linspace, leading, trailing, logsnr or karras");
  CHECK(diffusion::parse_spacing("logsnr") == diffusion::Spacing::logsnr);
  CHECK_THROWS_WITH(diffusion::parse_sampler("dpmpp_2m"), Contains("unknown sampler 'dpmpp_2m'") && Contains("dpm++2m"));
  for (const char* ok : {"cpu", "cuda", "cuda:0", "cuda:12", "auto"}) CHECK_NOTHROW(train::check_device_spec(ok));
  for (const char* bad : {"gpu", "CPU", "cuda:", "cuda:x", "cuda0", "", "cuda:-1"})
    CHECK_THROWS_WITH(train::check_device_spec(bad), Contains("cpu, cuda, cuda:N or auto"));
}

TEST_CASE("the training config refuses unknown names of its enumerated keys, listing the valid ones",
          "[cpu][tools][enum]") {
  using train::TrainConfig;
  struct Case {
    nlohmann::json j;
    std::vector<std::string> names;
  };
  const std::vector<Case> cases = {
      {{{"objective", "score"}}, {"'score'", "eps, x0, v, hybrid or vdm"}},
      {{{"schedule", "quadratic"}}, {"'quadratic'", "linear, scaled_linear, cosine, custom or learned"}},
      {{{"loss_weight", "minsnr"}}, {"'minsnr'", "none or min-snr"}},
      {{{"t_sampling", "lossaware"}}, {"'lossaware'", "uniform or importance"}},
      {{{"device", "gpu"}}, {"'gpu'", "cpu, cuda, cuda:N or auto"}},
      {{{"preset", "huge"}}, {"'huge'", "tiny", "imagenet64"}},
      {{{"schedule", "learned"}}, {"learned", "objective vdm"}},
      {{{"objective", "vdm"}, {"schedule", "cosine"}}, {"cosine", "learned"}},
  };
  for (const Case& c : cases) {
    INFO(c.j.dump());
    try {
      TrainConfig::from_json(c.j);
      FAIL("accepted");
    } catch (const Error& e) {
      for (const std::string& n : c.names) CHECK_THAT(e.message(), Contains(n));
    }
  }
  CHECK(TrainConfig::from_json({{"objective", "vdm"}, {"schedule", "learned"}}).schedule == train::ScheduleKind::learned);
}

TEST_CASE("CLI: each enumerated flag and config key refuses a bad value with the valid list", "[cpu][tools][enum]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string ckpt = dir / "none.safetensors";  // flags are refused before it is opened
  const std::string spacings = "linspace, leading, trailing, logsnr or karras";
  auto config = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> names;  // the message lists these
  };
  const std::vector<Case> cases = {
      {{"sample", ckpt, "--spacing", "foo"}, {"--spacing", "'foo'", spacings}},
      {{"sample", ckpt, "--spacing", "LINSPACE"}, {"--spacing", spacings}},
      {{"sample", ckpt, "--spacing", ""}, {"--spacing", spacings}},
      {{"sample", ckpt, "--sampler", "dpmpp_2m"}, {"--sampler", "ddpm, ddim, dpm++2m, euler, heun, vdm, langevin or pc"}},
      {{"sample", ckpt, "--device", "gpu"}, {"--device", "cpu, cuda, cuda:N or auto"}},
      {{"sample", ckpt, "--cuda-graph", "ON"}, {"--cuda-graph", "on or off"}},
      {{"eval", ckpt, "--device", "cuda:x"}, {"--device", "cpu, cuda, cuda:N or auto"}},
      {{"train", "--objective", "score"}, {"--objective", "eps, x0, v, hybrid or vdm"}},
      {{"train", "--schedule", "quadratic"}, {"--schedule", "linear, scaled_linear, cosine, custom or learned"}},
      {{"train", "--loss-weight", "minsnr"}, {"--loss-weight", "none or min-snr"}},
      {{"train", "--t-sampling", "Importance"}, {"--t-sampling", "uniform or importance"}},
      {{"train", "--device", "gpu"}, {"--device", "cpu, cuda, cuda:N or auto"}},
      {{"train", "--cuda-graph", "yes"}, {"--cuda-graph", "on or off"}},
      {{"train", "--preset", "huge"}, {"--preset", "tiny", "imagenet64"}},
      {{"train", "--config", config("obj.json", R"({"objective": "score"})")}, {"objective", "eps, x0, v, hybrid or vdm"}},
      {{"train", "--config", config("sch.json", R"({"schedule": "Linear"})")}, {"schedule", "linear, scaled_linear, cosine, custom or learned"}},
      {{"train", "--config", config("lw.json", R"({"loss_weight": "snr"})")}, {"loss_weight", "none or min-snr"}},
      {{"train", "--config", config("dev.json", R"({"device": "gpu"})")}, {"device", "cpu, cuda, cuda:N or auto"}},
      {{"train", "--dataset", data, "--model", R"({"init": "xavier"})"}, {"init", "pytorch or ddpm"}},
      {{"train", "--dataset", data, "--model", R"({"time_embedding": "sinusoid"})"}, {"time_embedding", "adm or ddpm"}},
  };
  int k = 0;
  for (const Case& c : cases) {
    std::vector<std::string> args = {test::cli_path()};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const std::string out = dir / ("run" + std::to_string(k++));
    if (c.args[0] == "train") args.insert(args.end(), {"--steps", "1", "--out", out});
    std::string log;
    const int code = test::run(args, dir / "log.txt", &log);
    INFO("diffuse " << c.args[0] << " " << c.args[1] << " " << c.args.back() << "\n" << log);
    CHECK(code != 0);
    for (const std::string& n : c.names) CHECK_THAT(log, Contains(n));
    CHECK_FALSE(fs::exists(out));
  }
}

TEST_CASE("CLI: --help lists the values of the enumerated flags", "[cpu][tools][enum]") {
  test::TempDir dir;
  std::string log;
  REQUIRE(test::run({test::cli_path(), "sample", "--help"}, dir / "s.txt", &log) == 0);
  CHECK_THAT(log, Contains("{linspace,leading,trailing,logsnr,karras}") && Contains("{ddpm,ddim,dpm++2m,euler,heun,vdm,langevin,pc}"));
  REQUIRE(test::run({test::cli_path(), "train", "--help"}, dir / "t.txt", &log) == 0);
  CHECK_THAT(log, Contains("{eps,x0,v,hybrid,vdm}") && Contains("{none,min-snr}") && Contains("{on,off}") &&
                      Contains("{uniform,importance}"));
  // The string flags with a fixed set of values list it too.
  CHECK_THAT(log, Contains("{ddpm-cifar10,fmnist,tiny,imagenet64,latent}") && Contains("{cpu,cuda,cuda:N,auto}"));
}

TEST_CASE("CLI: sample --spacing logsnr runs the log-SNR grid", "[cpu][tools][enum]") {
  test::TempDir dir;
  const std::string data = test::write_idx_dataset(dir.path, 16, test::next_seed());
  const std::string out = dir / "run";
  std::string log;
  REQUIRE(test::run(test::train_args(data, out, 1, 0), dir / "train.log", &log) == 0);
  // After one step the zero-initialised output layer still predicts eps ~ 0, which every grid turns
  // into the same clipped images; random output weights make the prediction depend on the input.
  {
    SafeTensors st = read_safetensors(out + "/checkpoint.safetensors");
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (auto& [n, t] : st.tensors)
      tensors.emplace_back(n, n == "ema.out_conv.weight" ? test::random_tensor(t.shape(), -0.3f, 0.3f) : t);
    write_safetensors_atomic(out + "/checkpoint.safetensors", tensors, st.metadata);
  }
  auto grid = [&](const std::string& spacing) {
    const std::string png = dir / (spacing + ".png");
    std::string slog;
    const int code = test::run({test::cli_path(), "sample", out + "/checkpoint.safetensors", "--sampler", "dpm++2m",
                                "--steps", "4", "-n", "2", "--spacing", spacing, "--device", "cpu", "--grid", png},
                               dir / "sample.log", &slog);
    INFO(slog);
    REQUIRE(code == 0);
    return test::slurp_text(png);
  };
  const std::string linspace = grid("linspace"), logsnr = grid("logsnr"), again = grid("logsnr");
  CHECK(logsnr == again);     // deterministic
  CHECK(logsnr != linspace);  // a different grid of steps, so different images
}
