#pragma once
// POSIX file plumbing shared by every on-disk format (shards, tokenizers, safetensors).
//
// Writers go through AtomicFile: a checkpoint or shard is either the old file or the
// complete new one, never a half-written mix, even if the process dies or the machine
// loses power mid-write (temp file in the same directory + fsync + rename + fsync dir).
// Readers go through InputFile, which knows the file's size up front so every format can
// validate its header against it before allocating anything sized from the file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "resbm/core/error.hpp"

namespace resbm::io {

// The formats store little-endian integers and floats and copy them straight to and from
// memory; a big-endian host would need byte swaps that nothing here does.
static_assert(std::endian::native == std::endian::little,
              "resbm's file formats assume a little-endian host");

namespace detail {
inline std::string errno_text(int e) { return std::strerror(e); }

inline std::string parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace detail

class AtomicFile {
 public:
  // `what` names the kind of file in errors ("token shard", "checkpoint").
  AtomicFile(std::string path, std::string what) : path_(std::move(path)), what_(std::move(what)) {
    RESBM_CHECK(!path_.empty(), cat("empty path for the ", what_), "pass a file path");
    tmp_ = path_ + ".tmp-XXXXXX";
    fd_ = ::mkstemp(tmp_.data());
    if (fd_ < 0) {
      int e = errno;
      fail(cat("cannot create ", what_, " '", path_, "': ", detail::errno_text(e)),
           e == ENOENT ? cat("create the directory '", detail::parent_dir(path_), "' first")
                       : std::string("check that the directory exists and is writable"));
    }
    // mkstemp creates 0600; outputs are meant to be shared like any other file.
    ::fchmod(fd_, 0644);
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }

  void write(const void* data, size_t n) {
    RESBM_CHECK(fd_ >= 0, cat(what_, " '", path_, "' written after commit()"),
                "write everything before commit()");
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0)
        fail(cat("writing ", what_, " '", path_, "' failed: ", detail::errno_text(errno)),
             "check free disk space and permissions");
      p += w;
      n -= size_t(w);
    }
  }

  // Makes the new contents durable, then replaces `path` with them in one step.
  void commit() {
    RESBM_CHECK(fd_ >= 0, cat(what_, " '", path_, "' committed twice"), "call commit() once");
    if (::fsync(fd_) != 0)
      fail(cat("fsync of ", what_, " '", path_, "' failed: ", detail::errno_text(errno)),
           "check the disk and free space");
    int fd = std::exchange(fd_, -1);
    if (::close(fd) != 0) {
      ::unlink(tmp_.c_str());
      fail(cat("closing ", what_, " '", path_, "' failed: ", detail::errno_text(errno)),
           "check the disk and free space");
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      int e = errno;
      ::unlink(tmp_.c_str());
      fail(cat("cannot move the new ", what_, " into place at '", path_, "': ",
               detail::errno_text(e)),
           "check that the path is not a directory and that its directory is writable");
    }
    // The rename itself is only durable once the directory entry is on disk.
    int dir = ::open(detail::parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      int rc = ::fsync(dir);
      int e = errno;
      ::close(dir);
      // EINVAL: the filesystem cannot sync directories at all, there is nothing to wait for.
      if (rc != 0 && e != EINVAL)
        fail(cat("fsync of the directory of ", what_, " '", path_, "' failed: ",
                 detail::errno_text(e)),
             "check the disk");
    }
  }

 private:
  std::string path_, what_, tmp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` atomically.
inline void write_file_atomic(const std::string& path, std::string_view bytes,
                              const std::string& what) {
  AtomicFile f(path, what);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

class InputFile {
 public:
  InputFile(std::string path, std::string what) : path_(std::move(path)), what_(std::move(what)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      int e = errno;
      fail(cat("cannot open ", what_, " '", path_, "': ", detail::errno_text(e)),
           e == ENOENT ? std::string("check the path; the file does not exist")
                       : std::string("check the file's permissions"));
    }
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      fail(cat(what_, " '", path_, "' is not a regular file"), "pass the path of a file");
    }
    size_ = uint64_t(st.st_size);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  InputFile(InputFile&& o) noexcept
      : path_(std::move(o.path_)), what_(std::move(o.what_)),
        fd_(std::exchange(o.fd_, -1)), size_(o.size_) {}
  InputFile& operator=(InputFile&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      path_ = std::move(o.path_);
      what_ = std::move(o.what_);
      fd_ = std::exchange(o.fd_, -1);
      size_ = o.size_;
    }
    return *this;
  }
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

  // Reads exactly n bytes at `offset`; a short read means the file shrank under us.
  void read_at(uint64_t offset, void* dst, size_t n) const {
    RESBM_CHECK(offset <= size_ && n <= size_ - offset,
                cat(what_, " '", path_, "': read of ", n, " bytes at offset ", offset,
                    " is past its end (", size_, " bytes)"),
                "the file is truncated; regenerate it");
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t r = ::pread(fd_, p, n, off_t(offset));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0)
        fail(cat("reading ", what_, " '", path_, "' failed: ", detail::errno_text(errno)),
             "check the disk");
      if (r == 0)
        fail(cat(what_, " '", path_, "' ended early at byte ", offset,
                 " (it changed while being read)"),
             "do not modify the file while it is loaded");
      p += r;
      n -= size_t(r);
      offset += uint64_t(r);
    }
  }

 private:
  std::string path_, what_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole file as a string, refused before reading if it is larger than max_bytes.
inline std::string read_file(const std::string& path, const std::string& what,
                             uint64_t max_bytes) {
  InputFile f(path, what);
  RESBM_CHECK(f.size() <= max_bytes,
              cat(what, " '", path, "' is ", f.size(), " bytes, more than the ", max_bytes,
                  " allowed"),
              cat("check that '", path, "' really is a ", what));
  std::string s(size_t(f.size()), '\0');
  f.read_at(0, s.data(), s.size());
  return s;
}

}  // namespace resbm::io
