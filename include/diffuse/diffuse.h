/* diffuse.h: the C API of diffuse, a diffusion-model engine.
 *
 * One header, C99, no C++ types. It loads a checkpoint written by `diffuse train`, builds noise
 * schedules and samplers, and draws samples either from the loaded UNet or from a denoiser that
 * the caller supplies as a plain C callback (any network, in any language that can make a C
 * function pointer: C, C++, Rust, Python's ctypes ...). docs/embedding.md has worked examples.
 *
 * ---- Conventions ---------------------------------------------------------------------------
 * Images are NHWC f32 in host memory: n samples of height x width x channels, channels
 * innermost. Data space is [-1, 1] (a pixel byte p is p / 127.5 - 1).
 *
 * Time: the denoiser sees CONTINUOUS time t in [0, 1], 1 = pure noise. For a discrete schedule of
 * T steps, 0-based step i is t = (i + 1) / T (a network trained on integer steps wants
 * round(t * T) - 1). Use diffuse_schedule_alpha_sigma() to get alpha_t and sigma_t, with
 * z_t = alpha_t x + sigma_t eps and alpha_t^2 + sigma_t^2 = 1.
 *
 * ---- Errors ---------------------------------------------------------------------------------
 * Every function that can fail returns a diffuse_status; DIFFUSE_OK is 0. No function throws,
 * aborts or exits: every entry point catches everything and turns it into a status.
 * diffuse_last_error() is the message of the calling thread's last call that returned a status
 * (the empty string after a success). The message says what was wrong ("diffuse_sample: out_len
 * is 100 floats, 6272 are needed for n = 8 images of 28x28x1").
 *
 * ---- Ownership ------------------------------------------------------------------------------
 * Handles (diffuse_model, diffuse_schedule, diffuse_sampler) are created by the library and freed
 * by the matching *_free function, which accepts NULL. Every array argument belongs to the caller
 * and is only read or written during the call; the library keeps no pointer to caller memory
 * after a call returns. A sample call reads its model, schedule and sampler and does not retain
 * them, so they may be freed after it returns. Strings returned by the library (diffuse_version,
 * diffuse_status_name, diffuse_model_device) are static or live as long as their handle;
 * diffuse_last_error()'s string lives until the calling thread's next call into the library.
 *
 * ---- Threads --------------------------------------------------------------------------------
 * Any thread may call any function. A model may be shared by threads: calls that run it are
 * serialized by a lock inside the model (one forward pass at a time per model; load one model per
 * thread for parallel sampling). A schedule or sampler is read-only during a sample call, so one
 * may be shared by concurrent sample calls; a *_set_* call must not run concurrently with any
 * other call on the same sampler. Free a handle only when no other thread is using it. The CPU
 * path uses OpenMP threads inside a call (OMP_NUM_THREADS limits them).
 *
 * ---- Callbacks ------------------------------------------------------------------------------
 * The denoiser callback runs on the thread that called the sample function, synchronously, never
 * concurrently with itself for one call. Its pointers are valid only during the callback. It may
 * not call back into diffuse on the same handles. Return 0 to continue; any other value aborts the
 * sampling, which then returns DIFFUSE_ERR_CALLBACK with that value in the message. `out` is
 * filled with NaN before each call and every element must be written with a finite value (an
 * element left NaN, or any non-finite value, is reported as DIFFUSE_ERR_CALLBACK).
 *
 * ---- Devices --------------------------------------------------------------------------------
 * A model is loaded onto "cpu", "cuda", "cuda:N" or "auto" (CUDA when a GPU answers, else the
 * cpu). The device only decides where the network runs: every array crossing this API, and every
 * callback pointer, is host memory. "cuda" on a machine or a build without CUDA returns
 * DIFFUSE_ERR_UNSUPPORTED. The same seed gives the same starting noise on every device (Philox).
 */
#ifndef DIFFUSE_DIFFUSE_H
#define DIFFUSE_DIFFUSE_H

#include <stddef.h>
#include <stdint.h>

/* DIFFUSE_API marks the exported functions. The shared library is built with hidden visibility,
 * so these are the only symbols it exports; in a static library the attribute changes nothing. */
#if defined(_WIN32)
#  if defined(DIFFUSE_BUILDING_SHARED)
#    define DIFFUSE_API __declspec(dllexport)
#  else
#    define DIFFUSE_API
#  endif
#elif defined(__GNUC__)
#  define DIFFUSE_API __attribute__((visibility("default")))
#else
#  define DIFFUSE_API
#endif

/* For C++ callers the functions are noexcept: nothing ever propagates out of them. */
#ifdef __cplusplus
#  define DIFFUSE_NOEXCEPT noexcept
extern "C" {
#else
#  define DIFFUSE_NOEXCEPT
#endif

#define DIFFUSE_VERSION_MAJOR 0
#define DIFFUSE_VERSION_MINOR 1
#define DIFFUSE_VERSION_PATCH 0

typedef enum diffuse_status {
  DIFFUSE_OK = 0,
  DIFFUSE_ERR_INVALID_ARGUMENT = 1, /* a NULL handle or pointer, a wrong shape or size, an unknown name */
  DIFFUSE_ERR_IO = 2,               /* a file is missing, unreadable, not a checkpoint, or cannot be written */
  DIFFUSE_ERR_UNSUPPORTED = 3,      /* asked for something this build or machine lacks (CUDA) */
  DIFFUSE_ERR_CALLBACK = 4,         /* the denoiser callback returned non-zero or wrote non-finite values */
  DIFFUSE_ERR_OUT_OF_MEMORY = 5,    /* host or device memory ran out */
  DIFFUSE_ERR_INTERNAL = 6,         /* a bug in diffuse: please report the message */
  /* Not statuses: every int is a value of the type (see diffuse_prediction). */
  DIFFUSE_STATUS_MIN_ENUM_ = -0x7fffffff - 1,
  DIFFUSE_STATUS_MAX_ENUM_ = 0x7fffffff
} diffuse_status;

/* What a denoiser returns (Salimans & Ho 2022): the noise eps, the clean data x0, or
 * v = alpha_t eps - sigma_t x0. */
typedef enum diffuse_prediction {
  DIFFUSE_PREDICT_EPS = 0,
  DIFFUSE_PREDICT_X0 = 1,
  DIFFUSE_PREDICT_V = 2,
  /* Not predictions: together they make every int a value of the type, so that a C caller's
   * out-of-range value reaches the library's check (DIFFUSE_ERR_INVALID_ARGUMENT) instead of being
   * undefined behaviour in C++, whose enums hold only the values their enumerators' bits span. */
  DIFFUSE_PREDICT_MIN_ENUM_ = -0x7fffffff - 1,
  DIFFUSE_PREDICT_MAX_ENUM_ = 0x7fffffff
} diffuse_prediction;

typedef struct diffuse_model diffuse_model;       /* a UNet loaded from a checkpoint */
typedef struct diffuse_schedule diffuse_schedule; /* a noise schedule */
typedef struct diffuse_sampler diffuse_sampler;   /* a sampler and its settings */

/* The caller's denoiser. x: n samples (NHWC f32, the noisy z_t); t: n continuous times in (0, 1];
 * labels: n class labels, or NULL when the sampling has none; out: n samples of the prediction
 * set by diffuse_sampler_set_prediction (same shape as x). With classifier-free guidance n is
 * twice the batch: the conditional rows, then the same rows with the null label. Return 0 to go
 * on, non-zero to abort. */
typedef int (*diffuse_denoise_fn)(void* user_data, const float* x, const float* t, const int64_t* labels, int64_t n,
                                  float* out);

/* ---- errors and version ---- */

/* The calling thread's last message ("" after a successful call). Never NULL. */
DIFFUSE_API const char* diffuse_last_error(void) DIFFUSE_NOEXCEPT;
/* "DIFFUSE_OK", "DIFFUSE_ERR_IO", ...; "unknown status" for other values. Never NULL. */
DIFFUSE_API const char* diffuse_status_name(diffuse_status status) DIFFUSE_NOEXCEPT;
/* The library's version, "MAJOR.MINOR.PATCH" (the header's DIFFUSE_VERSION_* at build time). */
DIFFUSE_API const char* diffuse_version(void) DIFFUSE_NOEXCEPT;
/* Number of usable CUDA devices: 0 without a GPU, a driver or a CUDA build (never an error). */
DIFFUSE_API diffuse_status diffuse_cuda_device_count(int* count) DIFFUSE_NOEXCEPT;

/* ---- models ---- */

/* diffuse_model_load flags. By default the EMA weights are loaded (what `diffuse sample` uses). */
#define DIFFUSE_LOAD_LIVE_WEIGHTS 1u

/* Loads checkpoint.safetensors (model and training config) onto `device` ("cpu", "cuda",
 * "cuda:N", "auto"; NULL means "auto"). *out is NULL on failure. */
DIFFUSE_API diffuse_status diffuse_model_load(const char* checkpoint_path, const char* device, unsigned flags,
                                              diffuse_model** out) DIFFUSE_NOEXCEPT;
DIFFUSE_API void diffuse_model_free(diffuse_model* model) DIFFUSE_NOEXCEPT;

/* The shape of one sample: height, width, channels (each pointer may be NULL to skip it). */
DIFFUSE_API diffuse_status diffuse_model_image_shape(const diffuse_model* model, int64_t* height, int64_t* width,
                                                     int64_t* channels) DIFFUSE_NOEXCEPT;
/* 0 for an unconditional model; else labels are 0 .. num_classes - 1 and num_classes itself is
 * the null label of classifier-free guidance. */
DIFFUSE_API diffuse_status diffuse_model_num_classes(const diffuse_model* model, int64_t* num_classes) DIFFUSE_NOEXCEPT;
/* The training objective: what the network predicts. */
DIFFUSE_API diffuse_status diffuse_model_prediction(const diffuse_model* model, diffuse_prediction* prediction) DIFFUSE_NOEXCEPT;
/* Where the network runs ("cpu", "cuda:0"); the string lives as long as the model. */
DIFFUSE_API diffuse_status diffuse_model_device(const diffuse_model* model, const char** device) DIFFUSE_NOEXCEPT;
/* The network's prediction (diffuse_model_prediction says which) for n latents x (NHWC, the
 * model's image shape) at continuous times t (n values in (0, 1]; discrete step i is
 * (i + 1) / timesteps): the denoiser every sampler calls. labels: n labels or NULL (the null
 * label). out_len: floats in out, at least n * height * width * channels. */
DIFFUSE_API diffuse_status diffuse_model_predict(const diffuse_model* model, int64_t n, const float* x, const float* t,
                                                 const int64_t* labels, float* out, size_t out_len) DIFFUSE_NOEXCEPT;

/* HuggingFace diffusers UNet2DModel folders (docs/embedding.md): import reads `dir` (config.json
 * and diffusion_pytorch_model.safetensors in dir or dir/unet, scheduler_config.json optional)
 * and writes a checkpoint that diffuse_model_load takes; a config diffuse cannot express is
 * DIFFUSE_ERR_IO naming the key, and nothing is written. Export writes a checkpoint's EMA
 * weights as dir/config.json, dir/diffusion_pytorch_model.safetensors, dir/scheduler_config.json. */
DIFFUSE_API diffuse_status diffuse_import_diffusers(const char* dir, const char* checkpoint_path) DIFFUSE_NOEXCEPT;
DIFFUSE_API diffuse_status diffuse_export_diffusers(const char* checkpoint_path, const char* dir) DIFFUSE_NOEXCEPT;

/* ---- schedules ---- */

/* The DDPM schedules `diffuse train --schedule` names, with `timesteps` in 2..100000 and the
 * betas training gives them: "linear" (DDPM's 1e-4 to 0.02, scaled by 1000 / timesteps and capped
 * at 0.999), "scaled_linear" (linear in sqrt(beta) between the same ends, latent diffusion's) or
 * "cosine" (improved DDPM); or "linear_logsnr" (VDM's continuous schedule; timesteps must be 0).
 * "custom" (a list of betas) and "learned" (a vdm model's SNR network) belong to a model: they are
 * refused here, and diffuse_schedule_from_model gives them. */
DIFFUSE_API diffuse_status diffuse_schedule_create(const char* name, int64_t timesteps,
                                                   diffuse_schedule** out) DIFFUSE_NOEXCEPT;
/* The schedule the model was trained with: discrete (DDPM betas), or continuous for a model trained
 * with the vdm objective (its learned SNR network, or VDM's linear log-SNR). */
DIFFUSE_API diffuse_status diffuse_schedule_from_model(const diffuse_model* model, diffuse_schedule** out) DIFFUSE_NOEXCEPT;
DIFFUSE_API void diffuse_schedule_free(diffuse_schedule* schedule) DIFFUSE_NOEXCEPT;
/* alpha_t and sigma_t at continuous time t in [0, 1] (either pointer may be NULL). */
DIFFUSE_API diffuse_status diffuse_schedule_alpha_sigma(const diffuse_schedule* schedule, double t, double* alpha,
                                                        double* sigma) DIFFUSE_NOEXCEPT;
/* T of a discrete schedule, 0 for a continuous one. */
DIFFUSE_API diffuse_status diffuse_schedule_timesteps(const diffuse_schedule* schedule, int64_t* timesteps) DIFFUSE_NOEXCEPT;

/* ---- samplers ---- */

/* "ddpm", "ddim", "dpm++2m" (DPM-Solver++(2M)), "euler", "heun", "vdm" (VDM ancestral),
 * "langevin" (annealed Langevin dynamics) or "pc" (predictor-corrector: Langevin steps, then
 * the ddpm step).
 * Defaults, those of `diffuse sample`: 50 steps, eta 0, no guidance, clip x0 on, spacing
 * "karras" for euler and heun and "linspace" for the others, batches of 64, prediction eps (for
 * callbacks). */
DIFFUSE_API diffuse_status diffuse_sampler_create(const char* name, diffuse_sampler** out) DIFFUSE_NOEXCEPT;
DIFFUSE_API void diffuse_sampler_free(diffuse_sampler* sampler) DIFFUSE_NOEXCEPT;
/* Number of denoising steps, >= 1. */
DIFFUSE_API diffuse_status diffuse_sampler_set_steps(diffuse_sampler* sampler, int64_t steps) DIFFUSE_NOEXCEPT;
/* DDIM only: 0 deterministic, 1 DDPM-like; >= 0. */
DIFFUSE_API diffuse_status diffuse_sampler_set_eta(diffuse_sampler* sampler, double eta) DIFFUSE_NOEXCEPT;
/* "langevin" and "pc" only: Langevin steps at each noise level (langevin, >= 1) or before each
 * predictor step (pc, >= 0; 0 is "ddpm" exactly), and the signal-to-noise ratio r > 0 of their
 * step size (docs/diffusion.md). Defaults, those of `diffuse sample`: 1 and 0.16. */
DIFFUSE_API diffuse_status diffuse_sampler_set_corrector(diffuse_sampler* sampler, int64_t steps,
                                                         double snr) DIFFUSE_NOEXCEPT;
/* Classifier-free guidance w: (1 + w) f(x, y) - w f(x, null) (Ho & Salimans 2022); 0 turns it off.
 * null_label is the label of the unconditional branch; -1 means the model's null label
 * (num_classes), which a callback sampling has no way to know, so it must pass one >= 0. */
DIFFUSE_API diffuse_status diffuse_sampler_set_guidance(diffuse_sampler* sampler, double scale,
                                                        int64_t null_label) DIFFUSE_NOEXCEPT;
/* What a callback returns. A loaded model always uses its checkpoint's objective. */
DIFFUSE_API diffuse_status diffuse_sampler_set_prediction(diffuse_sampler* sampler,
                                                          diffuse_prediction prediction) DIFFUSE_NOEXCEPT;
/* Clip the predicted x0 (and the result) to [-1, 1]: 1 on (for images), 0 off. */
DIFFUSE_API diffuse_status diffuse_sampler_set_clip(diffuse_sampler* sampler, int clip) DIFFUSE_NOEXCEPT;
/* Where the steps sit: "linspace", "leading", "trailing" (among a discrete schedule's steps),
 * "logsnr" (uniform in log-SNR: a good grid for dpm++2m) or "karras" (EDM's sigma ramp). Every
 * sampler walks any of them. */
DIFFUSE_API diffuse_status diffuse_sampler_set_spacing(diffuse_sampler* sampler, const char* spacing) DIFFUSE_NOEXCEPT;
/* At most this many samples per denoiser call (>= 1). Batch k (0-based, of `batch` samples)
 * draws its noise from seed + k * batch * 0x9E3779B97F4A7C15, as `diffuse sample` does, so the
 * same seed, count and batch give the CLI's images. */
DIFFUSE_API diffuse_status diffuse_sampler_set_batch(diffuse_sampler* sampler, int64_t batch) DIFFUSE_NOEXCEPT;

/* ---- sampling ----
 * n >= 1 samples; out receives n NHWC samples in data space and out_len is its size in floats
 * (at least n * height * width * channels). labels: n labels, or NULL (a class-conditional model
 * then cycles through its classes, sample i getting i % num_classes; a callback sees NULL).
 * z_T: n starting latents (same shape as out), or NULL to draw them from the seed. */

/* From a loaded model. schedule NULL: the model's own (what `diffuse sample` uses); another one
 * is allowed, and the network still sees each time t mapped onto its own training steps. */
DIFFUSE_API diffuse_status diffuse_sample(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                          const diffuse_model* model, int64_t n, uint64_t seed, const int64_t* labels,
                                          const float* z_T, float* out, size_t out_len) DIFFUSE_NOEXCEPT;
/* From the caller's denoiser, samples of height x width x channels (vectors: 1 x 1 x D). */
DIFFUSE_API diffuse_status diffuse_sample_callback(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                                   diffuse_denoise_fn denoise, void* user_data, int64_t n,
                                                   int64_t height, int64_t width, int64_t channels, uint64_t seed,
                                                   const int64_t* labels, const float* z_T, float* out,
                                                   size_t out_len) DIFFUSE_NOEXCEPT;

/* DDIM inversion (Song et al. 2021, sec. 4.3): n images -> the latents at t = 1 that
 * deterministic DDIM with the same sampler maps back to them (pass them as z_T). The sampler must
 * be "ddim"; its steps and spacing choose the grid. out has the images' shape. */
DIFFUSE_API diffuse_status diffuse_ddim_invert(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                               const diffuse_model* model, int64_t n, const float* images,
                                               const int64_t* labels, float* out, size_t out_len) DIFFUSE_NOEXCEPT;
DIFFUSE_API diffuse_status diffuse_ddim_invert_callback(const diffuse_sampler* sampler, const diffuse_schedule* schedule,
                                                        diffuse_denoise_fn denoise, void* user_data, int64_t n,
                                                        int64_t height, int64_t width, int64_t channels,
                                                        const float* images, const int64_t* labels, float* out,
                                                        size_t out_len) DIFFUSE_NOEXCEPT;

/* ---- images ---- */

/* Writes n NHWC images (channels 1 or 3, data space [-1, 1]) as one PNG grid, each pixel repeated
 * scale x scale times (1 .. 16), 2 white pixels around and between the images: the same file as
 * `diffuse sample --grid path --upscale scale`. Written atomically. */
DIFFUSE_API diffuse_status diffuse_write_png_grid(const char* path, const float* images, int64_t n, int64_t height,
                                                  int64_t width, int64_t channels, int scale) DIFFUSE_NOEXCEPT;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* DIFFUSE_DIFFUSE_H */
