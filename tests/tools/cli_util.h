// tests/tools/cli_util.h: running the `diffuse` CLI from tests, as a user would: a child process
// started with posix_spawn (never fork-and-continue: a fork after OpenMP threads exist can hang
// the child), its output in a file, a tiny IDX dataset made on the spot.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "tests/test_util.h"

extern char** environ;

namespace diffuse::test {

// The CLI built beside the tests (CMake passes its path).
inline std::string cli_path() { return DIFFUSE_CLI_PATH; }

// Starts argv[0] with the given arguments; stdout and stderr go to `log` (truncated).
inline pid_t spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  DF_CHECK(rc == 0, "posix_spawn ", args[0], " failed: ", std::strerror(rc));
  return pid;
}

// Waits for the child: its exit code, or -(signal number) when a signal ended it.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    DF_CHECK(errno == EINTR, "waitpid failed: ", std::strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

// Runs to the end: the exit code (or -signal), and the output in *out.
inline int run(const std::vector<std::string>& args, const std::string& log, std::string* out = nullptr) {
  int code = wait_child(spawn(args, log));
  if (out) {
    std::ifstream f(log);
    std::stringstream ss;
    ss << f.rdbuf();
    *out = ss.str();
  }
  return code;
}

inline std::string slurp_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// IDX files of n random size x size images and their labels 0..9, at the two paths: labels drawn
// at random, or i % 10 (cycle_labels: every class present in any 10 images).
inline void write_idx_files(const std::string& images_path, const std::string& labels_path, int n, int size,
                            uint64_t seed, bool cycle_labels = false) {
  std::mt19937_64 rng(seed);
  auto be32 = [](std::string& s, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>((v >> shift) & 255));
  };
  std::string img, lab;
  be32(img, 0x803);
  be32(img, static_cast<uint32_t>(n));
  be32(img, static_cast<uint32_t>(size));
  be32(img, static_cast<uint32_t>(size));
  for (int i = 0; i < n * size * size; ++i) img.push_back(static_cast<char>(rng() & 255));
  be32(lab, 0x801);
  be32(lab, static_cast<uint32_t>(n));
  for (int i = 0; i < n; ++i) lab.push_back(static_cast<char>(cycle_labels ? i % 10 : static_cast<int>(rng() % 10)));
  std::ofstream(images_path, std::ios::binary) << img;
  std::ofstream(labels_path, std::ios::binary) << lab;
}

// An IDX pair of n random size x size images (Fashion-MNIST's 28 unless told) with labels 0..9 in
// dir; returns the --dataset spec.
inline std::string write_idx_dataset(const std::string& dir, int n, uint64_t seed, int size = 28) {
  const std::string ip = dir + "/images-idx3-ubyte", lp = dir + "/labels-idx1-ubyte";
  write_idx_files(ip, lp, n, size, seed);
  return "idx:" + ip + "," + lp;
}

// A model small enough that a training step takes milliseconds on the cpu.
inline const char* kTinyModel = R"({"base_channels":8,"channel_mult":[1,2],"groups":4,"attention_resolutions":[]})";

// `diffuse train` on the tiny model; the final grid is 4 images of 2 DDIM steps so it is quick.
inline std::vector<std::string> train_args(const std::string& dataset, const std::string& out, int64_t steps,
                                           int64_t checkpoint_every, uint64_t seed = 7) {
  return {cli_path(), "train", "--preset", "tiny", "--model", kTinyModel, "--dataset", dataset, "--batch", "8",
          "--steps", std::to_string(steps), "--checkpoint-every", std::to_string(checkpoint_every), "--sample-every",
          "0", "--sample-count", "4", "--sample-steps", "2", "--log-every", "1", "--seed", std::to_string(seed),
          "--device", "cpu", "--out", out};
}

}  // namespace diffuse::test
