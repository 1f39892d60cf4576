// models/train/run_folder.h: what every training run (`diffuse train`, `diffuse train-classifier`)
// does with its output folder and its checkpoints, defined once: the folder made and locked, left as
// it was found when the run is refused during setup, stale temporaries of a killed run removed, and
// the check that refuses a checkpoint holding NaN or Inf.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"

namespace diffuse::train {

// An exclusive lock on the output folder for the life of the run: two runs writing the same
// checkpoints would corrupt each other's resume.
class FolderLock {
 public:
  explicit FolderLock(const std::string& dir);
  ~FolderLock();
  // Unlinks the lock file while still holding it (so no other run can have locked that file
  // meanwhile), then lets go.
  void remove();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

// Fails now, not after an hour of training, when the output folder cannot be written.
void check_writable(const std::string& dir);

// The output folder of a run: made (with any missing parents) and locked. Until keep(), the run is
// still being set up, and a refusal (a bad dataset, a config the model cannot take) leaves the
// disk as it found it: the folders this run made are removed, and in a folder that existed only
// the lock file this run made goes.
class OutputFolder {
 public:
  explicit OutputFolder(const std::string& dir);
  ~OutputFolder();
  // Setup is over: from here on what the run writes stays, whatever happens.
  void keep() { kept_ = true; }
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

 private:
  void undo();
  std::string dir_;
  std::vector<std::filesystem::path> made_;
  bool lock_existed_ = false;
  bool kept_ = false;
  std::optional<FolderLock> lock_;
};

// write_file_atomic writes `<name>.tmp.<pid>` and renames it; a run killed in between leaves that
// temporary behind, and every kill during a checkpoint write would leave a checkpoint-sized file
// (found by the kill test, tests/tools/kill_test.cpp). Called with the folder lock held, so no
// other run can be writing them: only the names a run itself writes (its checkpoint, the write
// probe, samples_*.png) are removed.
void remove_stale_temporaries(const std::string& dir, const std::string& checkpoint_name);

bool all_finite(const Tensor& t);
// The floating-point tensors of a checkpoint that hold NaN or Inf, by name. A run never writes one
// (its checkpoint writer refuses), so such a file was damaged or made elsewhere; sampling from it
// would give a grid of noise without a word.
std::vector<std::string> nonfinite_tensors(const SafeTensors& st);
// "a, b, c and 2 more"
std::string name_list(const std::vector<std::string>& names, size_t at_most = 3);
// The entries of a checkpoint's `all` whose names start with `prefix`, the prefix removed
// ("model.w" -> "w"): one module's weights.
std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all, const std::string& prefix);

}  // namespace diffuse::train
