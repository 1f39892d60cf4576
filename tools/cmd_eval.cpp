// `diffuse eval`: bits per dimension on the test split (or, for a source without one, all its
// images, said so), and the DDIM inversion round trip.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <tuple>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/image_io.h"
#include "models/diffusion/likelihood.h"
#include "models/diffusion/sampler.h"
#include "models/train/autoencoder_trainer.h"
#include "models/train/classifier.h"
#include "models/train/super_res.h"
#include "models/train/trainer.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

struct EvalArgs {
  std::string checkpoint;
  std::string dataset;  // default: the training run's dataset
  int count = 256;
  int batch = 64;
  int strata = 50;
  int t_samples = 1;
  int inversion_steps = 50;
  int inversion_count = 16;
  uint64_t seed = 0;
  bool no_ema = false;
  std::string json = "";
  std::string device = "auto";
  bool allow_nonfinite = false;
  // --fd: samples scored by a classifier instead of the bound.
  std::string fd;
  std::string samples;
  int fd_count = 1000;
  int fd_steps = 50;
  double fd_guidance = 0;
};

namespace {

// The images of a folder written by `diffuse sample --image-dir` (every .png, in name order), and
// their target classes from its labels.csv when it has one (empty otherwise).
std::pair<Tensor, std::vector<int64_t>> read_sample_folder(const std::string& dir, int size, int channels) {
  namespace fs = std::filesystem;
  std::error_code ec;
  DF_CHECK(fs::is_directory(dir, ec), "--samples ", dir, ": not a folder");
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".png") files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  DF_CHECK(files.size() >= 2, "--samples ", dir, ": needs at least 2 PNG images, found ", files.size());
  Tensor all = Tensor::empty({static_cast<int64_t>(files.size()), size, size, channels});
  for (size_t i = 0; i < files.size(); ++i) {
    Tensor img = read_image((fs::path(dir) / files[i]).string(), channels);
    DF_CHECK(img.size(0) == size && img.size(1) == size, dir, "/", files[i], " is ", img.size(0), "x", img.size(1),
             "; the classifier takes ", size, "x", size);
    all.select(static_cast<int64_t>(i)).copy_(img);
  }
  std::vector<int64_t> labels;
  std::ifstream in(fs::path(dir) / "labels.csv");
  if (in.good()) {
    std::map<std::string, int64_t> by_name;
    std::string line;
    while (std::getline(in, line)) {
      const size_t comma = line.find(',');
      if (comma == std::string::npos || line.rfind("file,", 0) == 0) continue;
      try {
        by_name[line.substr(0, comma)] = std::stoll(line.substr(comma + 1));
      } catch (const std::exception&) {
        DF_FAIL(dir, "/labels.csv: malformed row '", line, "'");
      }
    }
    for (const std::string& f : files) {
      auto it = by_name.find(f);
      DF_CHECK(it != by_name.end(), dir, "/labels.csv has no row for ", f);
      labels.push_back(it->second);
    }
  }
  return {all, labels};
}

}  // namespace

void register_eval(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("eval", "Bits per dimension on the test split (an image folder has none: all its images) and the DDIM inversion round trip");
  auto a = std::make_shared<EvalArgs>();
  cmd->add_option("checkpoint", a->checkpoint, "checkpoint.safetensors written by `diffuse train`")->required();
  cmd->add_option("--dataset", a->dataset, "dataset spec (default: the one the model was trained on), its test split; images:<dir> has no test split, so all its images are scored (the training images when it is the training folder), read at the model's size unless @size says otherwise");
  cmd->add_option("-n,--count", a->count, "test images to evaluate (0: the whole split)")->capture_default_str();
  cmd->add_option("--batch", a->batch, "images per batch")->capture_default_str();
  cmd->add_option("--strata", a->strata, "stratified VLB estimate with this many strata (0: all T terms, exact but T model calls)")->capture_default_str();
  cmd->add_option("--t-samples", a->t_samples, "vdm models: Monte Carlo draws of (t, eps) per image for the continuous-time diffusion term of the VDM bound")->capture_default_str();
  cmd->add_option("--inversion-steps", a->inversion_steps, "DDIM steps of the inversion round trip")->capture_default_str();
  cmd->add_option("--inversion-count", a->inversion_count, "images in the inversion round trip (0: skip)")->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the noise draws of the estimate")->capture_default_str();
  cmd->add_flag("--no-ema", a->no_ema, "use the live weights instead of the EMA weights");
  cmd->add_option("--json", a->json, "also write the results to this JSON file");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->check(device_validator())->capture_default_str();
  cmd->add_flag("--allow-nonfinite", a->allow_nonfinite, "load a checkpoint whose weights hold NaN or Inf (refused otherwise), with a warning naming them");
  cmd->add_option("--fd", a->fd, "score samples instead of the bound: a classifier from `diffuse train-classifier --noise none` compares --fd-count samples with as many test images (the Frechet distance of its pooled features: FID's formula on this classifier, not FID; compare only figures from the same classifier), and, where the samples have target classes, the share it labels as their class");
  cmd->add_option("--samples", a->samples, "with --fd: score the PNG images of this folder (written by `diffuse sample --image-dir`, whose labels.csv gives their classes) instead of sampling the checkpoint");
  cmd->add_option("--fd-count", a->fd_count, "with --fd: samples drawn (DDIM, --fd-steps; classes cycled for a class-conditional model) and test images compared")->capture_default_str();
  cmd->add_option("--fd-steps", a->fd_steps, "with --fd: DDIM steps of the samples")->capture_default_str();
  cmd->add_option("--fd-guidance", a->fd_guidance, "with --fd: classifier-free guidance scale of the samples (class-conditional models)")->capture_default_str();

  cmd->callback([a] {
    DF_CHECK(a->batch >= 1 && a->count >= 0 && a->strata >= 0, "--batch must be >= 1, --count and --strata >= 0");
    DF_CHECK(a->t_samples >= 1, "--t-samples must be at least 1");
    Device dev = resolve_device(a->device);
    train::LoadedModel m = train::load_checkpoint(a->checkpoint, dev, !a->no_ema, a->allow_nonfinite);
    if (!m.nonfinite.empty())
      std::fprintf(stderr, "diffuse: warning: %s: %zu tensor(s) hold NaN or Inf (%s%s); the bound will be meaningless\n",
                   a->checkpoint.c_str(), m.nonfinite.size(), m.nonfinite[0].c_str(), m.nonfinite.size() > 1 ? ", ..." : "");
    const nn::UNetConfig& uc = m.unet->config();
    // A super-resolution model has no bound or samples without its low-resolution input; its test
    // images still judge the folder of a cascade's samples.
    if (a->fd.empty() || a->samples.empty())
      train::refuse_super_res(uc, a->checkpoint, "diffuse eval (but for --fd JUDGE --samples DIR, which scores a "
                              "cascade's images written by sample --image-dir)");
    // A latent model's bound would be a likelihood of latents scaled by an encoder, not of the
    // images, and not comparable with any pixel model's bits/dim; its samples are judged decoded.
    const bool latent = m.autoencoder != nullptr;
    DF_CHECK(!latent || !a->fd.empty(), a->checkpoint, " is a latent diffusion model (trained with --autoencoder): "
             "eval's bits/dim would be of its latents, not of images; score its decoded samples with --fd CLASSIFIER");
    // The images the model stands for: its own, or its autoencoder's for a latent model.
    const int image_size = latent ? m.autoencoder->config().image_size : uc.image_size;
    const int image_channels = latent ? m.autoencoder->config().in_channels : uc.in_channels;
    if (!a->fd.empty()) {
      DF_CHECK(a->fd_count >= 2 && a->fd_steps >= 1, "--fd-count must be at least 2 and --fd-steps at least 1");
      train::LoadedClassifier judge = train::load_classifier(a->fd, dev);
      const nn::UNetConfig& jc = judge.net->config();
      DF_CHECK(jc.image_size == image_size && jc.in_channels == image_channels, a->fd, " classifies ",
               jc.image_size, "x", jc.image_size, "x", jc.in_channels, " images, the model draws ", image_size, "x",
               image_size, "x", image_channels);
      if (judge.config.noise != train::ClassifierNoise::none)
        std::fprintf(stderr, "diffuse: note: %s is a noise-aware classifier; a judge trained on clean images "
                     "(--noise none) is the better one\n", a->fd.c_str());
      Tensor samples;
      std::vector<int64_t> targets;
      if (!a->samples.empty()) {
        std::tie(samples, targets) = read_sample_folder(a->samples, image_size, image_channels);
      } else {
        const std::shared_ptr<const diffusion::Schedule> sched = train::model_schedule(m);
        diffusion::Denoiser f = train::make_denoiser(m.unet, m.config.timesteps, dev);
        ag::NoGrad ng;
        samples = Tensor::empty({a->fd_count, image_size, image_size, image_channels});
        Progress progress("sample", a->fd_count);
        for (int s = 0; s < a->fd_count; s += a->batch) {
          const int n = std::min(a->batch, a->fd_count - s);
          diffusion::SamplerOptions o;
          o.shape = Shape{n, uc.image_size, uc.image_size, uc.in_channels};
          o.seed = a->seed + static_cast<uint64_t>(s) * 0x9E3779B97F4A7C15ull;
          o.steps = a->fd_steps;
          o.prediction = train::prediction_of(m.config);
          o.clip_x0 = !latent;  // latents have no [-1, 1] range to clip to
          if (uc.num_classes > 0) {
            std::vector<int64_t> l(static_cast<size_t>(n));
            for (int i = 0; i < n; ++i) l[i] = (s + i) % uc.num_classes;
            targets.insert(targets.end(), l.begin(), l.end());
            o.labels = Tensor::from_vector_i64(l, {n});
            if (a->fd_guidance != 0) {
              o.guidance.cfg_scale = a->fd_guidance;
              o.guidance.null_labels = Tensor::full({n}, uc.num_classes, DType::i64);
            }
          }
          o.callback = [&](int i, int total, const Tensor&, const Tensor&) {
            progress.update(s + static_cast<int64_t>(n) * (i + 1) / total);
          };
          Tensor x = diffusion::sample(diffusion::SamplerKind::ddim, *sched, f, o);
          if (latent) x = train::decode_latents(*m.autoencoder, x, m.latent_scale, a->batch);
          samples.slice(s, s + n).copy_(x);
        }
      }
      const std::string spec = a->dataset.empty() ? m.config.dataset : a->dataset;
      train::DatasetOptions data_options;
      data_options.image_size = image_size;
      data_options.channels = image_channels == 1 ? 1 : 3;
      data_options.labels = true;
      data::Dataset test = train::load_dataset(spec, "test", data_options);
      const int64_t n = std::min<int64_t>(samples.size(0), test.size());
      DF_CHECK(n >= 2, "dataset ", spec, " has fewer than 2 images to compare with");
      const train::ClassifierOutputs fs = train::classify(judge, samples);
      const train::ClassifierOutputs ft = train::classify(judge, test.images.slice(0, n));
      const double fd = train::feature_distance(fs.features, ft.features, fs.dim);
      std::printf("feature distance %.3f  (%lld samples vs %lld %s images of %s, %lld features of %s)\n", fd,
                  static_cast<long long>(samples.size(0)), static_cast<long long>(n),
                  test.split == "test" ? "test" : "training", spec.c_str(), static_cast<long long>(fs.dim),
                  a->fd.c_str());
      nlohmann::json out{{"checkpoint", a->checkpoint}, {"step", m.step}, {"classifier", a->fd},
                         {"feature_distance", fd}, {"samples", samples.size(0)}, {"reference_images", n},
                         {"dataset", spec}, {"split", test.split}};
      if (!targets.empty()) {
        int64_t right = 0;
        for (size_t i = 0; i < targets.size(); ++i) right += fs.labels[i] == targets[i];
        const double acc = static_cast<double>(right) / static_cast<double>(targets.size());
        std::printf("label accuracy %.1f%%  (the judge's label equals the sample's class)\n", 100 * acc);
        out["label_accuracy"] = acc;
      }
      if (a->samples.empty()) {
        out["sampler"] = "ddim";
        out["steps"] = a->fd_steps;
        out["guidance"] = a->fd_guidance;
      }
      if (!a->json.empty()) {
        const std::string text = out.dump(2) + "\n";
        write_file_atomic(a->json, text.data(), text.size());
        std::printf("wrote %s\n", a->json.c_str());
      }
      return;
    }
    const std::string spec = a->dataset.empty() ? m.config.dataset : a->dataset;
    // An image folder is read at the model's own size and channels (unless its spec says @size),
    // labelled by its sub-folders when the model has classes.
    train::DatasetOptions data_options;
    data_options.image_size = uc.image_size;
    data_options.channels = uc.in_channels == 1 ? 1 : 3;
    data_options.labels = uc.num_classes > 0;
    data::Dataset test = train::load_dataset(spec, "test", data_options);
    const bool test_split = test.split == "test";
    const std::string scored = test_split ? "test images" : "images of " + spec + ", which has no test split";
    DF_CHECK(test.images.size(1) == uc.image_size && test.images.size(3) == uc.in_channels, "dataset ", spec, ": the ",
             test_split ? "test images" : "images", " are ", test.images.size(1), "x", test.images.size(2), "x",
             test.images.size(3), " but the model takes ", uc.image_size, "x", uc.image_size, "x", uc.in_channels);
    DF_CHECK(uc.num_classes == 0 || test.num_classes == uc.num_classes, "dataset ", spec, " has ", test.num_classes,
             " classes but the model was trained on ", uc.num_classes);
    if (!test_split)
      std::fprintf(stderr, "diffuse: %s has no test split: scoring all of its images%s\n", spec.c_str(),
                   spec == m.config.dataset ? ", the ones the model was trained on (a bound on training data)" : "");
    int64_t n = a->count == 0 ? test.size() : std::min<int64_t>(a->count, test.size());
    const std::shared_ptr<const diffusion::Schedule> sched = train::model_schedule(m);
    // vdm: the continuous-time VDM bound (Kingma et al. 2021 eq. 11-17) on the model's own
    // schedule, the quantity it was trained on; otherwise the discrete VLB of Ho et al. eq. 5.
    const bool vdm = train::continuous_time(m.config);
    diffusion::Prediction pred = train::prediction_of(m.config);
    // The VLB uses the model's own variance: beta_tilde or beta as configured, or the one it learned
    // (hybrid; improved DDPM sec. 3.1), which needs all 2C channels; the inversion round trip takes
    // the eps channels.
    const diffusion::VarianceKind variance_kind = train::ancestral_variance(m.config);
    const bool learned = variance_kind == diffusion::VarianceKind::learned;
    diffusion::Denoiser f = train::make_denoiser(m.unet, m.config.timesteps, dev);
    diffusion::Denoiser f_vlb = learned ? train::make_denoiser(m.unet, m.config.timesteps, dev, true) : f;
    ag::NoGrad ng;
    std::vector<double> per_sample;
    double prior = 0, diff = 0, dec = 0;
    Progress progress("eval", n);
    for (int64_t s = 0; s < n; s += a->batch) {
      int64_t e = std::min<int64_t>(n, s + a->batch);
      diffusion::BitsPerDim b;
      if (vdm) {
        diffusion::VdmBoundOptions o;
        o.prediction = pred;
        o.seed = a->seed + static_cast<uint64_t>(s);
        o.t_samples = a->t_samples;
        if (uc.num_classes > 0) o.labels = test.labels.slice(s, e);
        b = diffusion::vdm_bits_per_dim(*sched, f, test.images.slice(s, e), o);
      } else {
        diffusion::VlbOptions o;
        o.prediction = pred;
        o.variance = variance_kind;
        o.seed = a->seed + static_cast<uint64_t>(s);
        o.strata = a->strata;
        if (uc.num_classes > 0) o.labels = test.labels.slice(s, e);
        const auto* discrete = dynamic_cast<const diffusion::DiscreteSchedule*>(sched.get());
        DF_CHECK(discrete != nullptr, "eval: objective '", enum_name(m.config.objective), "' without DDPM betas");
        b = diffusion::vlb_bits_per_dim(*discrete, f_vlb, test.images.slice(s, e), o);
      }
      per_sample.insert(per_sample.end(), b.per_sample.begin(), b.per_sample.end());
      prior += b.prior_bpd * (e - s);
      diff += b.diffusion_bpd * (e - s);
      dec += b.decoder_bpd * (e - s);
      progress.update(e);
    }
    double mean = 0, var = 0;
    for (double v : per_sample) mean += v;
    mean /= static_cast<double>(per_sample.size());
    for (double v : per_sample) var += (v - mean) * (v - mean);
    double se = per_sample.size() > 1 ? std::sqrt(var / (per_sample.size() - 1) / per_sample.size()) : 0;
    const std::string variance(enum_name(variance_kind));
    const std::string how = vdm ? "VDM bound, " + sched->name() + " schedule, " + std::to_string(a->t_samples) +
                                      " t-sample" + (a->t_samples > 1 ? "s" : "")
                                : (a->strata ? "stratified, " + std::to_string(a->strata) + " strata" : "all terms") +
                                      ", variance " + variance;
    std::printf("bits/dim  %.4f +- %.4f  (prior %.4f, diffusion %.4f, decoder %.4f; %lld %s, %s)\n", mean, se,
                prior / n, diff / n, dec / n, static_cast<long long>(n), scored.c_str(), how.c_str());
    nlohmann::json out{{"checkpoint", a->checkpoint}, {"step", m.step},   {"images", n}, {"dataset", spec},
                       {"split", test.split},
                       {"bits_per_dim", mean},        {"stderr", se},     {"prior_bpd", prior / n},
                       {"diffusion_bpd", diff / n},   {"decoder_bpd", dec / n}, {"bound", vdm ? "vdm" : "vlb"}};
    if (vdm) {
      out["schedule"] = sched->name();
      out["t_samples"] = a->t_samples;
    } else {
      out["strata"] = a->strata;
      out["variance"] = variance;
    }
    if (a->inversion_count > 0) {
      int64_t k = std::min<int64_t>(a->inversion_count, test.size());
      Tensor x0 = test.images.slice(0, k);
      diffusion::SamplerOptions so;
      so.shape = x0.shape();
      so.steps = a->inversion_steps;
      so.prediction = pred;
      if (uc.num_classes > 0) so.labels = test.labels.slice(0, k);
      Tensor zT = diffusion::ddim_invert(*sched, f, x0, so);
      so.z_T = zT;
      Tensor back = diffusion::sample_ddim(*sched, f, so);
      std::vector<float> a0 = x0.to_vector(), b0 = back.to_vector();
      double se2 = 0, mx = 0;
      for (size_t i = 0; i < a0.size(); ++i) {
        double d = static_cast<double>(a0[i]) - b0[i];
        se2 += d * d;
        mx = std::max(mx, std::fabs(d));
      }
      double rmse = std::sqrt(se2 / static_cast<double>(a0.size()));
      std::printf("DDIM inversion round trip (%d steps, %lld images): RMSE %.5f, max |error| %.5f (data range [-1, 1])\n",
                  a->inversion_steps, static_cast<long long>(k), rmse, mx);
      out["inversion"] = {{"steps", a->inversion_steps}, {"images", k}, {"rmse", rmse}, {"max_abs_error", mx}};
    }
    if (!a->json.empty()) {
      std::string text = out.dump(2) + "\n";
      write_file_atomic(a->json, text.data(), text.size());
      std::printf("wrote %s\n", a->json.c_str());
    }
  });
}

}  // namespace diffuse::tools
