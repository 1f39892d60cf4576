#include "core/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "core/check.h"

namespace diffuse {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes on scope exit unless released; keeps every error path below from leaking descriptors.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int release() {
    int f = fd;
    fd = -1;
    return f;
  }
};

void ignore_sigxfsz_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction old {};
    if (::sigaction(SIGXFSZ, nullptr, &old) == 0 && old.sa_handler == SIG_DFL &&
        !(old.sa_flags & SA_SIGINFO)) {
      struct sigaction ign {};
      ign.sa_handler = SIG_IGN;
      sigemptyset(&ign.sa_mask);
      ::sigaction(SIGXFSZ, &ign, nullptr);
    }
  });
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::vector<uint8_t> read_file(const std::string& path, size_t max_bytes) {
  int raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (raw < 0) DF_FAIL("cannot open '", path, "' for reading: ", errno_text(errno));
  Fd fd(raw);
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) DF_FAIL("cannot stat '", path, "': ", errno_text(errno));
  if (S_ISDIR(st.st_mode)) DF_FAIL("cannot read '", path, "': it is a directory");
  if (st.st_size > 0 && static_cast<uint64_t>(st.st_size) > max_bytes)
    DF_FAIL("'", path, "' is ", st.st_size, " bytes, more than the limit of ", max_bytes);
  std::vector<uint8_t> out;
  // st_size is a hint only (pipes, /proc, a file growing under us): read until EOF.
  out.reserve(st.st_size > 0 ? static_cast<size_t>(st.st_size) : 0);
  uint8_t buf[1 << 16];
  for (;;) {
    ssize_t got = ::read(fd.fd, buf, sizeof buf);
    if (got < 0) {
      if (errno == EINTR) continue;
      DF_FAIL("error reading '", path, "': ", errno_text(errno));
    }
    if (got == 0) break;
    if (out.size() + static_cast<size_t>(got) > max_bytes)
      DF_FAIL("'", path, "' is larger than the limit of ", max_bytes, " bytes");
    out.insert(out.end(), buf, buf + got);
  }
  return out;
}

void write_file_atomic(const std::string& path, const std::vector<ByteChunk>& chunks) {
  ignore_sigxfsz_once();
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int raw = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (raw < 0) DF_FAIL("cannot write '", path, "': cannot create '", tmp, "': ", errno_text(errno));
  Fd fd(raw);
  // Any failure from here on: drop the temporary so no debris is left beside `path`.
  auto fail = [&](const char* stage, int err) {
    if (fd.fd >= 0) ::close(fd.release());
    ::unlink(tmp.c_str());
    DF_FAIL("cannot write '", path, "': ", stage, ": ", errno_text(err),
            " (the previous file, if any, is unchanged)");
  };
  for (const ByteChunk& c : chunks) {
    const char* p = static_cast<const char*>(c.data);
    size_t left = c.size;
    while (left > 0) {
      ssize_t w = ::write(fd.fd, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write failed", errno);
      }
      // A short write means the next call reports the error (ENOSPC, EFBIG) or continues.
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  if (::fsync(fd.fd) != 0) fail("fsync failed", errno);
  // close() can report a deferred write error (NFS): check it before the rename publishes.
  if (::close(fd.release()) != 0) fail("close failed", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename failed", errno);
  // The rename is durable only once the directory entry is on disk.
  int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: some filesystems refuse fsync on a directory, the file is in place
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  write_file_atomic(path, std::vector<ByteChunk>{{data, size}});
}

}  // namespace diffuse
