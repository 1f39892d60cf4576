#include "models/train/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/file_io.h"

namespace diffuse::train {

namespace fs = std::filesystem;

FolderLock::FolderLock(const std::string& dir) {
  path_ = (fs::path(dir) / ".lock").string();
  // A refused run removes the lock file it made (OutputFolder), so the file a run opened may be
  // unlinked by the time its flock succeeds; such a lock guards nothing, and the run tries again
  // on whatever file the path names now.
  for (int attempt = 0;; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    DF_CHECK(fd_ >= 0, "cannot create the lock file ", path_, ": ", std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      char buf[32] = {0};
      ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      ::close(fd_);
      fd_ = -1;
      DF_FAIL("the output folder ", dir, " is in use by another run (process ", n > 0 ? buf : "?",
              " holds ", path_, "); wait for it or choose another --out");
    }
    struct stat held {}, named {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev)
      break;
    ::close(fd_);
    fd_ = -1;
    DF_CHECK(attempt < 100, "cannot lock the output folder ", dir, ": its lock file ", path_,
             " keeps being replaced");
  }
  std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // the pid is only informative; the lock itself is what matters
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);
}

void FolderLock::remove() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
}

void check_writable(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  DF_CHECK(!ec, "cannot create the output folder ", dir, ": ", ec.message());
  std::string probe = (fs::path(dir) / ".write-test").string();
  write_file_atomic(probe, "ok", 2);
  fs::remove(probe, ec);
}

OutputFolder::OutputFolder(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  const fs::path top = fs::absolute(dir, ec).lexically_normal();
  for (fs::path p = top; p.has_relative_path(); p = p.parent_path()) {
    // Only a path that surely is not there yet is one this run makes (an error reading it is not).
    if (fs::symlink_status(p, ec).type() != fs::file_type::not_found) break;
    made_.push_back(p);  // deepest first
  }
  ec.clear();
  lock_existed_ = fs::exists(fs::symlink_status(fs::path(dir) / ".lock", ec));
  try {
    check_writable(dir);
    lock_.emplace(dir);
  } catch (...) {
    undo();
    throw;
  }
}

OutputFolder::~OutputFolder() {
  if (!kept_) undo();
}

void OutputFolder::undo() {
  if (lock_) {
    if (lock_existed_) lock_.reset();
    else lock_->remove();
  }
  // Only empty folders go: anything another process put there meanwhile stays, and so do they.
  std::error_code ec;
  for (const fs::path& p : made_) fs::remove(p, ec);
}

void remove_stale_temporaries(const std::string& dir, const std::string& checkpoint_name) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const size_t tmp = name.rfind(".tmp.");
    if (tmp == std::string::npos || tmp + 5 == name.size() ||
        name.find_first_not_of("0123456789", tmp + 5) != std::string::npos)
      continue;
    const std::string base = name.substr(0, tmp);
    const bool ours = base == checkpoint_name || base == ".write-test" ||
                      (base.rfind("samples_", 0) == 0 && base.size() > 4 && base.compare(base.size() - 4, 4, ".png") == 0);
    if (ours) fs::remove(e.path(), ec);
  }
}

bool all_finite(const Tensor& t) {
  for (float v : t.to_vector())
    if (!std::isfinite(v)) return false;
  return true;
}

std::vector<std::string> nonfinite_tensors(const SafeTensors& st) {
  std::vector<std::string> bad;
  for (const auto& [name, t] : st.tensors)
    if (dtype_is_float(t.dtype()) && !all_finite(t)) bad.push_back(name);
  return bad;
}

std::string name_list(const std::vector<std::string>& names, size_t at_most) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < at_most; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > at_most) out += " and " + std::to_string(names.size() - at_most) + " more";
  return out;
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : all)
    if (k.rfind(prefix, 0) == 0) out.emplace(k.substr(prefix.size()), v);
  return out;
}

}  // namespace diffuse::train
