// core/file_io.h: whole-file reads and atomic whole-file writes, with errors that name the path.
//
// Every file diffuse writes (checkpoints, sample grids) goes through write_file_atomic, so a
// crash, a full disk or a file-size limit never leaves a half-written file where a good one was:
// readers see either the previous file or the new one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace diffuse {

// The whole file. Throws diffuse::Error naming the path and the errno text when it cannot be
// opened or read, or when it is larger than max_bytes (a guard for untrusted inputs).
std::vector<uint8_t> read_file(const std::string& path,
                               size_t max_bytes = std::numeric_limits<size_t>::max());

// One piece of the file's contents; pieces are written back to back.
struct ByteChunk {
  const void* data;
  size_t size;
};

// Writes the chunks to `path.tmp.<pid>`, fsyncs it, renames it over `path` and fsyncs the
// directory. On any failure (ENOSPC, EFBIG, EIO, a failed rename...) the temporary file is
// removed, `path` keeps its previous contents, and diffuse::Error names the path and the errno
// text.
//
// SIGXFSZ: a write past RLIMIT_FSIZE (`ulimit -f`) raises SIGXFSZ, whose default action kills the
// process. The first call sets that signal to SIG_IGN when it still has its default action (a
// handler the program installed is left alone), so the write fails with EFBIG and is reported
// like any other error instead of silently killing a training run.
void write_file_atomic(const std::string& path, const std::vector<ByteChunk>& chunks);
void write_file_atomic(const std::string& path, const void* data, size_t size);

}  // namespace diffuse
