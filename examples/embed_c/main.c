/* examples/embed_c/main.c: sample images from a checkpoint with diffuse's C API and write them
 * as a PNG grid, the same file `diffuse sample` writes for the same checkpoint, sampler, steps,
 * count and seed.
 *
 *   embed_c CHECKPOINT OUT.png [--sampler ddim] [--steps 50] [--count 16] [--seed 0]
 *                              [--device auto] [--upscale 2] [--guidance 0] [--no-clip]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <diffuse/diffuse.h>

/* Every call returns a status; on failure diffuse_last_error() says what went wrong. */
#define CHECK(call)                                                                              \
  do {                                                                                           \
    diffuse_status st_ = (call);                                                                 \
    if (st_ != DIFFUSE_OK) {                                                                     \
      fprintf(stderr, "embed_c: %s: %s\n", diffuse_status_name(st_), diffuse_last_error());      \
      goto done;                                                                                 \
    }                                                                                            \
  } while (0)

static int usage(void) {
  fprintf(stderr, "usage: embed_c CHECKPOINT OUT.png [--sampler NAME] [--steps N] [--count N] [--seed S]\n"
                  "                [--device cpu|cuda|auto] [--upscale K] [--guidance W] [--no-clip]\n");
  return 2;
}

int main(int argc, char** argv) {
  const char* sampler_name = "ddim";
  const char* device = "auto";
  long long steps = 50, count = 16, upscale = 2;
  unsigned long long seed = 0;
  double guidance = 0;
  int clip = 1, i, rc = 1;
  diffuse_model* model = NULL;
  diffuse_schedule* schedule = NULL;
  diffuse_sampler* sampler = NULL;
  float* images = NULL;
  int64_t height = 0, width = 0, channels = 0, classes = 0;
  diffuse_prediction prediction = DIFFUSE_PREDICT_EPS;
  const char* where = NULL;
  size_t floats;

  if (argc < 3) return usage();
  for (i = 3; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--no-clip") == 0) { clip = 0; continue; }
    if (!v) return usage();
    if (strcmp(a, "--sampler") == 0) sampler_name = v;
    else if (strcmp(a, "--device") == 0) device = v;
    else if (strcmp(a, "--steps") == 0) steps = atoll(v);
    else if (strcmp(a, "--count") == 0) count = atoll(v);
    else if (strcmp(a, "--seed") == 0) seed = strtoull(v, NULL, 10);
    else if (strcmp(a, "--upscale") == 0) upscale = atoll(v);
    else if (strcmp(a, "--guidance") == 0) guidance = atof(v);
    else return usage();
    ++i;
  }

  CHECK(diffuse_model_load(argv[1], device, 0, &model));
  CHECK(diffuse_model_image_shape(model, &height, &width, &channels));
  CHECK(diffuse_model_num_classes(model, &classes));
  CHECK(diffuse_model_prediction(model, &prediction));
  CHECK(diffuse_model_device(model, &where));
  printf("diffuse %s: %s, %lldx%lldx%lld images, %lld classes, predicts %s, on %s\n", diffuse_version(), argv[1],
         (long long)height, (long long)width, (long long)channels, (long long)classes,
         prediction == DIFFUSE_PREDICT_EPS ? "eps" : prediction == DIFFUSE_PREDICT_X0 ? "x0" : "v", where);

  /* The schedule the model was trained with, and a sampler with the CLI's defaults. */
  CHECK(diffuse_schedule_from_model(model, &schedule));
  CHECK(diffuse_sampler_create(sampler_name, &sampler));
  CHECK(diffuse_sampler_set_steps(sampler, steps));
  CHECK(diffuse_sampler_set_clip(sampler, clip));
  /* -1: the model's own null label (num_classes). */
  if (guidance != 0) CHECK(diffuse_sampler_set_guidance(sampler, guidance, -1));

  if (count < 1) {
    fprintf(stderr, "embed_c: --count must be at least 1\n");
    goto done;
  }
  floats = (size_t)count * (size_t)(height * width * channels);
  images = (float*)malloc(floats * sizeof(float));
  if (!images) {
    fprintf(stderr, "embed_c: out of memory\n");
    goto done;
  }
  /* labels NULL: a class-conditional model cycles through its classes. */
  CHECK(diffuse_sample(sampler, schedule, model, count, seed, NULL, NULL, images, floats));
  CHECK(diffuse_write_png_grid(argv[2], images, count, height, width, channels, (int)upscale));
  printf("wrote %s (%lld images, %s, %lld steps, seed %llu)\n", argv[2], count, sampler_name, steps, seed);
  rc = 0;

done:
  free(images);
  diffuse_sampler_free(sampler);
  diffuse_schedule_free(schedule);
  diffuse_model_free(model);
  return rc;
}
