#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/file_io.h"

namespace diffuse {

// The format is little-endian; so is every host diffuse targets, which lets tensors be copied
// byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// The reference implementation's limit: a larger header is an attack, not a checkpoint.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A header nests at most 3 deep (top object, tensor object, shape array); the reader stops at
// anything deeper, so a hostile header cannot make the parse walk or keep a deep stack.
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

// A value as the header wrote it, kept for the checks; its JSON text is made only for a message.
struct Scalar {
  enum Kind { null, boolean, negative, index, floating, string, array, object } kind = null;
  uint64_t index_value = 0;  // kind index: an integer >= 0
  std::string text;          // kind string: the value; boolean, negative, floating: the JSON text
  bool is_index() const { return kind == index; }
  std::string dump() const {
    switch (kind) {
      case null: return "null";
      case index: return std::to_string(index_value);
      case string: return json(text).dump();
      case array: return "an array";
      case object: return "an object";
      default: return text;
    }
  }
};

// What a tensor entry's fields held, checked when its object closes.
struct RawEntry {
  std::string key;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  Scalar dtype, shape_value, offsets_value;  // the fields (for an array: kind array only)
  std::vector<Scalar> shape, offsets;        // the arrays' elements
};

// Reads the header through nlohmann's SAX interface straight into a Header, without building a
// document tree: the header of a checkpoint lists every tensor, and a tree of it costs more than
// everything else a load does before the weights (it was 70% of fuzz_checkpoint's time). The
// checks are the same as on a tree:
//  - a syntax error wins over any other finding (the first finding is kept, the parse goes on);
//  - nesting deeper than kMaxJsonDepth stops the parse at once (the parser keeps its own stack,
//    but a hostile header need not be followed any further);
//  - a key twice in one object is refused (nlohmann's tree would keep the last silently).
class HeaderReader {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  Header header;
  std::string finding;       // the first thing wrong with the header's content
  std::string syntax_error;  // a JSON syntax error, or the nesting limit

  bool null() { return scalar(Scalar{}); }
  bool boolean(bool b) { return scalar(Scalar{Scalar::boolean, 0, b ? "true" : "false"}); }
  bool number_integer(number_integer_t v) {
    return v >= 0 ? number_unsigned(static_cast<uint64_t>(v)) : scalar(Scalar{Scalar::negative, 0, std::to_string(v)});
  }
  bool number_unsigned(number_unsigned_t v) { return scalar(Scalar{Scalar::index, v, {}}); }
  bool number_float(number_float_t, const string_t& text) { return scalar(Scalar{Scalar::floating, 0, text}); }
  bool string(string_t& v) { return scalar(Scalar{Scalar::string, 0, std::move(v)}); }
  bool binary(binary_t&) { return scalar(Scalar{Scalar::floating, 0, "<binary>"}); }  // not in JSON text

  bool start_object(size_t) { return open(true); }
  bool start_array(size_t) { return open(false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(string_t& k) {
    Frame& f = stack_.back();
    bool repeated = false;
    if (f.kind == Kind::entry) {  // three known fields: a bit each
      const unsigned bit = k == "dtype" ? 1u : k == "shape" ? 2u : k == "data_offsets" ? 4u : 0u;
      if (!bit) fail("tensor '" + entry_.key + "': unexpected field '" + k + "'");
      repeated = (f.fields & bit) != 0;
      f.fields |= bit;
    } else if (f.kind != Kind::skip) {  // the top object (one key per tensor) and __metadata__
      repeated = !f.keys.insert(k).second;
    }
    if (repeated) fail("header has the key '" + k + "' more than once");
    f.key = std::move(k);
    return true;
  }

  bool stop(const std::string& what) {
    if (syntax_error.empty()) syntax_error = what;
    return false;
  }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& e) {  // NOLINT: SAX interface
    return stop(std::string("header is not valid JSON: ") + e.what());
  }

 private:
  // root: the top object; metadata: __metadata__; entry: a tensor's object; shape, offsets: its
  // arrays; skip: anything where it does not belong (already a finding), read to its end.
  enum class Kind { root, metadata, entry, shape, offsets, skip };
  struct Frame {
    Kind kind;
    std::string key;                       // the last key read in this object
    std::unordered_set<std::string> keys;  // every key read in this object (not for entries)
    unsigned fields = 0;                   // entries: the known fields read, a bit each
  };
  std::vector<Frame> stack_;
  RawEntry entry_;  // the tensor entry being read (entries do not nest)

  void fail(const std::string& what) {
    if (finding.empty()) finding = what;
  }

  // Where a value lands, by the innermost open object or array.
  bool scalar(Scalar v) {
    if (stack_.empty()) return true;  // the top value is an object: the caller checked the first byte
    Frame& f = stack_.back();
    switch (f.kind) {
      case Kind::root:
        if (f.key == "__metadata__") fail("__metadata__ must be an object of strings, got " + v.dump());
        else fail("tensor '" + f.key + "': expected an object, got " + v.dump());
        break;
      case Kind::metadata:
        if (v.kind != Scalar::string) fail("__metadata__ value of '" + f.key + "' is not a string: " + v.dump());
        else header.metadata[f.key] = std::move(v.text);
        break;
      case Kind::entry:
        if (f.key == "dtype") {
          entry_.has_dtype = true;
          entry_.dtype = std::move(v);
        } else if (f.key == "shape") {
          entry_.has_shape = true;
          entry_.shape_value = std::move(v);
        } else if (f.key == "data_offsets") {
          entry_.has_offsets = true;
          entry_.offsets_value = std::move(v);
        }
        break;
      case Kind::shape: entry_.shape.push_back(std::move(v)); break;
      case Kind::offsets: entry_.offsets.push_back(std::move(v)); break;
      case Kind::skip: break;
    }
    return true;
  }

  bool open(bool object) {
    if (static_cast<int>(stack_.size()) >= kMaxJsonDepth)
      return stop("header JSON nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    Kind kind = Kind::skip;
    if (stack_.empty()) {
      kind = Kind::root;
    } else {
      Frame& f = stack_.back();
      const char* what = object ? "an object" : "an array";
      const Scalar container{object ? Scalar::object : Scalar::array, 0, {}};
      switch (f.kind) {
        case Kind::root:
          if (f.key == "__metadata__") {
            if (object) kind = Kind::metadata;
            else fail(std::string("__metadata__ must be an object of strings, got ") + what);
          } else if (object) {
            kind = Kind::entry;
            entry_ = RawEntry{};
            entry_.key = f.key;
          } else {
            fail("tensor '" + f.key + "': expected an object, got " + what);
          }
          break;
        case Kind::metadata: fail("__metadata__ value of '" + f.key + "' is not a string: " + what); break;
        case Kind::entry:
          if (f.key == "dtype") {
            entry_.has_dtype = true;
            entry_.dtype = container;
          } else if (f.key == "shape") {
            entry_.has_shape = true;
            entry_.shape_value = container;
            if (!object) kind = Kind::shape;
          } else if (f.key == "data_offsets") {
            entry_.has_offsets = true;
            entry_.offsets_value = container;
            if (!object) kind = Kind::offsets;
          }
          break;
        case Kind::shape:
        case Kind::offsets:  // an element that is itself an array or object: never an index
          (f.kind == Kind::shape ? entry_.shape : entry_.offsets).push_back(container);
          break;
        case Kind::skip: break;
      }
    }
    stack_.push_back(Frame{kind, {}, {}, 0});
    return true;
  }

  bool close() {
    const Kind kind = stack_.back().kind;
    stack_.pop_back();
    if (kind == Kind::entry && finding.empty()) check_entry();
    return true;
  }

  static std::string list(const std::vector<Scalar>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) s += ',';
      s += v[i].dump();
    }
    s += ']';
    return s;
  }

  // The entry whose object just closed, in the order a reader would check it by hand. Messages
  // are put together only on failure: this runs once per tensor of every checkpoint loaded.
  void check_entry() {
    RawEntry& r = entry_;
    auto where = [&] { return "tensor '" + r.key + "'"; };
    const bool shape_is_array = r.shape_value.kind == Scalar::array;
    const bool offsets_is_array = r.offsets_value.kind == Scalar::array;
    auto offsets = [&] { return offsets_is_array ? list(r.offsets) : r.offsets_value.dump(); };
    if (!r.has_dtype) return fail(where() + ": missing field 'dtype'");
    if (!r.has_shape) return fail(where() + ": missing field 'shape'");
    if (!r.has_offsets) return fail(where() + ": missing field 'data_offsets'");
    Entry e;
    if (r.dtype.kind != Scalar::string) return fail(where() + ": dtype must be a string, got " + r.dtype.dump());
    if (!dtype_from_st(r.dtype.text, e.dtype))
      return fail(where() + ": unsupported dtype '" + r.dtype.text +
                  "' (diffuse reads F32, F64, BF16, F16, I32, I64 and U8)");
    if (!shape_is_array) return fail(where() + ": shape must be an array, got " + r.shape_value.dump());
    if (r.shape.size() > static_cast<size_t>(kMaxDims))
      return fail(where() + ": shape has " + std::to_string(r.shape.size()) + " dimensions; diffuse supports at most " +
                  std::to_string(kMaxDims));
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    bool overflow = false;
    for (const Scalar& d : r.shape) {
      if (!d.is_index()) return fail(where() + ": each shape dimension must be a non-negative integer, got " + d.dump());
      if (d.index_value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) overflow = true;
      if (__builtin_mul_overflow(numel, d.index_value, &numel)) overflow = true;
      dims.push_back(static_cast<int64_t>(d.index_value));
    }
    uint64_t nbytes = 0;
    if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes))
      return fail(where() + ": shape " + list(r.shape) + " has more elements than fit in 64 bits");
    if (!offsets_is_array || r.offsets.size() != 2)
      return fail(where() + ": data_offsets must be an array [begin, end], got " + offsets());
    if (!r.offsets[0].is_index())
      return fail(where() + ": data_offsets begin must be a non-negative integer, got " + r.offsets[0].dump());
    if (!r.offsets[1].is_index())
      return fail(where() + ": data_offsets end must be a non-negative integer, got " + r.offsets[1].dump());
    e.begin = r.offsets[0].index_value;
    e.end = r.offsets[1].index_value;
    if (e.end < e.begin) return fail(where() + ": data_offsets " + offsets() + " end before they begin");
    if (e.end - e.begin != nbytes)
      return fail(where() + ": data_offsets " + offsets() + " span " + std::to_string(e.end - e.begin) +
                  " bytes but shape " + list(r.shape) + " of " + r.dtype.text + " needs " + std::to_string(nbytes));
    e.name = std::move(r.key);
    e.shape = Shape(dims);
    header.entries.push_back(std::move(e));
  }
};

Header parse_header(const char* text, size_t n, uint64_t buffer_size, const std::string& name) {
  if (text[0] != '{') bad(name, "header does not start with '{' (not a safetensors file?)");
  HeaderReader reader;
  json::sax_parse(text, text + n, &reader);
  if (!reader.syntax_error.empty()) bad(name, reader.syntax_error);
  if (!reader.finding.empty()) bad(name, reader.finding);
  Header h = std::move(reader.header);
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
