#pragma once
// Training progress for people. On a terminal: one status line rewritten in place with \r.
// Elsewhere (log files, CI, `| tee`): \r would pile up into one huge line, so a plain line
// is printed every `every` steps instead.
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>

#include "resbm/core/error.hpp"

namespace resbm::io {

class Progress {
 public:
  // every = 0 picks about 20 lines per run for non-terminal output.
  explicit Progress(int64_t total_steps, std::FILE* out = stderr, int64_t every = 0)
      : total_(total_steps), out_(out) {
    RESBM_CHECK(total_steps >= 1, cat("Progress needs at least 1 step, got ", total_steps),
                "pass the number of training steps");
    RESBM_CHECK(out != nullptr, "Progress got a null output stream", "pass stderr or a file");
    RESBM_CHECK(every >= 0, cat("Progress interval ", every, " is negative"),
                "pass 0 for automatic or a positive number of steps");
    every_ = every > 0 ? every : (total_steps >= 20 ? total_steps / 20 : 1);
    tty_ = ::isatty(::fileno(out)) == 1;
  }

  bool is_tty() const { return tty_; }
  int64_t every() const { return every_; }

  // `step` counts finished steps, 1..total_steps; elapsed_s is the time since the first one.
  void update(int64_t step, double loss, double tokens_per_s, double elapsed_s) {
    RESBM_CHECK(step >= 0 && step <= total_, cat("progress step ", step, " is outside [0, ", total_, "]"),
                "pass the number of finished steps");
    if (tty_) {
      std::string line = status(step, loss, tokens_per_s, elapsed_s);
      // Pad over the tail of a longer previous line so no stale characters remain.
      size_t shown = line.size();
      if (line.size() < width_) line.append(width_ - line.size(), ' ');
      width_ = shown;
      std::fprintf(out_, "\r%s", line.c_str());
      std::fflush(out_);
      open_line_ = true;
    } else if (step % every_ == 0 || step == total_) {
      std::fprintf(out_, "%s\n", status(step, loss, tokens_per_s, elapsed_s).c_str());
      std::fflush(out_);
      pending_.clear();
    } else {
      pending_ = status(step, loss, tokens_per_s, elapsed_s);
    }
  }

  // Ends the terminal status line so later output starts on a fresh line; in plain mode,
  // prints the last update if it fell between two reporting steps (a run stopped early).
  void finish() {
    if (tty_ && open_line_) std::fputc('\n', out_);
    if (!tty_ && !pending_.empty()) std::fprintf(out_, "%s\n", pending_.c_str());
    std::fflush(out_);
    open_line_ = false;
    pending_.clear();
  }

  static std::string format_duration(double s) {
    if (!std::isfinite(s) || s < 0) return "?";
    auto t = int64_t(s + 0.5);
    char buf[32];
    if (t >= 3600)
      std::snprintf(buf, sizeof buf, "%lldh%02lldm%02llds", (long long)(t / 3600),
                    (long long)(t / 60 % 60), (long long)(t % 60));
    else if (t >= 60)
      std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
    else
      std::snprintf(buf, sizeof buf, "%llds", (long long)t);
    return buf;
  }

 private:
  std::string status(int64_t step, double loss, double tps, double elapsed) const {
    double eta = step > 0 ? elapsed / double(step) * double(total_ - step) : NAN;
    char rate[32];
    if (tps >= 1e6)
      std::snprintf(rate, sizeof rate, "%.2fM", tps / 1e6);
    else if (tps >= 1e3)
      std::snprintf(rate, sizeof rate, "%.1fk", tps / 1e3);
    else
      std::snprintf(rate, sizeof rate, "%.0f", tps);
    char buf[256];
    std::snprintf(buf, sizeof buf, "step %lld/%lld | loss %.4f | %s tok/s | elapsed %s | ETA %s",
                  (long long)step, (long long)total_, loss, rate,
                  format_duration(elapsed).c_str(), format_duration(eta).c_str());
    return buf;
  }

  int64_t total_;
  std::FILE* out_;
  int64_t every_ = 1;
  bool tty_ = false;
  bool open_line_ = false;
  size_t width_ = 0;
  std::string pending_;
};

}  // namespace resbm::io
