// `diffuse train-autoencoder`: the KL-regularised autoencoder whose latents `diffuse train
// --autoencoder` trains a diffusion model on; models/train/autoencoder_trainer.h.
#include <cstdio>

#include "core/check.h"
#include "models/train/autoencoder_trainer.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

void register_autoencoder(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand(
      "train-autoencoder",
      "Train the KL-regularised autoencoder of latent diffusion (checkpoint, CSV log and grids of inputs beside "
      "reconstructions go to --out); `diffuse train --autoencoder` then trains a diffusion model on its latents");
  auto c = std::make_shared<train::AutoencoderTrainConfig>();
  auto resume = std::make_shared<bool>(false);
  auto model_json = std::make_shared<std::string>();
  cmd->add_option("--model", *model_json,
                  "JSON object of autoencoder keys over the defaults (latent_channels 4, base_channels 16, channel_mult "
                  "[1,2,4]: two halvings, 28x28 -> 7x7, num_res_blocks 1, groups 8, norm_eps 1e-6), e.g. "
                  "'{\"channel_mult\": [1, 2]}' for 14x14 latents");
  cmd->add_option("--kl-weight", c->kl_weight,
                  "weight of the KL term against the squared error, as LDM's ratio of per-sample sums")
      ->capture_default_str();
  cmd->add_option("--dataset", c->dataset, "fashion-mnist[:dir], mnist:<dir>, idx:<images>,<labels>, cifar10:<path> or "
                  "images:<dir>[@size]")->capture_default_str();
  cmd->add_option("--steps", c->steps, "optimizer steps")->capture_default_str();
  cmd->add_option("--batch", c->batch, "images per step")->capture_default_str();
  cmd->add_option("--lr", c->lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--weight-decay", c->weight_decay, "AdamW weight decay (not on biases and norm parameters)")
      ->capture_default_str();
  cmd->add_option("--warmup", c->warmup, "steps of linear learning-rate warm-up")->capture_default_str();
  cmd->add_option("--grad-clip", c->grad_clip, "clip the global gradient norm (0: off)")->capture_default_str();
  cmd->add_flag("--flip", c->flip, "mirror images horizontally at random");
  cmd->add_option("--seed", c->seed, "seed of the initial weights, the batch order and the posterior draws")
      ->capture_default_str();
  cmd->add_option("--out", c->out_dir, "output folder (autoencoder.safetensors, autoencoder_log.csv, "
                  "reconstructions_<step>.png, autoencoder_eval.csv)")->capture_default_str();
  cmd->add_option("--log-every", c->log_every, "steps per CSV log row")->capture_default_str();
  cmd->add_option("--checkpoint-every", c->checkpoint_every, "steps per checkpoint and reconstruction grid (0: only at "
                  "the end)")->capture_default_str();
  cmd->add_option("--eval-count", c->eval_count, "test images whose reconstruction error (MSE, PSNR) is reported at "
                  "the end (0: none)")->capture_default_str();
  cmd->add_option("--device", c->device, "cpu, cuda, cuda:N or auto. On a GPU the run is host-driven: the forward and "
                  "backward passes on the device, AdamW on the cpu's copy of the weights (the checkpoint's). Same seed, same "
                  "run either way, up to float rounding")
      ->check(device_validator())
      ->capture_default_str();
  cmd->add_flag("--resume", *resume, "continue the run in --out from its checkpoint (bit-exact)");
  cmd->callback([c, resume, model_json] {
    train::AutoencoderTrainConfig cfg = *c;
    if (!model_json->empty()) cfg.model = parse_model_json(*model_json, "autoencoder keys");
    stop_on_signals();
    Progress progress("train-autoencoder", cfg.steps);
    train::AutoencoderCallbacks cb;
    cb.on_step = [&](const train::AutoencoderStats& s) {
      char extra[128];
      std::snprintf(extra, sizeof extra, "loss %.5f  mse %.5f  kl %.3g  %.0f img/s", s.loss, s.mse, s.kl,
                    s.images_per_s);
      progress.update(s.step, extra);
    };
    cb.on_message = [](const std::string& m) { std::fprintf(stderr, "\n%s\n", m.c_str()); };
    cb.should_stop = stop_requested;
    const std::string ckpt = train::train_autoencoder(cfg, *resume, cb);
    if (stop_requested()) report_stopped(ckpt);
  });
}

}  // namespace diffuse::tools
