// `diffuse train-classifier`: the noise-aware classifier of classifier guidance, or a clean-image
// classifier that judges samples (`diffuse eval --fd`); models/train/classifier.h.
#include <cstdio>

#include "core/check.h"
#include "models/nn/unet.h"
#include "models/train/classifier.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

void register_classifier(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand(
      "train-classifier",
      "Train an image classifier: noise-aware (--noise diffusion) for `diffuse sample --classifier`, or on clean "
      "images (--noise none) for `diffuse eval --fd` (checkpoint and CSV log go to --out)");
  auto c = std::make_shared<train::ClassifierConfig>();
  auto resume = std::make_shared<bool>(false);
  auto model_json = std::make_shared<std::string>();
  std::string presets;
  for (const std::string& p : nn::UNetConfig::preset_names()) presets += (presets.empty() ? "" : ", ") + p;
  cmd->add_option("--preset", c->preset, "the UNet preset whose encoder (and middle block) the classifier is: " + presets)
      ->check(one_of(nn::UNetConfig::preset_names()))
      ->capture_default_str();
  cmd->add_option("--model", *model_json, "JSON object of UNet keys overriding the preset, e.g. '{\"base_channels\": 32}'");
  auto noise = std::make_shared<std::string>("diffusion");
  cmd->add_option("--noise", *noise,
                  "diffusion: trained on z_t at uniform steps of --schedule (guidance); none: on clean images "
                  "(judging samples)")
      ->check(enum_validator<train::ClassifierNoise>())
      ->capture_default_str();
  cmd->add_option_function<std::string>(
         "--schedule",
         [c](const std::string& text) { c->schedule = parse_enum<train::ScheduleKind>(text, "value", "--schedule"); },
         "noise diffusion: linear or cosine DDPM betas (guidance matches any model's schedule by log-SNR)")
      ->check(one_of({"linear", "cosine"}))
      ->default_str(std::string(enum_name(c->schedule)));
  cmd->add_option("--timesteps", c->timesteps, "noise diffusion: T of the schedule")->capture_default_str();
  cmd->add_option("--dataset", c->dataset, "fashion-mnist[:dir], mnist:<dir>, idx:<images>,<labels>, cifar10:<path> or "
                  "images:<dir>[@size] (labelled by its class sub-folders)")->capture_default_str();
  cmd->add_option("--steps", c->steps, "optimizer steps")->capture_default_str();
  cmd->add_option("--batch", c->batch, "images per step")->capture_default_str();
  cmd->add_option("--lr", c->lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", c->weight_decay, "AdamW weight decay (not on biases and norm parameters)")
      ->capture_default_str();
  cmd->add_option("--warmup", c->warmup, "steps of linear learning-rate warm-up")->capture_default_str();
  cmd->add_option("--grad-clip", c->grad_clip, "clip the global gradient norm (0: off)")->capture_default_str();
  cmd->add_flag("--flip", c->flip, "mirror images horizontally at random");
  cmd->add_option("--seed", c->seed, "seed of the initial weights, the batch order and the noise")->capture_default_str();
  cmd->add_option("--out", c->out_dir, "output folder (classifier.safetensors, classifier_log.csv)")->capture_default_str();
  cmd->add_option("--log-every", c->log_every, "steps per CSV log row")->capture_default_str();
  cmd->add_option("--checkpoint-every", c->checkpoint_every, "steps per checkpoint (0: only at the end)")
      ->capture_default_str();
  cmd->add_option("--eval-count", c->eval_count, "test images whose accuracy is reported at the end (0: none)")
      ->capture_default_str();
  cmd->add_option("--device", c->device, "cpu, cuda, cuda:N or auto. On a GPU the run is host-driven: the forward and "
                  "backward passes on the device, AdamW on the cpu's copy of the weights (the checkpoint's). Same seed, same "
                  "run either way, up to float rounding")
      ->check(device_validator())
      ->capture_default_str();
  cmd->add_flag("--resume", *resume, "continue the run in --out from its checkpoint (bit-exact)");
  cmd->callback([c, resume, model_json, noise] {
    train::ClassifierConfig cfg = *c;
    cfg.noise = parse_enum<train::ClassifierNoise>(*noise, "--noise");
    if (!model_json->empty()) cfg.model = parse_model_json(*model_json, "UNet keys");
    stop_on_signals();
    Progress progress("train-classifier", cfg.steps);
    train::ClassifierCallbacks cb;
    cb.on_step = [&](const train::ClassifierStats& s) {
      char extra[128];
      std::snprintf(extra, sizeof extra, "loss %.4f  accuracy %.1f%%  %.0f img/s", s.loss, 100 * s.accuracy,
                    s.images_per_s);
      progress.update(s.step, extra);
    };
    cb.on_message = [](const std::string& m) { std::fprintf(stderr, "\n%s\n", m.c_str()); };
    cb.should_stop = stop_requested;
    const std::string ckpt = train::train_classifier(cfg, *resume, cb);
    if (stop_requested()) report_stopped(ckpt);
  });
}

}  // namespace diffuse::tools
