// core/safetensors.h: the safetensors file format (https://github.com/huggingface/safetensors),
// the format of checkpoints and of weights exchanged with PyTorch.
//
// Layout: 8 bytes, little-endian u64 N; N bytes of UTF-8 JSON, padded with spaces;
// then the data buffer. The JSON maps each tensor name to
//   {"dtype": "F32"|"F64"|"BF16"|"F16"|"I32"|"I64"|"U8", "shape": [d0, ...], "data_offsets": [b, e]}
// with offsets relative to the buffer start, and may hold "__metadata__": {string: string}.
// Tensors are little-endian, row-major, back to back: sorted by offset they tile the buffer
// exactly, with no gaps and no overlaps, as the reference implementation requires.
//
// Compatibility with the reference implementation holds by construction: the writer emits the
// same bytes as Python's safetensors for the same tensors in the same order (a test pins this
// against bytes it wrote). To check a file by hand:
//   pip install safetensors numpy
//   python3 -c "from safetensors.numpy import load_file; print(load_file('ckpt.safetensors'))"
// (numpy has no bfloat16: for BF16 tensors use safetensors.torch.load_file instead.)
//
// The reader trusts nothing: every inconsistency is one diffuse::Error naming the file and the
// problem, never a crash or a read past the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace diffuse {

struct SafeTensors {
  std::map<std::string, Tensor> tensors;  // all on the cpu, in the file's dtypes
  std::map<std::string, std::string> metadata;
};

// Parses a whole safetensors file held in memory (also the fuzzing entry point).
// name_for_errors is the file name quoted in error messages.
SafeTensors parse_safetensors(const uint8_t* data, size_t n, const std::string& name_for_errors);

// Reads a file: the header first, then each tensor straight into its own storage, so peak memory
// is the tensors themselves, not twice the file.
SafeTensors read_safetensors(const std::string& path);

// The bytes of a safetensors file holding the tensors in the given order (any device: they are
// copied to the host). Names must be unique and not "__metadata__"; empty metadata is omitted.
std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata);

// Writes a file atomically (see write_file_atomic in core/file_io.h: temporary file, fsync,
// rename, fsync of the directory; the previous file survives any failure; SIGXFSZ is ignored so
// a `ulimit -f` overrun is an error, not a killed process).
void write_safetensors_atomic(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// "F32" <-> DType::f32 and so on; the name of an unsupported type throws.
const char* safetensors_dtype_name(DType t);

}  // namespace diffuse
