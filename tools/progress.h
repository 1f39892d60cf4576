// tools/progress.h: a one-line progress bar on stderr for long work (training, sampling).
// Redraws at most ~10 times a second; on a non-terminal it prints a plain line every 10%.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include <unistd.h>

namespace diffuse::tools {

class Progress {
 public:
  Progress(std::string label, int64_t total, int64_t start = 0)
      : label_(std::move(label)), total_(total), start_(start), done_(start), tty_(isatty(2)),
        t0_(std::chrono::steady_clock::now()) {}

  // The total, when it is known only once the work has started.
  void set_total(int64_t total) { total_ = total; }

  // `extra` is shown after the counts (e.g. "loss 0.0412  312 img/s").
  void update(int64_t done, const std::string& extra = "") {
    done_ = done;
    auto now = std::chrono::steady_clock::now();
    bool last = done >= total_;
    if (tty_) {
      if (!last && now - last_draw_ < std::chrono::milliseconds(100)) return;
    } else {
      int64_t decile = total_ > 0 ? done * 10 / total_ : 10;
      if (!last && decile == last_decile_) return;
      last_decile_ = decile;
    }
    last_draw_ = now;
    double elapsed = std::chrono::duration<double>(now - t0_).count();
    double rate = elapsed > 0 ? (done - start_) / elapsed : 0;
    double left = rate > 0 ? (total_ - done) / rate : 0;
    const int width = 28;
    int filled = total_ > 0 ? static_cast<int>(width * done / total_) : width;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "%s%s [%s] %lld/%lld  %s  %s left  %s%s", tty_ ? "\r\033[K" : "", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), format_time(elapsed).c_str(),
                 format_time(left).c_str(), extra.c_str(), tty_ ? "" : "\n");
    if (tty_ && last) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

  // Ends the bar's line when the work stopped short of its total (an interrupted run: update()
  // ends it at the total), so what is printed next starts on a line of its own.
  void finish() {
    if (tty_ && done_ < total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

  static std::string format_time(double s) {
    char buf[32];
    int t = static_cast<int>(s + 0.5);
    if (t >= 3600)
      std::snprintf(buf, sizeof buf, "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
    else
      std::snprintf(buf, sizeof buf, "%d:%02d", t / 60, t % 60);
    return buf;
  }

 private:
  std::string label_;
  int64_t total_, start_, done_;
  bool tty_;
  std::chrono::steady_clock::time_point t0_, last_draw_{};
  int64_t last_decile_ = -1;
};

}  // namespace diffuse::tools
