#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/file_io.h"

namespace diffuse {

// The format is little-endian; so is every host diffuse targets, which lets tensors be copied
// byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// The reference implementation's limit: a larger header is an attack, not a checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A header nests at most 3 deep (top object, tensor object, shape array); anything deeper is
// refused before parsing so a hostile header cannot run the JSON library out of stack.
constexpr int kMaxJsonDepth = 16;

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& name, const std::string& what) {
  DF_FAIL("safetensors file '", name, "': ", what);
}

bool dtype_from_st(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::f32}, {"F64", DType::f64}, {"BF16", DType::bf16}, {"F16", DType::f16},
      {"I32", DType::i32}, {"I64", DType::i64}, {"U8", DType::u8}};
  for (const auto& [n, t] : table)
    if (s == n) { out = t; return true; }
  return false;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Header {
  std::vector<Entry> entries;  // sorted by begin
  std::map<std::string, std::string> metadata;
};

// Length N from the first 8 bytes, checked against the file size.
uint64_t header_length(const uint8_t* first8, uint64_t file_size, const std::string& name) {
  if (file_size < 8)
    bad(name, "only " + std::to_string(file_size) + " bytes; a safetensors file starts with an 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, first8, 8);
  if (n > kMaxHeaderBytes)
    bad(name, "header length " + std::to_string(n) + " exceeds the 100000000-byte limit (not a safetensors file?)");
  if (n > file_size - 8)
    bad(name, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(file_size) +
                  " bytes)");
  if (n < 2) bad(name, "header length " + std::to_string(n) + " is too short for a JSON object");
  return n;
}

void check_depth(const char* s, size_t n, const std::string& name) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < n; ++i) {
    char c = s[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) bad(name, "header JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

uint64_t as_u64(const json& v, const std::string& name, const std::string& what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
    bad(name, what + " must be a non-negative integer, got " + v.dump());
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& key, const json& v, const std::string& name) {
  const std::string where = "tensor '" + key + "'";
  if (!v.is_object()) bad(name, where + ": expected an object, got " + std::string(v.type_name()));
  for (const auto& [k, _] : v.items())
    if (k != "dtype" && k != "shape" && k != "data_offsets") bad(name, where + ": unexpected field '" + k + "'");
  for (const char* f : {"dtype", "shape", "data_offsets"})
    if (!v.contains(f)) bad(name, where + ": missing field '" + f + "'");
  Entry e;
  e.name = key;
  const json& dt = v["dtype"];
  if (!dt.is_string()) bad(name, where + ": dtype must be a string, got " + dt.dump());
  if (!dtype_from_st(dt.get<std::string>(), e.dtype))
    bad(name, where + ": unsupported dtype '" + dt.get<std::string>() +
                  "' (diffuse reads F32, F64, BF16, F16, I32, I64 and U8)");
  const json& sh = v["shape"];
  if (!sh.is_array()) bad(name, where + ": shape must be an array, got " + sh.dump());
  if (sh.size() > static_cast<size_t>(kMaxDims))
    bad(name, where + ": shape has " + std::to_string(sh.size()) + " dimensions; diffuse supports at most " +
                  std::to_string(kMaxDims));
  std::vector<int64_t> dims;
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : sh) {
    uint64_t x = as_u64(d, name, where + ": each shape dimension");
    if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
    if (__builtin_mul_overflow(numel, x, &numel)) overflow = true;
    dims.push_back(static_cast<int64_t>(x));
  }
  uint64_t nbytes = 0;
  if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes))
    bad(name, where + ": shape " + sh.dump() + " has more elements than fit in 64 bits");
  e.shape = Shape(dims);
  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    bad(name, where + ": data_offsets must be an array [begin, end], got " + off.dump());
  e.begin = as_u64(off[0], name, where + ": data_offsets begin");
  e.end = as_u64(off[1], name, where + ": data_offsets end");
  if (e.end < e.begin) bad(name, where + ": data_offsets " + off.dump() + " end before they begin");
  if (e.end - e.begin != nbytes)
    bad(name, where + ": data_offsets " + off.dump() + " span " + std::to_string(e.end - e.begin) +
                  " bytes but shape " + sh.dump() + " of " + dt.get<std::string>() + " needs " + std::to_string(nbytes));
  return e;
}

Header parse_header(const char* text, size_t n, uint64_t buffer_size, const std::string& name) {
  if (text[0] != '{') bad(name, "header does not start with '{' (not a safetensors file?)");
  check_depth(text, n, name);
  // nlohmann keeps the last of duplicate keys silently; a file with two tensors of the same name
  // is ambiguous, so duplicates are found during the parse with one key set per open object.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty() && parsed.is_string()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    bad(name, std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) bad(name, "header has the key '" + duplicate + "' more than once");
  if (!root.is_object()) bad(name, "header is not a JSON object");

  Header h;
  for (const auto& [key, v] : root.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) bad(name, "__metadata__ must be an object of strings, got " + std::string(v.type_name()));
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) bad(name, "__metadata__ value of '" + mk + "' is not a string: " + mv.dump());
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(key, v, name));
  }
  // Sorted by offset, the tensors must tile the buffer: each begins where the previous ended.
  std::stable_sort(h.entries.begin(), h.entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t expected = 0;
  for (const Entry& e : h.entries) {
    if (e.begin < expected)
      bad(name, "tensor '" + e.name + "' at data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] overlaps the previous tensor, which ends at " + std::to_string(expected));
    if (e.begin > expected)
      bad(name, "tensor '" + e.name + "' begins at " + std::to_string(e.begin) + " leaving a gap after offset " +
                    std::to_string(expected));
    if (e.end > buffer_size)
      bad(name, "tensor '" + e.name + "' data_offsets end " + std::to_string(e.end) +
                    " lies past the end of the data buffer (" + std::to_string(buffer_size) + " bytes; file truncated?)");
    expected = e.end;
  }
  if (expected != buffer_size)
    bad(name, "the tensors cover " + std::to_string(expected) + " bytes of the " + std::to_string(buffer_size) +
                  "-byte data buffer (trailing bytes after the last tensor)");
  return h;
}

// pread until n bytes are in, or fail naming the file.
void pread_all(int fd, void* dst, size_t n, uint64_t at, const std::string& path) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t got = ::pread(fd, p, n, static_cast<off_t>(at));
    if (got < 0) {
      if (errno == EINTR) continue;
      DF_FAIL("safetensors file '", path, "': read error: ", std::strerror(errno));
    }
    if (got == 0) DF_FAIL("safetensors file '", path, "': file ended early (truncated while being read?)");
    p += got;
    n -= static_cast<size_t>(got);
    at += static_cast<uint64_t>(got);
  }
}

// The padded JSON header for the tensors in order, and their host copies (kept alive for the
// write).
std::string make_header(const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata, std::vector<Tensor>& host,
                        const std::string& name) {
  // ordered_json keeps the caller's order in the header, matching the layout of the buffer.
  nlohmann::ordered_json root = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) md[k] = v;
    root["__metadata__"] = md;
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  host.clear();
  for (const auto& [tname, t] : tensors) {
    DF_CHECK(tname != "__metadata__", "cannot write '", name, "': a tensor may not be named __metadata__");
    DF_CHECK(seen.insert(tname).second, "cannot write '", name, "': tensor name '", tname, "' appears twice");
    DF_CHECK(t.defined(), "cannot write '", name, "': tensor '", tname, "' is undefined");
    Tensor h = t.to(Device::cpu());
    std::vector<int64_t> dims = h.shape().vec();
    uint64_t nb = h.nbytes();
    root[tname] = {{"dtype", safetensors_dtype_name(h.dtype())},
                   {"shape", dims},
                   {"data_offsets", {offset, offset + nb}}};
    offset += nb;
    host.push_back(std::move(h));
  }
  std::string text;
  try {
    text = root.dump();
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL("cannot write '", name, "': a tensor name or metadata string is not valid UTF-8 (", e.what(), ")");
  }
  // Pad so the data buffer starts 8-byte aligned in the file (8 + N is a multiple of 8), as the
  // reference writer does: a reader that maps the file can use the tensors in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  DF_FAIL("dtype ", static_cast<int>(t), " has no safetensors name");
}

SafeTensors parse_safetensors(const uint8_t* data, size_t n, const std::string& name) {
  uint64_t hn = header_length(data, n, name);
  Header h = parse_header(reinterpret_cast<const char*>(data + 8), hn, n - 8 - hn, name);
  SafeTensors out;
  out.metadata = std::move(h.metadata);
  const uint8_t* buffer = data + 8 + hn;
  for (const Entry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw(), buffer + e.begin, e.end - e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

SafeTensors read_safetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) DF_FAIL("cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) DF_FAIL("cannot stat '", path, "': ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) DF_FAIL("safetensors file '", path, "' is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  uint8_t first8[8] = {};
  if (size >= 8) pread_all(fd, first8, 8, 0, path);
  uint64_t hn = header_length(first8, size, path);
  std::string text(hn, '\0');
  pread_all(fd, text.data(), hn, 8, path);
  Header h = parse_header(text.data(), hn, size - 8 - hn, path);
  SafeTensors out;
  out.metadata = std::move(h.metadata);
  for (const Entry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) pread_all(fd, t.raw(), e.end - e.begin, 8 + hn + e.begin, path);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

std::vector<uint8_t> serialize_safetensors(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                           const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> host;
  std::string header = make_header(tensors, metadata, host, "<memory>");
  uint64_t hn = header.size();
  size_t total = 8 + header.size();
  for (const Tensor& t : host) total += t.nbytes();
  std::vector<uint8_t> out(total);
  std::memcpy(out.data(), &hn, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  size_t at = 8 + header.size();
  for (const Tensor& t : host) {
    if (t.nbytes() > 0) std::memcpy(out.data() + at, t.raw(), t.nbytes());
    at += t.nbytes();
  }
  return out;
}

void write_safetensors_atomic(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<Tensor> host;
  std::string header = make_header(tensors, metadata, host, path);
  uint64_t hn = header.size();
  std::vector<ByteChunk> chunks{{&hn, 8}, {header.data(), header.size()}};
  for (const Tensor& t : host)
    if (t.nbytes() > 0) chunks.push_back({t.raw(), t.nbytes()});
  write_file_atomic(path, chunks);
}

}  // namespace diffuse
