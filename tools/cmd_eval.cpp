// `diffuse eval`: bits per dimension on the test split (or, for a source without one, all its
// images, said so), and the DDIM inversion round trip.
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/check.h"
#include "core/file_io.h"
#include "models/diffusion/likelihood.h"
#include "models/diffusion/sampler.h"
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
};

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

  cmd->callback([a] {
    DF_CHECK(a->batch >= 1 && a->count >= 0 && a->strata >= 0, "--batch must be >= 1, --count and --strata >= 0");
    DF_CHECK(a->t_samples >= 1, "--t-samples must be at least 1");
    Device dev = resolve_device(a->device);
    train::LoadedModel m = train::load_checkpoint(a->checkpoint, dev, !a->no_ema, a->allow_nonfinite);
    if (!m.nonfinite.empty())
      std::fprintf(stderr, "diffuse: warning: %s: %zu tensor(s) hold NaN or Inf (%s%s); the bound will be meaningless\n",
                   a->checkpoint.c_str(), m.nonfinite.size(), m.nonfinite[0].c_str(), m.nonfinite.size() > 1 ? ", ..." : "");
    const nn::UNetConfig& uc = m.unet->config();
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
        DF_CHECK(discrete != nullptr, "eval: objective '", m.config.objective, "' without DDPM betas");
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
