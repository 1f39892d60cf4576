// Which device `diffuse train` uses: the host-side choice from the requested spec, whether a GPU
// answers and what the config asks of the step (train::choose_training_device), tested without a
// GPU by passing "a GPU answers" in.
#include <catch2/catch.hpp>

#include <string>

#include "models/train/trainer.h"

using namespace diffuse;
using Catch::Matchers::Contains;

namespace {

train::TrainConfig config(const std::string& device) {
  train::TrainConfig c;
  c.device = device;
  return c;
}

}  // namespace

TEST_CASE("device choice: auto with a GPU trains there, or on the cpu (saying why) for what the GPU step lacks",
          "[cpu][tools]") {
  // What the GPU step does: eps, x0, v, hybrid, with or without classes (a class-conditional model,
  // or one whose model keys name classes), a super-resolution model, a latent model; hybrid also
  // with importance-sampled timesteps.
  for (const char* objective : {"eps", "x0", "v", "hybrid"}) {
    train::TrainConfig c = config("auto");
    c.objective = parse_enum<train::Objective>(objective, "objective");
    train::TrainConfig cond = c, classes = c, sr = c, latent = c;
    cond.class_cond = true;
    classes.model = {{"num_classes", 3}};
    sr.super_res = 4;
    latent.autoencoder = "ae.safetensors";
    train::TrainConfig importance = c;
    if (c.objective == train::Objective::hybrid) {
      latent = c;  // hybrid's VLB decodes 8-bit pixels: no latent model
      importance.t_sampling = train::TSampling::importance;
    }
    for (const train::TrainConfig& e : {c, cond, classes, sr, latent, importance}) {
      const train::TrainingDevice d = train::choose_training_device(e, /*cuda_available=*/true);
      CHECK(d.device == Device::cuda(0));
      CHECK(d.note.empty());
      CHECK(train::device_step_unsupported(e).empty());
    }
  }
  struct Case {
    const char* what;
    train::TrainConfig cfg;
  };
  train::TrainConfig vdm = config("auto");
  vdm.class_cond = true;  // with classes: the objective is what the GPU step lacks
  vdm.objective = train::Objective::vdm;
  vdm.schedule = train::ScheduleKind::learned;
  for (const Case& c : {Case{"--objective vdm", vdm}}) {
    INFO(c.what);
    const train::TrainingDevice d = train::choose_training_device(c.cfg, true);
    CHECK(d.device == Device::cpu());
    CHECK_THAT(d.note, Contains(c.what) && Contains("cpu") && Contains("--device auto"));
    CHECK(d.note.find('\n') == std::string::npos);  // one line
    // Without a GPU, auto is the cpu with nothing to explain beyond the missing GPU.
    CHECK(train::choose_training_device(c.cfg, false).device == Device::cpu());
    CHECK(train::choose_training_device(c.cfg, false).note.empty());
    // An explicit GPU keeps refusing, naming the option and the way out.
    for (const char* dev : {"cuda", "cuda:0", "cuda:1"}) {
      train::TrainConfig e = c.cfg;
      e.device = dev;
      CHECK_THROWS_WITH(train::choose_training_device(e, true),
                        Contains(c.what) && Contains("not supported by the GPU training step") &&
                            Contains("--device cpu"));
    }
    // The cpu asked for is the cpu.
    train::TrainConfig p = c.cfg;
    p.device = "cpu";
    CHECK(train::choose_training_device(p, true).device == Device::cpu());
    CHECK(train::choose_training_device(p, true).note.empty());
  }
  CHECK_THROWS_WITH(train::choose_training_device(config("gpu"), true), Contains("cpu, cuda, cuda:N or auto"));
}
