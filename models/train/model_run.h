// models/train/model_run.h: the run of a trainer of one model with AdamW over one batcher
// (`diffuse train-classifier`, `diffuse train-autoencoder`), defined once: where its random draws
// come from, resuming from its checkpoint, one optimizer step, and the checkpoint it writes. What
// the model computes (its loss, its grids, its score at the end) stays with each trainer. The
// diffusion trainer has its own step (stepper.h: EMA, the device step) over the same run folder
// (run_folder.h).
//
// A checkpoint of such a run holds "model.<name>" for every parameter, the optimizer's state
// (optim.h), "trainer.state" = (step, epoch, position in the epoch) and the metadata "format",
// "config" (the trainer's config as JSON) and "step", plus what the trainer adds.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "models/data/dataset.h"
#include "models/nn/module.h"
#include "models/train/optim.h"

namespace diffuse::train {

// The Philox stream of draw `use` (1 .. kRunStreams - 1) at step `step`: each draw of a run comes
// from (seed, step * kRunStreams + use), so a resumed run draws what the uninterrupted one did.
inline constexpr uint64_t kRunStreams = 4;
inline uint64_t run_stream(int64_t step, uint64_t use) { return static_cast<uint64_t>(step) * kRunStreams + use; }

// The checkpoint at `path` read to resume from; refused when a tensor holds NaN or Inf or its
// "format" is not `format`. `what` names the kind of run ("classifier").
SafeTensors read_for_resume(const std::string& path, const std::string& format, const std::string& what);

// The config a resumed run continues with: the checkpoint's, but for how long, how often and where
// (steps, log_every, checkpoint_every, eval_count, out_dir, device), which are `given`'s.
template <class Config>
Config resumed_config(const SafeTensors& st, const std::string& path, const Config& given, const std::string& what) {
  Config stored;
  try {
    stored = Config::from_json(nlohmann::json::parse(st.metadata.at("config")));
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL(path, ": malformed ", what, " config in the checkpoint (", e.what(), "); cannot resume");
  } catch (const std::out_of_range&) {
    DF_FAIL(path, ": no config in the checkpoint; cannot resume");
  }
  stored.steps = given.steps;
  stored.log_every = given.log_every;
  stored.checkpoint_every = given.checkpoint_every;
  stored.eval_count = given.eval_count;
  stored.out_dir = given.out_dir;
  stored.device = given.device;  // where this machine runs it, not where the run began
  return stored;
}

// AdamW as these runs use it: weight decay on matrices and filters only, linear warm-up.
AdamWOptions run_adamw(double lr, double weight_decay, int64_t warmup);

// Restores the weights, the optimizer and the batcher's position from a checkpoint of this kind
// (read_for_resume) and returns the steps done.
int64_t restore_run(const SafeTensors& st, const std::string& path, nn::Module& net, AdamW& opt,
                    data::Batcher& batcher);

// The run's CSV log: appended to when resuming a run that has one, else started with `header`.
std::ofstream open_run_log(const std::string& path, bool resuming, const std::string& header);

// A run on a GPU (`--device cuda`) is host-driven: a replica of the model on the device runs the
// forward and backward passes, and the optimizer updates the host's weights, because AdamW and
// clip_grad_norm (optim.h) run on the cpu only (the device trainer's fused update,
// kernels/adamw.h, works on its own flat buffers). The host's weights stay the run's state:
// checkpoints and resume read and write them as on the cpu. Before each step the replica takes
// them (copy_weights); after the backward pass the host's parameters take the replica's gradients
// (optimizer_step's `replica`). Both lists are one model's named_parameters(), in order.
void copy_weights(const NamedParams& from, const NamedParams& to);

// One optimizer step on `loss` (the tape's root): backward, the global gradient norm clipped to
// grad_clip (0: never), the update. A loss or gradient that is not finite ends the run with an
// error saying so (the last checkpoint, `ckpt`, holds finite weights); step is the step's index
// (0-based). With `replica` (the parameters the loss was computed with, on a GPU), their
// gradients move to `params` after the backward pass. Returns the gradient norm before clipping.
double optimizer_step(const ag::Var& loss, const NamedParams& params, AdamW& opt, double grad_clip, int64_t step,
                      const std::string& what, const std::string& ckpt, const NamedParams* replica = nullptr);

// Writes the run's checkpoint at `path` atomically: "model.<name>", the optimizer's state,
// "trainer.state", and `metadata` with "step" added. A parameter that is not finite is refused
// (the previous checkpoint stays).
void write_run_checkpoint(const std::string& path, const nn::Module& net, const AdamW& opt,
                          const data::Batcher& batcher, int64_t step, std::map<std::string, std::string> metadata);

}  // namespace diffuse::train
