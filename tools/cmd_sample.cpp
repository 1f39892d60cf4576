// `diffuse sample`: images from a checkpoint.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/image_io.h"
#include "models/diffusion/sampler.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/classifier.h"
#include "models/train/device_sampling.h"
#include "models/train/super_res.h"
#include "models/train/trainer.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

namespace fs = std::filesystem;

struct SampleArgs {
  std::vector<std::string> checkpoints;  // one; two with --cascade (base, then super-resolution)
  bool cascade = false;
  double aug_level = train::kDefaultAugLevel;
  std::string low_res_grid;
  diffusion::SamplerKind sampler = diffusion::SamplerKind::ddim;
  int steps = 50;
  double eta = 0;
  int corrector_steps = 1;
  double snr = 0.16;
  double guidance = 0;
  int label = -1;
  std::optional<std::string> prompt;
  std::string classifier;
  double classifier_scale = 1;
  int batch = 64;
  uint64_t seed = 0;
  int count = 64;
  std::string grid = "samples.png";
  std::string image_dir;
  int upscale = 2;
  bool no_ema = false;
  bool no_clip = false;
  std::optional<diffusion::Spacing> spacing;  // unset: the sampler's default (sampler_spacing)
  std::string device = "auto";
  bool cuda_graph = true;
  bool allow_nonfinite = false;
};

namespace {

// One model of a run (the only one, or a stage of a cascade) and what its sampling needs.
struct Stage {
  std::string path;
  train::LoadedModel m;
  std::shared_ptr<const diffusion::Schedule> sched;
  diffusion::Prediction pred = diffusion::Prediction::eps;
  diffusion::VarianceKind variance = diffusion::VarianceKind::beta_tilde;
  bool ancestral = false, learned = false;
  std::unique_ptr<train::DeviceSampling> device_loop;  // models/train/device_sampling.h
};

Stage load_stage(const std::string& path, const SampleArgs& a, diffusion::SamplerKind kind, Device dev) {
  Stage st;
  st.path = path;
  st.m = train::load_checkpoint(path, dev, !a.no_ema, a.allow_nonfinite);
  if (!st.m.nonfinite.empty())
    std::fprintf(stderr, "diffuse: warning: %s: %zu tensor(s) hold NaN or Inf (%s%s); the images will be garbage\n",
                 path.c_str(), st.m.nonfinite.size(), st.m.nonfinite[0].c_str(), st.m.nonfinite.size() > 1 ? ", ..." : "");
  // A discrete objective's DDPM betas, or a vdm model's continuous (learned or linear log-SNR)
  // schedule, whose times the samplers space uniformly in t.
  st.sched = train::model_schedule(st.m);
  st.pred = train::prediction_of(st.m.config);
  // The model's variance (beta_tilde, beta, or a hybrid model's learned one: improved DDPM eq. 15
  // on the respaced betas) is used where the sampler has a variance to choose: DDPM ancestral
  // steps. The other samplers take the eps channels alone. pc's predictor is the ddpm step.
  st.variance = train::ancestral_variance(st.m.config);
  st.ancestral = kind == diffusion::SamplerKind::ddpm || kind == diffusion::SamplerKind::pc;
  st.learned = st.variance == diffusion::VarianceKind::learned && st.ancestral;
  if (dev.is_cuda()) st.device_loop = std::make_unique<train::DeviceSampling>(st.m.unet, st.m.config, dev, a.cuda_graph);
  return st;
}

}  // namespace

void register_sample(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("sample", "Draw images from a trained checkpoint, or from a cascade of two");
  auto a = std::make_shared<SampleArgs>();
  cmd->add_option("checkpoint", a->checkpoints, "checkpoint.safetensors written by `diffuse train` (a latent model's, trained with --autoencoder, is sampled on its latents and decoded by the autoencoder it holds); with --cascade, two: the base model, then the super-resolution model")->required()->expected(1, 2);
  cmd->add_flag("--cascade", a->cascade, "sample a cascade (Ho et al. 2021): the first checkpoint (the base model) draws low-resolution images, each is noise-augmented to --aug-level and the second checkpoint (a super-resolution model, `diffuse train --super-res`) draws the full-size images conditioned on them; both stages use --sampler and --steps");
  CLI::Option* aug_opt = cmd->add_option("--aug-level", a->aug_level, "with --cascade: the augmentation level s in [0, 1] (on the super-resolution model's schedule) of the base's samples, z_s = alpha_s x + sigma_s eps', as the super-resolution model was trained to see them")->capture_default_str();
  CLI::Option* low_grid_opt = cmd->add_option("--low-res-grid", a->low_res_grid, "with --cascade: also write the base model's low-resolution samples as a PNG grid (at the final grid's pixel size)");
  add_enum_option(cmd, "--sampler", a->sampler, "ddpm, ddim, dpm++2m, euler, heun, vdm, langevin (annealed Langevin dynamics over --steps noise levels) or pc (predictor-corrector: the ddpm step after --corrector-steps Langevin steps) (ddpm and pc use the model's variance: beta_tilde, beta as its config says, or a hybrid model's learned one; all take a vdm model's continuous, possibly learned, schedule)");
  cmd->add_option("--steps", a->steps, "sampling steps (langevin: noise levels; pc: predictor steps)")->capture_default_str();
  cmd->add_option("--eta", a->eta, "DDIM eta (0: deterministic)")->capture_default_str();
  CLI::Option* corrector_opt = cmd->add_option("--corrector-steps", a->corrector_steps, "langevin: Langevin steps at each noise level (1 or more); pc: Langevin corrector steps before each predictor step (0: the ddpm sampler exactly)")->capture_default_str();
  CLI::Option* snr_opt = cmd->add_option("--snr", a->snr, "langevin and pc: the signal-to-noise ratio r of the Langevin step size (langevin: h = 2 alpha (r sigma_t)^2; pc: h = 2 alpha (r ||z|| / ||score||)^2; Song et al. 2021)")->capture_default_str();
  cmd->add_option("--guidance", a->guidance, "classifier-free guidance scale w (eps = (1+w) eps(x,y) - w eps(x))")->capture_default_str();
  cmd->add_option("--class", a->label, "class label for a class-conditional model or for --classifier (-1: cycle through the classes)")->capture_default_str();
  cmd->add_option_function<std::string>("--prompt", [a](const std::string& text) { a->prompt = text; }, "a cross-attention model (context_dim > 0): condition every image on these words, split at spaces and '/' like the class names they come from (\"ankle boot\"); a word the model does not know is refused with the list it knows; \"\" is the null context (unconditional). --guidance applies as with --class. No labels.csv is written");
  cmd->add_option("--classifier", a->classifier, "classifier guidance (Dhariwal & Nichol 2021): a noise-aware classifier from `diffuse train-classifier` steers every step towards --class with the gradient of log p(class | z_t), on any sampler and any model, conditional or not");
  cmd->add_option("--classifier-scale", a->classifier_scale, "the scale s of classifier guidance: eps <- eps - s sigma_t grad log p(y | z_t)")->capture_default_str();
  cmd->add_option("--batch", a->batch, "images per forward pass")->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the starting noise (same seed, same images)")->capture_default_str();
  cmd->add_option("-n,--count", a->count, "number of images")->capture_default_str();
  cmd->add_option("--grid", a->grid, "PNG file for a grid of all images ('' for none); a class-conditional model with its classes cycled (--class -1) over a whole number of rounds gets one row per class")->capture_default_str();
  cmd->add_option("--image-dir", a->image_dir, "also write one PNG per image into this folder");
  cmd->add_option("--upscale", a->upscale, "integer pixel upscaling of the grid")->capture_default_str();
  cmd->add_flag("--no-ema", a->no_ema, "use the live weights instead of the EMA weights");
  cmd->add_flag("--no-clip", a->no_clip, "do not clip the predicted x0 to [-1, 1]");
  cmd->add_option_function<std::string>("--spacing", [a](const std::string& text) { a->spacing = parse_enum<diffusion::Spacing>(text, "value", "--spacing"); }, "where the sampler's steps sit: linspace, leading, trailing (among a discrete schedule's training steps), logsnr (uniform in log-SNR, a good grid for dpm++2m) or karras (EDM's rho = 7 ramp in sigma from min(sigma(1), 80)). Default: karras for euler and heun, linspace for the others; every sampler walks any of them")->check(enum_validator<diffusion::Spacing>())->default_str("linspace; karras for euler, heun");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto. On a GPU, ddpm, ddim and vdm on a model without classes run every step on the device (no guidance; a hybrid model's variance with ddpm only); the other samplers (dpm++2m, euler, heun, langevin, pc), class-conditional and super-resolution models and --classifier guidance run host-driven with the model (and the classifier) on the GPU. Same seed, same images either way, up to float rounding")->check(device_validator())->capture_default_str();
  cmd->add_option("--cuda-graph", a->cuda_graph, "on a GPU, for the samplers that run every step on the device: on captures the whole loop as a CUDA graph once per batch shape and replays it, off launches its kernels one by one (the same images)")->check(enum_validator<OnOff>())->default_str("on");
  cmd->add_flag("--allow-nonfinite", a->allow_nonfinite, "load a checkpoint whose weights hold NaN or Inf (refused otherwise), with a warning naming them");

  cmd->callback([a, corrector_opt, snr_opt, aug_opt, low_grid_opt] {
    DF_CHECK(a->count >= 1 && a->batch >= 1 && a->steps >= 1, "--count, --batch and --steps must be at least 1");
    DF_CHECK(a->upscale >= 1 && a->upscale <= 16, "--upscale must be in 1..16");
    DF_CHECK(a->checkpoints.size() == (a->cascade ? 2u : 1u), a->cascade
             ? "--cascade takes two checkpoints: the base model, then the super-resolution model (diffuse sample --cascade BASE.safetensors SR.safetensors)"
             : "two checkpoints given: sampling a base model and a super-resolution model together needs --cascade");
    DF_CHECK(a->cascade || (aug_opt->count() == 0 && low_grid_opt->count() == 0), "--aug-level and --low-res-grid go with --cascade");
    DF_CHECK(std::isfinite(a->aug_level) && a->aug_level >= 0 && a->aug_level <= 1, "--aug-level ", a->aug_level,
             ": must be in [0, 1] (a time on the super-resolution model's schedule; 0: the base's samples as they are)");
    DF_CHECK(!a->cascade || a->classifier.empty(), "--classifier with --cascade: classifier guidance steers one model; sample the base model alone to guide it");
    const diffusion::SamplerKind kind = a->sampler;
    // The Langevin samplers' settings (models/diffusion/langevin.h); no other sampler reads them.
    const bool ald = kind == diffusion::SamplerKind::langevin, pc = kind == diffusion::SamplerKind::pc;
    DF_CHECK(ald || pc || (corrector_opt->count() == 0 && snr_opt->count() == 0), "--corrector-steps and --snr "
             "apply to --sampler langevin and pc, not ", enum_name(kind));
    DF_CHECK(a->corrector_steps >= (ald ? 1 : 0), "--corrector-steps ", a->corrector_steps, ": ",
             ald ? "langevin takes 1 or more steps per noise level" : "must be 0 or more");
    DF_CHECK(std::isfinite(a->snr) && a->snr > 0, "--snr ", a->snr, ": must be a positive number (the score-SDE "
             "default is 0.16)");
    const diffusion::Spacing spacing = diffusion::sampler_spacing(kind, a->spacing);
    Device dev = resolve_device(a->device);
    // The stages: the model alone, or the cascade's base then its super-resolution model.
    std::vector<Stage> stages;
    for (const std::string& path : a->checkpoints) stages.push_back(load_stage(path, *a, kind, dev));
    if (a->cascade)
      train::check_cascade(stages[0].m.unet->config(), stages[1].m.unet->config(), stages[0].path, stages[1].path);
    else
      train::refuse_super_res(stages[0].m.unet->config(), stages[0].path, "diffuse sample without --cascade");
    const nn::UNetConfig& uc = stages[0].m.unet->config();   // the first stage's (labels, classifier)
    const nn::UNetConfig& out_c = stages.back().m.unet->config();  // the images written
    int cond_classes = 0;
    for (const Stage& st : stages) cond_classes = std::max(cond_classes, st.m.unet->config().num_classes);
    for (const Stage& st : stages)
      DF_CHECK(st.m.unet->config().num_classes == 0 || st.m.unet->config().num_classes == cond_classes, "cascade: ",
               stages[0].path, " has ", uc.num_classes, " classes and ", stages.back().path, " ", out_c.num_classes);
    DF_CHECK(a->guidance == 0 || cond_classes > 0, "--guidance needs a class-conditional model (trained with --class-cond)");
    // A latent model (train --autoencoder) draws latents: every sampler runs on them unchanged,
    // and its autoencoder decodes them to images at the end.
    const bool latent = stages[0].m.autoencoder != nullptr;
    for (const Stage& st : stages)
      DF_CHECK(!a->cascade || st.m.autoencoder == nullptr, st.path, " is a latent diffusion model: a cascade's two "
               "stages are pixel models (sample it alone)");
    DF_CHECK(!latent || a->classifier.empty(), stages[0].path, " is a latent diffusion model; --classifier guides with "
             "a classifier of images, which cannot score its latents");
    std::shared_ptr<train::LoadedClassifier> clf;
    if (!a->classifier.empty()) {
      DF_CHECK(std::isfinite(a->classifier_scale), "--classifier-scale must be a finite number");
      clf = std::make_shared<train::LoadedClassifier>(train::load_classifier(a->classifier, dev));
      DF_CHECK(clf->config.noise == train::ClassifierNoise::diffusion, a->classifier, " was trained on clean images "
               "(--noise none); guidance needs a noise-aware classifier (train-classifier --noise diffusion)");
      DF_CHECK(clf->net->config().image_size == uc.image_size && clf->net->config().in_channels == uc.in_channels,
               a->classifier, " classifies ", clf->net->config().image_size, "x", clf->net->config().image_size, "x",
               clf->net->config().in_channels, " images, the model draws ", uc.image_size, "x", uc.image_size, "x",
               uc.in_channels);
      DF_CHECK(uc.num_classes == 0 || uc.num_classes == clf->net->num_classes(), "the classifier has ",
               clf->net->num_classes(), " classes, the model ", uc.num_classes);
    }
    // A prompt's token ids, the same for every image (UNet::forward takes (B, context_tokens) ids
    // where labels go); its unconditional branch is the null context, every token the pad.
    std::vector<int64_t> prompt_ids;
    if (a->prompt) {
      DF_CHECK(uc.has_context(), "--prompt needs a cross-attention model (trained with the model key context_dim); ",
               stages[0].path, uc.num_classes > 0 ? " is conditioned on class labels: give --class" : " is unconditional");
      DF_CHECK(a->label < 0, "give --prompt or --class, not both");
      DF_CHECK(!a->cascade, "--prompt with --cascade: the cascade's models condition on class labels; give --class");
      DF_CHECK(!clf, "--classifier guides towards a --class; it does not read --prompt");
      prompt_ids = uc.tokenize(*a->prompt);
    }
    const int classes = a->prompt ? 0 : clf ? clf->net->num_classes() : cond_classes;
    DF_CHECK(a->label < classes, "--class ", a->label, ": ",
             classes ? "there are " + std::to_string(classes) + " classes" : std::string("the model has no classes (give --classifier)"));
    ag::NoGrad ng;
    bool all_on_device = true;
    std::vector<Tensor> parts, low_parts;
    Progress progress("sample", static_cast<int64_t>(a->count) * static_cast<int64_t>(stages.size()));
    int64_t done = 0;  // images finished, over the stages
    for (int start = 0; start < a->count; start += a->batch) {
      const int n = std::min(a->batch, a->count - start);
      // Each batch draws its own noise stream, so the images do not depend on --batch... only on
      // the seed and the image's position.
      const uint64_t batch_seed = a->seed + static_cast<uint64_t>(start) * 0x9E3779B97F4A7C15ull;
      Tensor x;  // the previous stage's samples: the next one's low-resolution input
      for (size_t k = 0; k < stages.size(); ++k) {
        Stage& st = stages[k];
        const nn::UNetConfig& c = st.m.unet->config();
        diffusion::SamplerOptions o;
        o.shape = Shape{n, c.image_size, c.image_size, c.in_channels};
        // The super-resolution stage's noise: its own key, apart from the base's streams.
        o.seed = k == 0 ? batch_seed : batch_seed ^ 0x73757065722d7265ull;
        o.steps = a->steps;
        o.prediction = st.pred;
        o.clip_x0 = !a->no_clip && !latent;  // latents have no [-1, 1] range to clip to
        o.eta = a->eta;
        o.corrector_steps = a->corrector_steps;
        o.snr = a->snr;
        if (st.ancestral) o.variance = st.variance;
        o.spacing = spacing;
        const int model_classes = c.num_classes;
        if (a->prompt) {
          const int64_t L = c.context_tokens;
          std::vector<int64_t> ids;
          for (int i = 0; i < n; ++i) ids.insert(ids.end(), prompt_ids.begin(), prompt_ids.end());
          o.labels = Tensor::from_vector_i64(ids, {n, L});
          if (a->guidance != 0) {
            o.guidance.cfg_scale = a->guidance;
            o.guidance.null_labels = Tensor::zeros({n, L}, DType::i64);
          }
        } else if (classes > 0 && (model_classes > 0 || clf)) {
          std::vector<int64_t> l(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) l[i] = a->label >= 0 ? a->label : (start + i) % classes;
          o.labels = Tensor::from_vector_i64(l, {n});
          if (clf) {
            o.guidance.grad_log_p = train::classifier_grad(clf, st.sched);
            o.guidance.classifier_scale = a->classifier_scale;
          }
          if (a->guidance != 0 && model_classes > 0) {
            o.guidance.cfg_scale = a->guidance;
            o.guidance.null_labels = Tensor::full({n}, model_classes, DType::i64);
          }
        }
        diffusion::Denoiser f;
        if (c.super_res()) {
          // The base's samples, augmented to --aug-level on this model's schedule (super_res.h).
          const nn::LowRes low =
              train::augment_low_res(x, std::vector<double>(static_cast<size_t>(n), a->aug_level), *st.sched,
                                     st.m.config.timesteps, train::aug_seed(o.seed), 0);
          f = train::make_sr_denoiser(st.m.unet, st.m.config.timesteps, dev, low, st.learned);
        } else {
          f = train::make_denoiser(st.m.unet, st.m.config.timesteps, dev, st.learned);
        }
        // An unconditional model guided by a classifier: the labels are the classifier's targets only.
        if (clf && c.num_classes == 0)
          f = [f](const Tensor& z, const Tensor& t, const Tensor&) { return f(z, t, Tensor()); };
        const int64_t before = done;
        o.callback = [&](int i, int total, const Tensor&, const Tensor&) {
          progress.update(before + static_cast<int64_t>(n) * (i + 1) / total);
        };
        const bool on_device = st.device_loop && train::device_loop_supports(kind, c, st.m.config, o);
        all_on_device = all_on_device && on_device;
        x = on_device ? st.device_loop->sample(kind, *st.sched, o) : diffusion::sample(kind, *st.sched, f, o);
        done += n;
        if (k + 1 < stages.size()) low_parts.push_back(x);
      }
      parts.push_back(x);
    }
    auto gather = [&](const std::vector<Tensor>& ps, const nn::UNetConfig& c) {
      Tensor all = Tensor::empty({a->count, c.image_size, c.image_size, c.in_channels});
      int64_t row = 0;
      for (const Tensor& p : ps) {
        all.slice(row, row + p.size(0)).copy_(p);
        row += p.size(0);
      }
      return all;
    };
    Tensor all = gather(parts, out_c);
    if (latent) all = train::decode_latents(*stages[0].m.autoencoder, all, stages[0].m.latent_scale, a->batch);
    const char* where = !dev.is_cuda() ? "" : !all_on_device ? ", host-driven" : a->cuda_graph ? ", device loop, CUDA graph" : ", device loop";
    if (!a->grid.empty()) {
      // Classes cycled over a whole number of rounds: one row per class (image i has class
      // i mod classes), so the grid reads as the classes' rows. Otherwise the images in order.
      const bool class_rows = classes > 0 && a->label < 0 && a->count % classes == 0 && a->count > classes;
      if (class_rows) {
        const int per_class = a->count / classes;
        Tensor rows = Tensor::empty(all.shape());
        for (int c = 0; c < classes; ++c)
          for (int j = 0; j < per_class; ++j)
            rows.slice(c * per_class + j, c * per_class + j + 1).copy_(all.slice(c + j * classes, c + j * classes + 1));
        write_png(a->grid, make_grid(rows, a->upscale, 2, per_class));
      } else {
        write_png_grid(a->grid, all, a->upscale);
      }
      if (a->cascade)
        std::printf("wrote %s (%d images, %dx%d from %dx%d, cascade, %s, %d steps a stage, aug level %g, seed %llu%s)\n",
                    a->grid.c_str(), a->count, out_c.image_size, out_c.image_size, uc.image_size, uc.image_size,
                    std::string(enum_name(kind)).c_str(), a->steps, a->aug_level,
                    static_cast<unsigned long long>(a->seed), where);
      else
        std::printf("wrote %s (%d images, %s, %d steps, seed %llu%s)\n", a->grid.c_str(), a->count,
                    std::string(enum_name(kind)).c_str(), a->steps, static_cast<unsigned long long>(a->seed), where);
    }
    if (!a->low_res_grid.empty()) {
      // At the final grid's pixel size, so the two grids lie side by side.
      write_png_grid(a->low_res_grid, gather(low_parts, uc), a->upscale * out_c.low_res_factor());
      std::printf("wrote %s (the base's %d images, %dx%d)\n", a->low_res_grid.c_str(), a->count, uc.image_size,
                  uc.image_size);
    }
    if (!a->image_dir.empty()) {
      std::error_code ec;
      fs::create_directories(a->image_dir, ec);
      DF_CHECK(!ec, "cannot create ", a->image_dir, ": ", ec.message());
      // labels.csv: each image's class, for `diffuse eval --fd --samples` to score.
      std::string csv = "file,class\n";
      for (int i = 0; i < a->count; ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "%05d.png", i);
        write_png((fs::path(a->image_dir) / name).string(), all.select(i), 1);
        if (classes > 0) csv += std::string(name) + "," + std::to_string(a->label >= 0 ? a->label : i % classes) + "\n";
      }
      if (classes > 0) write_file_atomic((fs::path(a->image_dir) / "labels.csv").string(), csv.data(), csv.size());
      std::printf("wrote %d images to %s\n", a->count, a->image_dir.c_str());
    }
  });
}

}  // namespace diffuse::tools
