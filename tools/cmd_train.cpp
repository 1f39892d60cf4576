// `diffuse train`: train a diffusion model; flags and/or a JSON config.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>

#include "core/check.h"
#include "models/train/trainer.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

}  // namespace

void register_train(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("train", "Train a diffusion model (checkpoints, sample grids and a CSV log go to --out)");
  auto cfg = std::make_shared<train::TrainConfig>();
  auto config_file = std::make_shared<std::string>();
  auto resume = std::make_shared<bool>(false);
  auto model_json = std::make_shared<std::string>();

  cmd->add_option("--config", *config_file, "JSON file of training settings (keys as the flags, with _ for -); flags given on the command line override it");
  cmd->add_option("--preset", cfg->preset, "UNet preset: tiny (CPU), fmnist (GPU, 28x28), ddpm-cifar10, imagenet64")->check(one_of(nn::UNetConfig::preset_names()))->capture_default_str();
  cmd->add_option("--model", *model_json, "JSON object of UNet keys overriding the preset, e.g. '{\"base_channels\": 48}'");
  add_enum_option(cmd, "--objective", cfg->objective, "what the network predicts: eps, x0, v, hybrid (eps plus a learned variance, trained with L_simple + 0.001 L_vlb as improved DDPM; 2x the output channels), or vdm (eps in continuous time, trained on the VDM likelihood bound in bits/dim: prior + reconstruction + 0.5 gamma'(t) ||eps - eps_hat||^2; Kingma et al. 2021)");
  CLI::Option* schedule_opt = add_enum_option(cmd, "--schedule", cfg->schedule, "noise schedule: linear (DDPM betas), scaled_linear (linear in sqrt(beta), latent diffusion's), cosine (improved DDPM) or custom (the config file's list `betas`, one per step); with --objective vdm: learned (the default there: a monotone SNR network trained with the model, saved as snr.*) or linear (VDM's fixed linear log-SNR, -13.3 to 5)");
  cmd->add_option("--timesteps", cfg->timesteps, "diffusion steps T")->capture_default_str();
  cmd->add_option_function<double>("--beta-start", [cfg](const double& b) { cfg->beta_start = b; }, "first beta of a linear or scaled_linear schedule, in (0, 1), as given (default: DDPM's 1e-4 x 1000 / T)");
  cmd->add_option_function<double>("--beta-end", [cfg](const double& b) { cfg->beta_end = b; }, "last beta of a linear or scaled_linear schedule, in (0, 1), as given (default: DDPM's 0.02 x 1000 / T)");
  add_enum_option(cmd, "--loss-weight", cfg->loss_weight, "per-sample loss weight: none or min-snr (gamma 5)");
  add_enum_option(cmd, "--t-sampling", cfg->t_sampling, "how training steps t are drawn: uniform, or importance (--objective hybrid only; improved DDPM's sampler: p_t proportional to sqrt(E[L_t^2]) over each step's last 10 losses, uniform until every step has 10, the loss weighted by 1/(T p_t); the history is saved in the checkpoint)");
  cmd->add_option("--lr", cfg->lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--beta1", cfg->beta1, "AdamW beta1")->capture_default_str();
  cmd->add_option("--beta2", cfg->beta2, "AdamW beta2")->capture_default_str();
  cmd->add_option("--adam-eps", cfg->adam_eps, "AdamW epsilon")->capture_default_str();
  cmd->add_option("--weight-decay", cfg->weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  cmd->add_option("--warmup", cfg->warmup, "learning-rate warm-up steps")->capture_default_str();
  cmd->add_option("--grad-clip", cfg->grad_clip, "clip gradients to this global norm (0: off)")->capture_default_str();
  cmd->add_option("--ema-decay", cfg->ema_decay, "EMA decay of the weights used for sampling")->capture_default_str();
  cmd->add_option("--ema-warmup", cfg->ema_warmup, "EMA decay warm-up min(decay, (1+n)/(10+n))")->capture_default_str();
  cmd->add_option("--batch", cfg->batch, "batch size")->capture_default_str();
  cmd->add_option("--steps", cfg->steps, "training steps in all (a resumed run continues to this count)")->capture_default_str();
  cmd->add_option("--epochs", cfg->epochs, "train for this many passes over the dataset instead of --steps (0: use --steps)")->capture_default_str();
  cmd->add_flag("--class-cond", cfg->class_cond, "condition on class labels (with label dropout for classifier-free guidance); with images:<dir>, each image's label is its class sub-folder");
  cmd->add_option("--label-dropout", cfg->label_dropout, "share of labels replaced by the null class")->capture_default_str();
  cmd->add_option("--dataset", cfg->dataset, "fashion-mnist[:<dir>], mnist:<dir>, cifar10:<dir>, images:<dir>[@size] (resized to size x size, default 64), or idx:<images>,<labels>")->capture_default_str();
  cmd->add_flag("--flip", cfg->flip, "random horizontal flips");
  cmd->add_option("--seed", cfg->seed, "seed of every random draw (init, batches, noise)")->capture_default_str();
  cmd->add_option("--device", cfg->device, "cpu, cuda, cuda:N or auto (a GPU where one answers; what the GPU step cannot do yet, --class-cond, hybrid and vdm, then trains on the cpu, saying so)")->check(device_validator())->capture_default_str();
  cmd->add_option("--bf16", cfg->bf16, "bf16 activations on CUDA")->capture_default_str();
  cmd->add_option("--cuda-graph", cfg->cuda_graph, "on a GPU (where the whole step runs on the device: objectives eps, x0 and v, no --class-cond): on captures the step as a CUDA graph once and replays it, off launches its kernels one by one (the same bits, slower)")->check(enum_validator<OnOff>())->default_str("on");
  cmd->add_option("--out", cfg->out_dir, "output folder (checkpoint.safetensors, log.csv, samples_*.png)")->capture_default_str();
  cmd->add_option("--log-every", cfg->log_every, "steps between CSV log rows")->capture_default_str();
  cmd->add_option("--sample-every", cfg->sample_every, "steps between PNG grids of EMA samples (0: only at the end)")->capture_default_str();
  cmd->add_option("--checkpoint-every", cfg->checkpoint_every, "steps between checkpoints (0: only at the end)")->capture_default_str();
  cmd->add_option("--sample-count", cfg->sample_count, "images in each grid")->capture_default_str();
  cmd->add_option("--sample-steps", cfg->sample_steps, "DDIM steps for the grids")->capture_default_str();
  cmd->add_option("--max-nonfinite", cfg->max_nonfinite, "consecutive non-finite steps before the run stops")->capture_default_str();
  cmd->add_flag("--resume", *resume, "continue the run in --out from its checkpoint (exactly: same batches, same noise)");

  cmd->callback([cmd, cfg, config_file, resume, model_json, schedule_opt] {
    train::TrainConfig c = *cfg;
    bool schedule_given = schedule_opt->count() > 0;
    if (!config_file->empty()) {
      std::ifstream in(*config_file);
      DF_CHECK(in.good(), "cannot read the config file ", *config_file);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        DF_FAIL(*config_file, ": not valid JSON (", e.what(), ")");
      }
      // Flags given on the command line win over the file.
      nlohmann::json flags = cfg->to_json();
      if (j.is_object() && j.contains("schedule")) schedule_given = true;
      train::TrainConfig from_file = train::TrainConfig::from_json(j);
      nlohmann::json merged = from_file.to_json();
      for (CLI::Option* o : cmd->get_options()) {
        if (o->count() == 0 || o->get_name().rfind("--", 0) != 0) continue;
        std::string key = o->get_name().substr(2);
        for (char& ch : key) if (ch == '-') ch = '_';
        if (key == "out") key = "out_dir";
        if (flags.contains(key)) merged[key] = flags[key];
        else merged.erase(key);  // a key to_json writes only when not the default, given as the default
      }
      c = train::TrainConfig::from_json(merged);
    }
    if (!model_json->empty()) {
      try {
        c.model = nlohmann::json::parse(*model_json);
      } catch (const nlohmann::json::exception& e) {
        DF_FAIL("--model: not valid JSON (", e.what(), ")");
      }
    }
    // VDM's point is the learned schedule: it is what --objective vdm trains unless told otherwise.
    if (c.objective == train::Objective::vdm && !schedule_given) c.schedule = train::ScheduleKind::learned;
    c = train::TrainConfig::from_json(c.to_json());  // validates
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    auto progress = std::make_shared<Progress>("train", c.steps);
    double last_loss = 0, last_rate = 0;
    train::TrainCallbacks cb;
    cb.on_step = [&](const train::StepStats& s) {
      if (s.total_steps > 0) progress->set_total(s.total_steps);
      if (s.images_per_s > 0) { last_loss = s.loss; last_rate = s.images_per_s; }
      char extra[128];
      if (last_rate > 0)
        std::snprintf(extra, sizeof extra, "loss %.4f  %.0f img/s%s", last_loss, last_rate,
                      s.nonfinite_skipped ? "  (non-finite steps skipped)" : "");
      else  // nothing measured before the first log row
        std::snprintf(extra, sizeof extra, "%s", s.nonfinite_skipped ? "(non-finite steps skipped)" : "");
      progress->update(s.step, extra);
    };
    cb.on_message = [&](const std::string& m) { std::fprintf(stderr, "\n%s\n", m.c_str()); };
    cb.should_stop = [] { return g_stop.load(); };
    std::string ckpt = train::train(c, *resume, cb);
    if (g_stop) {
      std::fprintf(stderr, "interrupted: the run is saved in %s; continue it with --resume\n", ckpt.c_str());
      exit_code() = 130;
    }
  });
}

}  // namespace diffuse::tools
