// capi/diffuse_c.cpp: the C API (include/diffuse/diffuse.h) over the C++ library.
//
// Each entry point is `noexcept` and runs its body inside guarded(), which turns every exception
// into a status and a thread-local message: nothing may unwind into C (undefined behaviour), and a
// library must never take its host process down. Arguments are checked here, before the C++ API
// sees them, so that a caller's mistake reads as DIFFUSE_ERR_INVALID_ARGUMENT with a message in
// the caller's terms (the argument's name, what it was, what was expected) rather than as a
// failed check deep inside a kernel.
//
// The model path is the C++ path of `diffuse sample` (tools/cmd_sample.cpp): train::load_checkpoint,
// train::make_schedule, train::prediction_of, train::make_denoiser and diffusion::sample with the
// same options and the same per-batch seeds, so the two give identical images (checked in CI by
// tests/capi/embed_examples.sh).
#include "diffuse/diffuse.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "build_config.h"
#include "core/check.h"
#include "core/device.h"
#include "core/image_io.h"
#include "core/tensor.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/interop/diffusers.h"
#include "models/train/super_res.h"
#include "models/train/trainer.h"

using namespace diffuse;
namespace dd = diffuse::diffusion;

struct diffuse_model {
  train::LoadedModel loaded;
  Device device;
  std::string device_name;
  dd::Denoiser denoiser;
  // The UNet keeps per-call state (its dropout counter) and its forward is not written to run
  // twice at once, so one model runs one call at a time.
  std::mutex mu;
};

struct diffuse_schedule {
  std::shared_ptr<const dd::Schedule> schedule;  // shared: a vdm model's learned one holds its SNR net
  int64_t timesteps = 0;  // 0: continuous
};

struct diffuse_sampler {
  std::string name;
  dd::SamplerKind kind = dd::SamplerKind::ddim;
  int64_t steps = 50;
  double eta = 0;
  int64_t corrector_steps = 1;  // langevin, pc
  double snr = 0.16;
  double guidance = 0;
  int64_t null_label = -1;  // -1: the model's num_classes
  dd::Prediction prediction = dd::Prediction::eps;
  bool clip = true;
  std::optional<dd::Spacing> spacing;  // unset: the sampler's default (dd::sampler_spacing)
  int64_t batch = 64;
};

namespace {

// The message buffer is a fixed array: recording an error must not allocate, because it runs in
// catch handlers of a noexcept function where a second exception would terminate the process.
constexpr size_t kMessageBytes = 2048;
thread_local char g_message[kMessageBytes] = "";

// An error found by this file's own checks, with the status it maps to.
struct Failure {
  diffuse_status status;
  std::string message;
};

template <class... Parts>
[[noreturn]] void fail(diffuse_status status, Parts&&... parts) {
  throw Failure{status, detail::concat(std::forward<Parts>(parts)...)};
}

diffuse_status record(diffuse_status status, const char* fn, const char* message) noexcept {
  std::snprintf(g_message, kMessageBytes, "%s: %s", fn, message);
  return status;
}

bool mentions_out_of_memory(const char* what) {
  return std::strstr(what, "out of memory") != nullptr || std::strstr(what, "out of host memory") != nullptr;
}

// Runs `body`; every exception becomes a status. `library_error` is what a diffuse::Error thrown
// by the C++ library means in this call (a file problem when loading, a bad argument the checks
// here did not anticipate elsewhere).
template <class Body>
diffuse_status guarded(const char* fn, diffuse_status library_error, Body&& body) noexcept {
  g_message[0] = '\0';
  try {
    body();
    return DIFFUSE_OK;
  } catch (const Failure& f) {
    return record(f.status, fn, f.message.c_str());
  } catch (const std::bad_alloc&) {
    return record(DIFFUSE_ERR_OUT_OF_MEMORY, fn, "out of host memory");
  } catch (const Error& e) {
    // message(): what went wrong, without the source location (diffuse::Error's what()).
    return record(mentions_out_of_memory(e.what()) ? DIFFUSE_ERR_OUT_OF_MEMORY : library_error, fn,
                  e.message().c_str());
  } catch (const std::exception& e) {
    return record(DIFFUSE_ERR_INTERNAL, fn, e.what());
  } catch (...) {
    return record(DIFFUSE_ERR_INTERNAL, fn, "unknown exception");
  }
}

template <class T>
void require(const T* p, const char* name) {
  if (p == nullptr) fail(DIFFUSE_ERR_INVALID_ARGUMENT, name, " is NULL");
}

// n x height x width x channels as an element count, each >= 1, without overflow.
int64_t element_count(int64_t n, int64_t h, int64_t w, int64_t c) {
  if (n < 1) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "n is ", n, "; at least 1 sample is needed");
  if (h < 1 || w < 1 || c < 1)
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "the sample shape ", h, "x", w, "x", c, " must be at least 1x1x1");
  // Floats are counted in int64 and addressed in bytes: keep n * h * w * c * 4 representable.
  const int64_t limit = std::numeric_limits<int64_t>::max() / 4;
  int64_t total = n;
  for (int64_t d : {h, w, c}) {
    if (total > limit / d) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "n x ", h, "x", w, "x", c, " is too large");
    total *= d;
  }
  return total;
}

void check_out_len(size_t out_len, int64_t need, int64_t n, int64_t h, int64_t w, int64_t c) {
  if (out_len < static_cast<uint64_t>(need))
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "out_len is ", out_len, " floats; ", need, " are needed for n = ", n,
         " samples of ", h, "x", w, "x", c);
}

// The names are the library's one table (models/diffusion/schedule.h); a bad one is the caller's
// argument, not a library failure.
dd::Spacing parse_spacing(const std::string& s) {
  try {
    return dd::parse_spacing(s);
  } catch (const Error& e) {
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, e.message());
  }
}

// "auto" without the notice resolve_device() prints: a library does not write to its host's stderr.
// The spelling is core's one parser (parse_device_spec); a bad one is the caller's argument.
Device parse_device(const char* spec) {
  const std::string s = spec ? spec : "auto";
  std::optional<Device> asked;
  try {
    asked = parse_device_spec(s);
  } catch (const Error& e) {
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, e.message());
  }
  if (!asked) return cuda_available() ? Device::cuda(0) : Device::cpu();
  if (asked->is_cpu()) return *asked;
  if (!cuda_available())
    fail(DIFFUSE_ERR_UNSUPPORTED, "device '", s, "' asked for, but CUDA is not available: ", cuda_unavailable_reason());
  try {
    return resolve_device(s);
  } catch (const Error& e) {
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "device '", s, "': ", e.message());
  }
}

constexpr uint64_t kBatchSeedStride = 0x9E3779B97F4A7C15ull;  // tools/cmd_sample.cpp

// Wraps caller memory that the samplers only read (they clone z_T and x0 before touching them).
Tensor wrap_input(const float* p, int64_t rows, int64_t h, int64_t w, int64_t c) {
  return Tensor::wrap(const_cast<float*>(p), Shape{rows, h, w, c}, DType::f32);
}

// What one sampling or inversion needs besides the sampler's own settings.
struct Job {
  const dd::Schedule* schedule = nullptr;
  dd::Denoiser denoiser;
  dd::Prediction prediction = dd::Prediction::eps;
  dd::VarianceKind variance = dd::VarianceKind::beta_tilde;
  int64_t n = 0, h = 0, w = 0, c = 0;
  const int64_t* labels = nullptr;  // n labels or NULL
  int64_t cycle_classes = 0;        // > 0 and labels NULL: sample i gets i % cycle_classes
  int64_t null_label = -1;          // guidance's unconditional label
};

dd::SamplerOptions batch_options(const diffuse_sampler& s, const Job& job, int64_t start, int64_t rows) {
  dd::SamplerOptions o;
  o.shape = Shape{rows, job.h, job.w, job.c};
  o.steps = static_cast<int>(s.steps);
  o.prediction = job.prediction;
  o.variance = job.variance;
  o.clip_x0 = s.clip;
  o.eta = s.eta;
  o.corrector_steps = static_cast<int>(s.corrector_steps);
  o.snr = s.snr;
  o.spacing = dd::sampler_spacing(s.kind, s.spacing);
  if (job.labels || job.cycle_classes > 0) {
    std::vector<int64_t> l(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) l[i] = job.labels ? job.labels[start + i] : (start + i) % job.cycle_classes;
    o.labels = Tensor::from_vector_i64(l, {rows});
  }
  if (s.guidance != 0) {
    o.guidance.cfg_scale = s.guidance;
    o.guidance.null_labels = Tensor::full({rows}, static_cast<double>(job.null_label), DType::i64);
  }
  return o;
}

void run_sampling(const diffuse_sampler& s, const Job& job, uint64_t seed, const float* z_T, float* out) {
  ag::NoGrad no_grad;
  const int64_t per = job.h * job.w * job.c;
  for (int64_t start = 0; start < job.n; start += s.batch) {
    const int64_t rows = std::min(s.batch, job.n - start);
    dd::SamplerOptions o = batch_options(s, job, start, rows);
    o.seed = seed + static_cast<uint64_t>(start) * kBatchSeedStride;
    if (z_T) o.z_T = wrap_input(z_T + start * per, rows, job.h, job.w, job.c);
    Tensor x = dd::sample(s.kind, *job.schedule, job.denoiser, o);
    std::memcpy(out + start * per, x.data<float>(), static_cast<size_t>(rows * per) * sizeof(float));
  }
}

void run_inversion(const diffuse_sampler& s, const Job& job, const float* images, float* out) {
  ag::NoGrad no_grad;
  const int64_t per = job.h * job.w * job.c;
  for (int64_t start = 0; start < job.n; start += s.batch) {
    const int64_t rows = std::min(s.batch, job.n - start);
    dd::SamplerOptions o = batch_options(s, job, start, rows);
    Tensor z = dd::ddim_invert(*job.schedule, job.denoiser, wrap_input(images + start * per, rows, job.h, job.w, job.c), o);
    std::memcpy(out + start * per, z.data<float>(), static_cast<size_t>(rows * per) * sizeof(float));
  }
}

// The caller's C function as a Denoiser. Inputs are the sampler's own contiguous cpu tensors;
// labels are i64 because batch_options makes them so (and the guidance null labels follow).
dd::Denoiser callback_denoiser(diffuse_denoise_fn fn, void* user_data) {
  auto calls = std::make_shared<int64_t>(0);
  return [fn, user_data, calls](const Tensor& z, const Tensor& t, const Tensor& labels) {
    const int64_t n = z.size(0);
    Tensor out = Tensor::empty(z.shape());
    // NaN first: an element the callback forgets to write is then caught below instead of
    // silently feeding stale memory into the sampler.
    out.poison_();
    const int64_t* lp = labels.defined() ? labels.data<int64_t>() : nullptr;
    ++*calls;
    int rc = 0;
    try {
      rc = fn(user_data, z.data<float>(), t.data<float>(), lp, n, out.data<float>());
    } catch (...) {
      fail(DIFFUSE_ERR_CALLBACK, "the denoise callback threw an exception (call ", *calls,
           "); a callback reports failure by returning non-zero");
    }
    if (rc != 0) fail(DIFFUSE_ERR_CALLBACK, "the denoise callback returned ", rc, " (call ", *calls, "); sampling aborted");
    const float* p = out.data<float>();
    const int64_t per = z.numel() / n;
    for (int64_t i = 0; i < out.numel(); ++i)
      if (!std::isfinite(p[i]))
        fail(DIFFUSE_ERR_CALLBACK, "the denoise callback left ", p[i], " at sample ", i / per, ", element ", i % per,
             " of its output (call ", *calls, ", n = ", n, ", ", per,
             " floats per sample); every element of out must be written with a finite value");
    return out;
  };
}

// The model's denoiser for DDIM inversion, which has no use for learned-variance channels (it
// always takes the deterministic path): keep the first C of the 2C output channels.
dd::Denoiser prediction_channels_only(dd::Denoiser f, int64_t c) {
  return [f = std::move(f), c](const Tensor& z, const Tensor& t, const Tensor& labels) {
    Tensor full = f(z, t, labels);
    if (full.size(-1) == c) return full;
    Tensor out = Tensor::empty(z.shape());
    const float* src = full.data<float>();
    float* dst = out.data<float>();
    for (int64_t px = 0; px < z.numel() / c; ++px) std::memcpy(dst + px * c, src + px * 2 * c, c * sizeof(float));
    return out;
  };
}

void check_sampler(const diffuse_sampler* s, const diffuse_schedule* sch) {
  require(s, "sampler");
  require(sch, "schedule");
  if (sch->timesteps > 0 && s->steps > sch->timesteps)
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "the sampler has ", s->steps, " steps but the schedule only ", sch->timesteps,
         " (diffuse_sampler_set_steps)");
}

// Labels and guidance against a model's classes.
void model_labels(const diffuse_sampler& s, const diffuse_model& m, int64_t n, const int64_t* labels, Job& job) {
  const int64_t k = m.loaded.unet->config().num_classes;
  if (k == 0) {
    if (labels) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "labels given, but the model is unconditional; pass labels = NULL");
    if (s.guidance != 0)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "guidance scale ", s.guidance,
           " needs a class-conditional model; this one is unconditional");
    return;
  }
  if (labels) {
    for (int64_t i = 0; i < n; ++i)
      if (labels[i] < 0 || labels[i] > k)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "labels[", i, "] is ", labels[i], "; the model has classes 0..", k - 1,
             " and null label ", k);
    job.labels = labels;
  } else {
    job.cycle_classes = k;
  }
  job.null_label = s.null_label < 0 ? k : s.null_label;
  if (s.guidance != 0 && job.null_label > k)
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "null label ", job.null_label, " is outside the model's labels 0..", k);
}

void callback_labels(const diffuse_sampler& s, const int64_t* labels, Job& job) {
  job.labels = labels;
  if (s.guidance != 0) {
    if (!labels) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "guidance scale ", s.guidance, " needs labels; labels is NULL");
    if (s.null_label < 0)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "guidance with a callback needs a null label >= 0 "
           "(diffuse_sampler_set_guidance(sampler, scale, null_label))");
    job.null_label = s.null_label;
  }
}

const char* prediction_name_list = "0 (eps), 1 (x0) or 2 (v)";

// T of the model's schedule, 0 for a continuous one (objective vdm: learned or linear log-SNR).
int64_t model_timesteps(const train::LoadedModel& m) {
  return train::continuous_time(m.config) ? 0 : m.config.timesteps;
}

// The job of sampling or inverting n images with a loaded model: the schedule given, or the
// model's own (kept in `own`); the model's image shape, labels, denoiser and prediction.
Job model_job(const diffuse_sampler* sampler, const diffuse_schedule* schedule, diffuse_model& m, int64_t n,
              const int64_t* labels, size_t out_len, std::unique_ptr<diffuse_schedule>& own) {
  require(sampler, "sampler");
  if (!schedule) {
    own = std::make_unique<diffuse_schedule>();
    own->schedule = train::model_schedule(m.loaded);
    own->timesteps = model_timesteps(m.loaded);
    schedule = own.get();
  }
  check_sampler(sampler, schedule);
  const nn::UNetConfig& uc = m.loaded.unet->config();
  Job job;
  job.n = n;
  job.h = job.w = uc.image_size;
  job.c = uc.in_channels;
  check_out_len(out_len, element_count(n, job.h, job.w, job.c), n, job.h, job.w, job.c);
  model_labels(*sampler, m, n, labels, job);
  job.schedule = schedule->schedule.get();
  job.denoiser = m.denoiser;
  job.prediction = train::prediction_of(m.loaded.config);
  return job;
}

// The job of sampling or inverting n images of h x w x c with the caller's denoiser.
Job callback_job(const diffuse_sampler* sampler, const diffuse_schedule* schedule, diffuse_denoise_fn denoise,
                 void* user_data, int64_t n, int64_t h, int64_t w, int64_t c, const int64_t* labels, size_t out_len) {
  check_sampler(sampler, schedule);
  if (!denoise) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "denoise is NULL");
  check_out_len(out_len, element_count(n, h, w, c), n, h, w, c);
  Job job;
  job.n = n;
  job.h = h;
  job.w = w;
  job.c = c;
  callback_labels(*sampler, labels, job);
  job.schedule = schedule->schedule.get();
  job.denoiser = callback_denoiser(denoise, user_data);
  job.prediction = sampler->prediction;
  return job;
}

// Inversion runs DDIM backwards.
void require_ddim(const diffuse_sampler* sampler) {
  require(sampler, "sampler");
  if (sampler->kind != dd::SamplerKind::ddim)
    fail(DIFFUSE_ERR_INVALID_ARGUMENT, "inversion needs a 'ddim' sampler; this one is '", sampler->name, "'");
}

}  // namespace

extern "C" {

// ---- errors and version ---------------------------------------------------------------------

const char* diffuse_last_error(void) noexcept { return g_message; }

const char* diffuse_status_name(diffuse_status status) noexcept {
  switch (status) {
    case DIFFUSE_OK: return "DIFFUSE_OK";
    case DIFFUSE_ERR_INVALID_ARGUMENT: return "DIFFUSE_ERR_INVALID_ARGUMENT";
    case DIFFUSE_ERR_IO: return "DIFFUSE_ERR_IO";
    case DIFFUSE_ERR_UNSUPPORTED: return "DIFFUSE_ERR_UNSUPPORTED";
    case DIFFUSE_ERR_CALLBACK: return "DIFFUSE_ERR_CALLBACK";
    case DIFFUSE_ERR_OUT_OF_MEMORY: return "DIFFUSE_ERR_OUT_OF_MEMORY";
    case DIFFUSE_ERR_INTERNAL: return "DIFFUSE_ERR_INTERNAL";
    default: break;  // any other int a C caller passes, the *_ENUM_ bounds included
  }
  return "unknown status";
}

const char* diffuse_version(void) noexcept { return DIFFUSE_VERSION; }

diffuse_status diffuse_cuda_device_count(int* count) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(count, "count");
    *count = cuda_device_count();
  });
}

// ---- models ---------------------------------------------------------------------------------

diffuse_status diffuse_model_load(const char* checkpoint_path, const char* device, unsigned flags,
                                  diffuse_model** out) noexcept {
  return guarded(__func__, DIFFUSE_ERR_IO, [&] {
    require(out, "out");
    *out = nullptr;
    require(checkpoint_path, "checkpoint_path");
    if (flags & ~DIFFUSE_LOAD_LIVE_WEIGHTS)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "unknown flags 0x", std::hex, flags, " (only DIFFUSE_LOAD_LIVE_WEIGHTS)");
    const Device dev = parse_device(device);
    auto m = std::make_unique<diffuse_model>();
    m->device = dev;
    m->device_name = dev.str();
    set_current_device(dev);
    try {
      m->loaded = train::load_checkpoint(checkpoint_path, dev, (flags & DIFFUSE_LOAD_LIVE_WEIGHTS) == 0);
    } catch (const Error&) {
      throw;  // guarded() classifies it: a file problem, or memory
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      // std::stoll on a damaged "step" and the like: still a bad file, not a bug.
      fail(DIFFUSE_ERR_IO, checkpoint_path, ": malformed checkpoint (", e.what(), ")");
    }
    // Its denoiser has no way to take a low-resolution image: refused as a file the API cannot use.
    if (m->loaded.unet->config().super_res()) {
      try {
        train::refuse_super_res(m->loaded.unet->config(), checkpoint_path, "the C API");
      } catch (const Error& e) {
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, e.message());
      }
    }
    // The C API returns what the UNet draws; a latent model's draws would need its decoder.
    if (m->loaded.autoencoder)
      fail(DIFFUSE_ERR_UNSUPPORTED, checkpoint_path, ": a latent diffusion model (trained with --autoencoder); "
           "the C API does not decode latents yet: sample it with `diffuse sample`");
    m->denoiser = train::make_denoiser(m->loaded.unet, m->loaded.config.timesteps, dev);
    *out = m.release();
  });
}

void diffuse_model_free(diffuse_model* model) noexcept { delete model; }

diffuse_status diffuse_model_image_shape(const diffuse_model* model, int64_t* height, int64_t* width,
                                         int64_t* channels) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(model, "model");
    const nn::UNetConfig& c = model->loaded.unet->config();
    if (height) *height = c.image_size;
    if (width) *width = c.image_size;
    if (channels) *channels = c.in_channels;
  });
}

diffuse_status diffuse_model_num_classes(const diffuse_model* model, int64_t* num_classes) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(model, "model");
    require(num_classes, "num_classes");
    *num_classes = model->loaded.unet->config().num_classes;
  });
}

diffuse_status diffuse_model_prediction(const diffuse_model* model, diffuse_prediction* prediction) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(model, "model");
    require(prediction, "prediction");
    switch (train::prediction_of(model->loaded.config)) {
      case dd::Prediction::eps: *prediction = DIFFUSE_PREDICT_EPS; break;
      case dd::Prediction::x0: *prediction = DIFFUSE_PREDICT_X0; break;
      case dd::Prediction::v: *prediction = DIFFUSE_PREDICT_V; break;
    }
  });
}

diffuse_status diffuse_model_device(const diffuse_model* model, const char** device) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(model, "model");
    require(device, "device");
    *device = model->device_name.c_str();
  });
}

diffuse_status diffuse_model_predict(const diffuse_model* model, int64_t n, const float* x, const float* t,
                                     const int64_t* labels, float* out, size_t out_len) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(model, "model");
    require(x, "x");
    require(t, "t");
    require(out, "out");
    auto* m = const_cast<diffuse_model*>(model);  // the lock is the only thing that changes
    const nn::UNetConfig& uc = m->loaded.unet->config();
    const int64_t count = element_count(n, uc.image_size, uc.image_size, uc.in_channels);
    check_out_len(out_len, count, n, uc.image_size, uc.image_size, uc.in_channels);
    std::vector<float> ts(t, t + n);
    for (int64_t i = 0; i < n; ++i)
      if (!(ts[i] > 0.f && ts[i] <= 1.f)) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "t[", i, "] = ", ts[i], " is outside (0, 1]");
    Tensor lt;
    if (labels) {
      if (uc.num_classes == 0) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "labels given to an unconditional model");
      for (int64_t i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] > uc.num_classes)
          fail(DIFFUSE_ERR_INVALID_ARGUMENT, "labels[", i, "] = ", labels[i], " is outside [0, ", uc.num_classes, "]");
      lt = Tensor::from_vector_i64(std::vector<int64_t>(labels, labels + n), {n});
    }
    Tensor xt = Tensor::from_vector(std::vector<float>(x, x + count), {n, uc.image_size, uc.image_size, uc.in_channels});
    std::lock_guard<std::mutex> lock(m->mu);
    set_current_device(m->device);
    ag::NoGrad ng;
    Tensor y = m->denoiser(xt, Tensor::from_vector(ts, {n}), lt);
    std::copy_n(y.data<float>(), count, out);
  });
}

diffuse_status diffuse_import_diffusers(const char* dir, const char* checkpoint_path) noexcept {
  return guarded(__func__, DIFFUSE_ERR_IO, [&] {
    require(dir, "dir");
    require(checkpoint_path, "checkpoint_path");
    interop::import_diffusers(dir, checkpoint_path);
  });
}

diffuse_status diffuse_export_diffusers(const char* checkpoint_path, const char* dir) noexcept {
  return guarded(__func__, DIFFUSE_ERR_IO, [&] {
    require(checkpoint_path, "checkpoint_path");
    require(dir, "dir");
    interop::export_diffusers(checkpoint_path, dir);
  });
}

// ---- schedules ------------------------------------------------------------------------------

diffuse_status diffuse_schedule_create(const char* name, int64_t timesteps, diffuse_schedule** out) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(out, "out");
    *out = nullptr;
    require(name, "name");
    const std::string n = name;
    auto s = std::make_unique<diffuse_schedule>();
    if (n == "linear_logsnr") {
      if (timesteps != 0)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "schedule 'linear_logsnr' is continuous: timesteps must be 0, got ", timesteps);
      s->schedule = std::make_unique<dd::LinearLogSNR>();
    } else {
      // The training config's DDPM schedules, by its one table of names and train::make_schedule,
      // so a schedule named here has the betas `diffuse train --schedule <name>` trains with.
      const std::optional<train::ScheduleKind> kind = try_parse_enum<train::ScheduleKind>(n);
      if (!kind)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "unknown schedule '", n,
             "' (expected linear, scaled_linear, cosine or linear_logsnr)");
      if (*kind == train::ScheduleKind::custom)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "schedule 'custom' is a list of betas, which a name cannot carry: load the "
             "model that has them and use diffuse_schedule_from_model");
      if (*kind == train::ScheduleKind::learned)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "schedule 'learned' is a vdm model's SNR network: use "
             "diffuse_schedule_from_model");
      // 100000 bounds the tables at a few MB; real schedules use 1000 to 4000.
      if (timesteps < 2 || timesteps > 100000)
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "schedule '", n, "' needs timesteps in 2..100000, got ", timesteps);
      train::TrainConfig c;
      c.schedule = *kind;
      c.timesteps = static_cast<int>(timesteps);
      s->schedule = std::make_unique<dd::DiscreteSchedule>(train::make_schedule(c));
      s->timesteps = timesteps;
    }
    *out = s.release();
  });
}

diffuse_status diffuse_schedule_from_model(const diffuse_model* model, diffuse_schedule** out) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(out, "out");
    *out = nullptr;
    require(model, "model");
    auto s = std::make_unique<diffuse_schedule>();
    s->schedule = train::model_schedule(model->loaded);
    s->timesteps = model_timesteps(model->loaded);
    *out = s.release();
  });
}

void diffuse_schedule_free(diffuse_schedule* schedule) noexcept { delete schedule; }

diffuse_status diffuse_schedule_alpha_sigma(const diffuse_schedule* schedule, double t, double* alpha,
                                            double* sigma) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(schedule, "schedule");
    if (!(t >= 0 && t <= 1)) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "t is ", t, "; time runs over [0, 1]");
    // The samplers' own formulas (Schedule::alpha/sigma), so a callback's arithmetic matches the
    // library's bit for bit.
    if (alpha) *alpha = schedule->schedule->alpha(t);
    if (sigma) *sigma = schedule->schedule->sigma(t);
  });
}

diffuse_status diffuse_schedule_timesteps(const diffuse_schedule* schedule, int64_t* timesteps) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(schedule, "schedule");
    require(timesteps, "timesteps");
    *timesteps = schedule->timesteps;
  });
}

// ---- samplers -------------------------------------------------------------------------------

diffuse_status diffuse_sampler_create(const char* name, diffuse_sampler** out) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(out, "out");
    *out = nullptr;
    require(name, "name");
    auto s = std::make_unique<diffuse_sampler>();
    s->name = name;
    try {
      s->kind = dd::parse_sampler(s->name);
    } catch (const Error& e) {
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, e.message());  // the names and their list: sampler.h's one table
    }
    *out = s.release();
  });
}

void diffuse_sampler_free(diffuse_sampler* sampler) noexcept { delete sampler; }

diffuse_status diffuse_sampler_set_steps(diffuse_sampler* sampler, int64_t steps) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    if (steps < 1 || steps > 100000) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "steps is ", steps, "; expected 1..100000");
    sampler->steps = steps;
  });
}

diffuse_status diffuse_sampler_set_eta(diffuse_sampler* sampler, double eta) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    if (sampler->kind != dd::SamplerKind::ddim)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "eta applies to the ddim sampler; this one is '", sampler->name, "'");
    if (!(eta >= 0 && std::isfinite(eta))) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "eta is ", eta, "; expected >= 0");
    sampler->eta = eta;
  });
}

diffuse_status diffuse_sampler_set_corrector(diffuse_sampler* sampler, int64_t steps, double snr) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    const bool ald = sampler->kind == dd::SamplerKind::langevin;
    if (!ald && sampler->kind != dd::SamplerKind::pc)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "corrector steps apply to the langevin and pc samplers; this one is '",
           sampler->name, "'");
    if (steps < (ald ? 1 : 0) || steps > 100000)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "corrector steps is ", steps, "; expected ", ald ? 1 : 0, "..100000");
    if (!(snr > 0 && std::isfinite(snr))) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "snr is ", snr, "; expected > 0");
    sampler->corrector_steps = steps;
    sampler->snr = snr;
  });
}

diffuse_status diffuse_sampler_set_guidance(diffuse_sampler* sampler, double scale, int64_t null_label) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    if (!std::isfinite(scale)) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "guidance scale is ", scale);
    if (null_label < -1) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "null_label is ", null_label, "; expected -1 or a label >= 0");
    sampler->guidance = scale;
    sampler->null_label = null_label;
  });
}

diffuse_status diffuse_sampler_set_prediction(diffuse_sampler* sampler, diffuse_prediction prediction) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    switch (prediction) {
      case DIFFUSE_PREDICT_EPS: sampler->prediction = dd::Prediction::eps; break;
      case DIFFUSE_PREDICT_X0: sampler->prediction = dd::Prediction::x0; break;
      case DIFFUSE_PREDICT_V: sampler->prediction = dd::Prediction::v; break;
      default:
        fail(DIFFUSE_ERR_INVALID_ARGUMENT, "prediction is ", static_cast<int>(prediction), "; expected ",
             prediction_name_list);
    }
  });
}

diffuse_status diffuse_sampler_set_clip(diffuse_sampler* sampler, int clip) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    sampler->clip = clip != 0;
  });
}

diffuse_status diffuse_sampler_set_spacing(diffuse_sampler* sampler, const char* spacing) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    require(spacing, "spacing");
    sampler->spacing = parse_spacing(spacing);
  });
}

diffuse_status diffuse_sampler_set_batch(diffuse_sampler* sampler, int64_t batch) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INVALID_ARGUMENT, [&] {
    require(sampler, "sampler");
    if (batch < 1) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "batch is ", batch, "; expected >= 1");
    sampler->batch = batch;
  });
}

// ---- sampling -------------------------------------------------------------------------------

// Errors the checks above let through come from inside the samplers after the arguments were
// found valid: report them as internal.

diffuse_status diffuse_sample(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                              const diffuse_model* model, int64_t n, uint64_t seed, const int64_t* labels,
                              const float* z_T, float* out, size_t out_len) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(sampler, "sampler");
    require(model, "model");
    require(out, "out");
    auto* m = const_cast<diffuse_model*>(model);  // the lock is the only thing that changes
    std::unique_ptr<diffuse_schedule> own;
    Job job = model_job(sampler, schedule, *m, n, labels, out_len, own);
    // The model's variance, where the sampler has one to choose (DDPM ancestral steps, as `diffuse
    // sample`); a hybrid model's learned one takes all 2C output channels.
    if (sampler->kind == dd::SamplerKind::ddpm || sampler->kind == dd::SamplerKind::pc) {  // pc: the ddpm step
      job.variance = train::ancestral_variance(m->loaded.config);
      if (job.variance == dd::VarianceKind::learned)
        job.denoiser = train::make_denoiser(m->loaded.unet, m->loaded.config.timesteps, m->device, true);
    }
    std::lock_guard<std::mutex> lock(m->mu);
    set_current_device(m->device);
    run_sampling(*sampler, job, seed, z_T, out);
  });
}

diffuse_status diffuse_sample_callback(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                       diffuse_denoise_fn denoise, void* user_data, int64_t n, int64_t height,
                                       int64_t width, int64_t channels, uint64_t seed, const int64_t* labels,
                                       const float* z_T, float* out, size_t out_len) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require(out, "out");
    const Job job = callback_job(sampler, schedule, denoise, user_data, n, height, width, channels, labels, out_len);
    run_sampling(*sampler, job, seed, z_T, out);
  });
}

diffuse_status diffuse_ddim_invert(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                   const diffuse_model* model, int64_t n, const float* images, const int64_t* labels,
                                   float* out, size_t out_len) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require_ddim(sampler);
    require(model, "model");
    require(images, "images");
    require(out, "out");
    auto* m = const_cast<diffuse_model*>(model);
    std::unique_ptr<diffuse_schedule> own;
    Job job = model_job(sampler, schedule, *m, n, labels, out_len, own);
    job.denoiser = prediction_channels_only(m->denoiser, job.c);
    std::lock_guard<std::mutex> lock(m->mu);
    set_current_device(m->device);
    run_inversion(*sampler, job, images, out);
  });
}

diffuse_status diffuse_ddim_invert_callback(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                            diffuse_denoise_fn denoise, void* user_data, int64_t n, int64_t height,
                                            int64_t width, int64_t channels, const float* images,
                                            const int64_t* labels, float* out, size_t out_len) noexcept {
  return guarded(__func__, DIFFUSE_ERR_INTERNAL, [&] {
    require_ddim(sampler);
    require(images, "images");
    require(out, "out");
    const Job job = callback_job(sampler, schedule, denoise, user_data, n, height, width, channels, labels, out_len);
    run_inversion(*sampler, job, images, out);
  });
}

// ---- images ---------------------------------------------------------------------------------

diffuse_status diffuse_write_png_grid(const char* path, const float* images, int64_t n, int64_t height,
                                      int64_t width, int64_t channels, int scale) noexcept {
  return guarded(__func__, DIFFUSE_ERR_IO, [&] {
    require(path, "path");
    require(images, "images");
    element_count(n, height, width, channels);
    if (channels != 1 && channels != 3)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "channels is ", channels, "; a PNG grid takes 1 (grey) or 3 (RGB)");
    if (scale < 1 || scale > 16) fail(DIFFUSE_ERR_INVALID_ARGUMENT, "scale is ", scale, "; expected 1..16");
    // Image8 sizes are int: refuse grids whose side would not fit (write_png refuses far less anyway).
    if (height * scale > 32768 || width * scale > 32768)
      fail(DIFFUSE_ERR_INVALID_ARGUMENT, "images of ", height, "x", width, " at scale ", scale, " are too large for a PNG");
    write_png_grid(path, wrap_input(images, n, height, width, channels), scale);
  });
}

}  // extern "C"
