// `diffuse train` killed with SIGKILL at random moments, over and over, resumed each time
// (docs/reliability.md, "Killed mid-training"). After every kill: the checkpoint on disk loads,
// and the work that the next resume loses (steps logged past the checkpoint) is at most one
// checkpoint interval. At the end: the run reached its last step, left no temporary files, and
// its checkpoint equals an uninterrupted run's bit for bit.
//
// Each life is ended in one of three ways, drawn at random:
//   startup     a random moment in the first ~0.3 s (loading data, reading the checkpoint)
//   mid-step    after a random number of logged steps (log.csv, one line per step), plus jitter
//   mid-write   when a checkpoint's temporary file appears (inotify), plus 0-2 ms of jitter: during
//               the write, the fsync or the rename
// The model is tiny (steps take milliseconds), so a hundred lives take about a minute. A second
// run does the same, fewer times, to a hybrid-objective run with importance-sampled steps, whose
// loss history is part of what must come back bit for bit.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/inotify.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include "core/safetensors.h"
#include "models/train/trainer.h"
#include "tests/test_util.h"
#include "tests/tools/cli_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kEvery = 5;

// The step of the last complete line of log.csv (0 when there is none).
int64_t last_logged_step(const std::string& log_csv) {
  const std::string text = test::slurp_text(log_csv);
  const size_t end = text.rfind('\n');
  if (end == std::string::npos || end == 0) return 0;
  const size_t begin = text.rfind('\n', end - 1);
  const std::string line = text.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin + 1));
  if (line.empty() || line[0] < '0' || line[0] > '9') return 0;  // the header
  return std::stoll(line);
}

bool has_temporary(const std::string& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
  return false;
}

// Waits on the output folder's inotify events until `done` says so or the child exits by itself.
// Returns false when the child exited (then *code holds its exit code).
template <class Done>
bool wait_for(int ifd, pid_t pid, Done&& done, int* code) {
  alignas(inotify_event) char buf[4096];
  for (;;) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      *code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return false;
    }
    pollfd p{ifd, POLLIN, 0};
    if (::poll(&p, 1, 5) > 0) {
      ssize_t n = ::read(ifd, buf, sizeof buf);
      for (char* q = buf; n > 0 && q < buf + n;) {
        auto* ev = reinterpret_cast<inotify_event*>(q);
        if (done(ev->len ? std::string(ev->name) : std::string(), ev->mask)) return true;
        q += sizeof(inotify_event) + ev->len;
      }
    } else if (done(std::string(), 0)) {
      return true;
    }
  }
}

// Kills a run of kSteps steps (train_args plus `extra`) kKills times at random moments, resuming
// it each time, and checks it against the same run left alone.
void kill_and_resume(const std::vector<std::string>& extra, const int kKills, const int64_t kSteps) {
  test::TempDir dir;
  const uint64_t seed = test::next_seed();
  std::mt19937_64 rng(seed);
  const std::string data = test::write_idx_dataset(dir.path, 256, seed);
  std::string log;
  auto train_args = [&](const std::string& out) {
    std::vector<std::string> args = test::train_args(data, out, kSteps, kEvery);
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };

  // The reference: the same run, never interrupted.
  const auto t_ref = std::chrono::steady_clock::now();
  REQUIRE(test::run(train_args(dir / "ref"), dir / "ref.log", &log) == 0);
  const double ref_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_ref).count();

  const std::string out = dir / "run", ckpt = out + "/checkpoint.safetensors", csv = out + "/log.csv";
  fs::create_directories(out);
  const int ifd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(ifd >= 0);
  REQUIRE(::inotify_add_watch(ifd, out.c_str(), IN_CREATE | IN_MODIFY | IN_MOVED_TO) >= 0);
  std::vector<std::string> args = train_args(out);
  args.push_back("--resume");

  int kills = 0, during_write = 0, lives = 0, finished_code = -1000;
  int64_t lost_max = 0, lost_sum = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (finished_code == -1000) {
    ++lives;
    REQUIRE(lives < 10 * kKills);  // a run that never gets anywhere
    const pid_t pid = test::spawn(args, dir / "life.log");
    bool killed = false;
    int code = 0;
    if (kills < kKills) {
      const int mode = static_cast<int>(rng() % 3);
      const auto born = std::chrono::steady_clock::now();
      const auto jitter = std::chrono::microseconds(rng() % 2000);
      bool alive = true;
      if (mode == 0) {  // startup
        const auto at = born + std::chrono::microseconds(rng() % 300000);
        alive = wait_for(ifd, pid, [&](const std::string&, uint32_t) { return std::chrono::steady_clock::now() >= at; },
                         &code);
      } else if (mode == 1) {  // mid-step: each step appends one flushed line to log.csv
        const int target = static_cast<int>(rng() % (2 * kEvery));
        int lines = 0;
        alive = wait_for(ifd, pid, [&](const std::string& name, uint32_t mask) {
          if (name == "log.csv" && (mask & IN_MODIFY)) ++lines;
          return lines > target;  // the header line comes first
        }, &code);
        std::this_thread::sleep_for(jitter);
      } else {  // mid-write
        alive = wait_for(ifd, pid, [&](const std::string& name, uint32_t mask) {
          return (mask & IN_CREATE) && name.rfind("checkpoint.safetensors.tmp.", 0) == 0;
        }, &code);
        std::this_thread::sleep_for(jitter);
      }
      if (alive) {
        ::kill(pid, SIGKILL);
        code = test::wait_child(pid);
        killed = true;
      }
    } else {
      code = test::wait_child(pid);
    }
    if (!killed) {
      INFO(test::slurp_text(dir / "life.log"));
      REQUIRE(code == 0);
      finished_code = code;
      break;
    }
    REQUIRE(code == -SIGKILL);
    ++kills;
    for (const auto& e : fs::directory_iterator(out))
      if (e.path().filename().string().rfind("checkpoint.safetensors.tmp.", 0) == 0) ++during_write;
    // Whatever checkpoint is on disk loads, and is not ahead of the log.
    if (fs::exists(ckpt)) {
      INFO("after kill " << kills);
      train::LoadedModel m = train::load_checkpoint(ckpt, Device::cpu());
      const int64_t lost = last_logged_step(csv) - m.step;
      CHECK(lost >= 0);
      CHECK(lost <= kEvery);
      lost_max = std::max(lost_max, lost);
      lost_sum += lost;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ::close(ifd);

  CHECK(kills >= kKills);
  CHECK(during_write >= kKills / 10);  // the mid-write kills did land inside writes
  // The run ended where it should, with nothing left over.
  const SafeTensors got = read_safetensors(ckpt), want = read_safetensors(dir / "ref/checkpoint.safetensors");
  CHECK(got.tensors.at("trainer.state").to_vector_i64()[0] == kSteps);
  CHECK_FALSE(has_temporary(out));
  // Bit for bit: every tensor (weights, EMA, optimizer moments, trainer state) of the resumed run
  // equals the uninterrupted run's.
  REQUIRE(got.tensors.size() == want.tensors.size());
  int differing = 0;
  for (const auto& [name, t] : want.tensors) {
    const Tensor& u = got.tensors.at(name);
    const bool same = u.dtype() == t.dtype() && u.shape() == t.shape() &&
                      std::memcmp(u.raw(), t.raw(), t.nbytes()) == 0;
    if (!same) {
      UNSCOPED_INFO("differs: " << name);
      ++differing;
    }
  }
  CHECK(differing == 0);
  std::printf("kill test: %d kills (%d during a checkpoint write) over %d lives, %lld steps, checkpoint every %lld; "
              "steps lost per resume max %lld, mean %.2f; %.1f s (the uninterrupted run: %.1f s); seed %llu\n",
              kills, during_write, lives, static_cast<long long>(kSteps), static_cast<long long>(kEvery),
              static_cast<long long>(lost_max), kills ? static_cast<double>(lost_sum) / kills : 0.0, secs, ref_secs,
              static_cast<unsigned long long>(seed));
}

}  // namespace

TEST_CASE("train: SIGKILL at random moments, resumed each time, loses at most one checkpoint interval and ends "
          "bit for bit where an uninterrupted run ends",
          "[slow][tools][reliability]") {
  kill_and_resume({}, 100, 300);
}

TEST_CASE("train --t-sampling importance: SIGKILL at random moments, resumed each time, ends bit for bit where an "
          "uninterrupted run ends, loss history included",
          "[slow][tools][reliability]") {
  // T = 10 at batch 8: the loss history fills (10 losses per step) after 13 steps at the
  // earliest, so most of the 150 steps draw by importance.
  kill_and_resume({"--objective", "hybrid", "--t-sampling", "importance", "--timesteps", "10", "--schedule", "cosine"},
                  30, 150);
}
