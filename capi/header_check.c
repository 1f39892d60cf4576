/* Compiles include/diffuse/diffuse.h as strict C99 (-std=c99 -pedantic-errors) in every build,
 * so nothing C++-only (or newer than C99) slips into the C API's header. */
#include <diffuse/diffuse.h>

/* Use a type from every part of the header, so a broken declaration fails here. */
int diffuse_header_check(diffuse_denoise_fn fn, diffuse_model* m, diffuse_schedule* s, diffuse_sampler* p);
int diffuse_header_check(diffuse_denoise_fn fn, diffuse_model* m, diffuse_schedule* s, diffuse_sampler* p) {
  diffuse_prediction pred = DIFFUSE_PREDICT_EPS;
  diffuse_status st = DIFFUSE_OK;
  return (fn != NULL) + (m != NULL) + (s != NULL) + (p != NULL) + (int)pred + (int)st;
}
