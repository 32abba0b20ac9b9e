#pragma once
// Training metrics as JSON Lines: one object per line, flushed as soon as it is written,
// so a run that dies still leaves every finished step on disk and `tail -f` shows progress.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "resbm/core/error.hpp"
#include "resbm/io/json.hpp"

namespace resbm::io {

class MetricsLog {
 public:
  // append = true continues an existing log (resume); otherwise the file starts empty.
  explicit MetricsLog(std::string path, bool append = false) : path_(std::move(path)) {
    f_ = std::fopen(path_.c_str(), append ? "a" : "w");
    if (!f_)
      fail(cat("cannot open metrics log '", path_, "' for writing: ", std::strerror(errno)),
           "check that the directory exists and is writable");
  }
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  MetricsLog(MetricsLog&& o) noexcept : path_(std::move(o.path_)), f_(std::exchange(o.f_, nullptr)) {}
  MetricsLog& operator=(MetricsLog&& o) noexcept {
    if (this != &o) {
      if (f_) std::fclose(f_);
      path_ = std::move(o.path_);
      f_ = std::exchange(o.f_, nullptr);
    }
    return *this;
  }
  ~MetricsLog() {
    if (f_) std::fclose(f_);
  }

  const std::string& path() const { return path_; }

  void write(const Json& record) {
    RESBM_CHECK(f_, "metrics log used after being moved from", "keep using the moved-to log");
    RESBM_CHECK(record.is_object(),
                cat("metrics record is ", Json::type_name(record.type()), ", not an object"),
                "log a JSON object per line");
    std::string line = record.dump();
    line += '\n';
    if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
      fail(cat("writing metrics log '", path_, "' failed: ", std::strerror(errno)),
           "check free disk space");
  }
  // log({{"step", 10}, {"loss", 2.5}}): the common case without building a Json first.
  void log(JsonObject fields) { write(Json(std::move(fields))); }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace resbm::io
