// core/safetensors: round trips for every dtype, byte-compatibility with the reference writer,
// one test per kind of malformed file, a mutation sweep, and the atomic writer's failure paths.
#include <catch2/catch.hpp>

#include <dirent.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/file_io.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<uint8_t> slurp(const std::string& path) { return read_file(path); }

// A file from a header text and a data buffer; the length prefix is the header's own length
// unless `claimed_len` says otherwise.
std::vector<uint8_t> st_bytes(const std::string& header, size_t buffer_bytes, int64_t claimed_len = -1) {
  uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  std::vector<uint8_t> b(8 + header.size() + buffer_bytes);
  std::memcpy(b.data(), &n, 8);
  if (!header.empty()) std::memcpy(b.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < buffer_bytes; ++i) b[8 + header.size() + i] = static_cast<uint8_t>(i * 37 + 11);
  return b;
}

// Both entry points (from memory and from a file) must refuse the bytes with one diffuse::Error
// whose message names the file and contains each of `needles`.
void expect_rejected(const std::vector<uint8_t>& bytes, std::initializer_list<const char*> needles) {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  write_bytes(path, bytes);
  std::string from_file, from_memory;
  try {
    read_safetensors(path);
  } catch (const Error& e) {
    from_file = e.what();
  }
  try {
    parse_safetensors(bytes.data(), bytes.size(), "in-memory.safetensors");
  } catch (const Error& e) {
    from_memory = e.what();
  }
  INFO("read_safetensors: " << from_file);
  INFO("parse_safetensors: " << from_memory);
  REQUIRE(!from_file.empty());
  REQUIRE(!from_memory.empty());
  CHECK(from_file.find(path) != std::string::npos);
  CHECK(from_memory.find("in-memory.safetensors") != std::string::npos);
  for (const char* n : needles) {
    CHECK(from_file.find(n) != std::string::npos);
    CHECK(from_memory.find(n) != std::string::npos);
  }
}

// One valid tensor entry, as a header fragment.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
}

// A tensor of any dtype with random bytes: round trips must be bit-exact, NaN payloads included.
Tensor random_bytes_tensor(const Shape& shape, DType dt, std::mt19937_64& rng) {
  Tensor t = Tensor::empty(shape, dt);
  auto* p = static_cast<uint8_t*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

}  // namespace

TEST_CASE("safetensors: write then read is bit-identical for every dtype", "[cpu][core][safetensors]") {
  std::mt19937_64 rng(test::next_seed());
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> ts;
  const DType all[] = {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::u8};
  for (DType dt : all) {
    ts.push_back({std::string("t_") + dtype_name(dt), random_bytes_tensor({3, 5, 7}, dt, rng)});
    ts.push_back({std::string("vec_") + dtype_name(dt), random_bytes_tensor({13}, dt, rng)});  // odd byte counts
  }
  ts.push_back({"scalar", random_bytes_tensor(Shape(std::vector<int64_t>{}), DType::f32, rng)});
  ts.push_back({"empty", random_bytes_tensor({0, 4}, DType::f32, rng)});
  ts.push_back({"five_d", random_bytes_tensor({2, 1, 3, 1, 2}, DType::bf16, rng)});
  ts.push_back({"unicode \xc3\xa9", random_bytes_tensor({2}, DType::u8, rng)});
  // A slice is a view at an offset into its storage: the writer must take its own bytes.
  Tensor big = random_bytes_tensor({6, 4}, DType::f32, rng);
  ts.push_back({"slice", big.slice(2, 5)});
  std::map<std::string, std::string> md{{"config", "{\"channels\": 64}"}, {"step", "1234"}, {"empty", ""}};

  const std::string path = dir / "ckpt.safetensors";
  write_safetensors_atomic(path, ts, md);
  SafeTensors back = read_safetensors(path);
  CHECK(back.metadata == md);
  REQUIRE(back.tensors.size() == ts.size());
  for (const auto& [name, t] : ts) {
    INFO(name);
    REQUIRE(back.tensors.count(name) == 1);
    CHECK(same_bytes(back.tensors.at(name), t));
  }
  // The file on disk is what serialize_safetensors produces, and parses the same from memory.
  std::vector<uint8_t> bytes = slurp(path);
  CHECK(bytes == serialize_safetensors(ts, md));
  SafeTensors mem = parse_safetensors(bytes.data(), bytes.size(), "mem");
  for (const auto& [name, t] : ts) CHECK(same_bytes(mem.tensors.at(name), t));
  CHECK(dir.list() == std::vector<std::string>{"ckpt.safetensors"});
}

TEST_CASE("safetensors: layout follows the spec (padding, order, offsets)", "[cpu][core][safetensors]") {
  std::mt19937_64 rng(test::next_seed());
  std::vector<std::pair<std::string, Tensor>> ts{{"b", random_bytes_tensor({3}, DType::u8, rng)},
                                                 {"a", random_bytes_tensor({2}, DType::f64, rng)}};
  std::vector<uint8_t> f = serialize_safetensors(ts, {});
  uint64_t n;
  std::memcpy(&n, f.data(), 8);
  CHECK(n % 8 == 0);
  REQUIRE(8 + n <= f.size());
  std::string header(f.begin() + 8, f.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  CHECK(header.front() == '{');
  // Padding is spaces after the JSON, and nothing else.
  size_t close = header.find_last_of('}');
  CHECK(header.find_first_not_of(' ', close + 1) == std::string::npos);
  // No metadata given: no __metadata__ key. Tensors in the order given, tiling the buffer.
  CHECK(header.find("__metadata__") == std::string::npos);
  CHECK(header.find("\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}") != std::string::npos);
  CHECK(header.find("\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[3,19]}") != std::string::npos);
  CHECK(f.size() == 8 + n + 19);
  CHECK(std::memcmp(f.data() + 8 + n, ts[0].second.raw(), 3) == 0);
}

// Bytes written by the reference implementation (Python: safetensors.numpy.save({"step":
// np.array([7], int64), "w": np.array([[1.5, -2], [0.25, 3]], float32)}, metadata={"config":
// '{"ch": 64}'})). We read them, and writing the same tensors in the reference's order gives the
// identical file, so PyTorch / numpy read our checkpoints by construction.
TEST_CASE("safetensors: byte-identical with the reference implementation", "[cpu][core][safetensors]") {
  const std::string header =
      "{\"__metadata__\":{\"config\":\"{\\\"ch\\\": 64}\"},\"step\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":"
      "[0,8]},\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}      ";
  const uint8_t data[] = {0x07, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0,
                          0, 0, 0x80, 0x3e, 0, 0, 0x40, 0x40};
  REQUIRE(header.size() == 0xa0);  // the reference's length prefix
  std::vector<uint8_t> ref = st_bytes(header, 0);
  ref.insert(ref.end(), data, data + sizeof data);
  REQUIRE(ref.size() == 192);

  SafeTensors st = parse_safetensors(ref.data(), ref.size(), "reference.safetensors");
  CHECK(st.metadata.at("config") == "{\"ch\": 64}");
  CHECK(st.tensors.at("step").to_vector_i64() == std::vector<int64_t>{7});
  CHECK(st.tensors.at("w").shape() == Shape{2, 2});
  CHECK(st.tensors.at("w").to_vector() == std::vector<float>{1.5f, -2.f, 0.25f, 3.f});

  std::vector<uint8_t> ours = serialize_safetensors(
      {{"step", Tensor::from_vector_i64({7}, {1})}, {"w", Tensor::from_vector({1.5f, -2.f, 0.25f, 3.f}, {2, 2})}},
      {{"config", "{\"ch\": 64}"}});
  CHECK(ours == ref);
}

// ---- malformed files: one test per kind of problem ----------------------------------------------

TEST_CASE("safetensors rejects: file shorter than the length prefix", "[cpu][core][safetensors]") {
  expect_rejected({1, 2, 3}, {"only 3 bytes"});
  expect_rejected({}, {"only 0 bytes"});
}

TEST_CASE("safetensors rejects: header length past the end of the file", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{}", 0, 4000), {"header length 4000", "past the end"});
}

TEST_CASE("safetensors rejects: header length above the 100 MB limit", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{}", 0, int64_t(1) << 40), {"exceeds the 100000000-byte limit"});
  // 2^64 - 1: must not wrap around in the size check.
  std::vector<uint8_t> b(16, 0xff);
  expect_rejected(b, {"header length 18446744073709551615"});
}

TEST_CASE("safetensors rejects: header that is not JSON", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{\"a\": {\"dtype\": \"F32\",,}}", 0), {"not valid JSON"});
  expect_rejected(st_bytes("{\"a\": ", 0), {"not valid JSON"});
}

TEST_CASE("safetensors rejects: header that is not an object", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("[1, 2, 3]", 0), {"does not start with '{'"});
  expect_rejected(st_bytes("        ", 0), {"does not start with '{'"});
}

TEST_CASE("safetensors rejects: header with invalid UTF-8", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{\"\xff\xfe\": 1}", 0), {"not valid JSON"});
}

TEST_CASE("safetensors rejects: deeply nested header", "[cpu][core][safetensors]") {
  std::string deep = "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  expect_rejected(st_bytes(deep, 0), {"nests deeper"});
}

TEST_CASE("safetensors rejects: unknown or unsupported dtype", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("x", "Q7", "[2]", "[0,2]") + "}", 2), {"tensor 'x'", "unsupported dtype 'Q7'"});
  expect_rejected(st_bytes("{" + entry("x", "BOOL", "[2]", "[0,2]") + "}", 2), {"unsupported dtype 'BOOL'"});
  expect_rejected(st_bytes("{" + entry("x", "f32", "[2]", "[0,8]") + "}", 8), {"unsupported dtype 'f32'"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8), {"dtype must be a string"});
}

TEST_CASE("safetensors rejects: malformed shape", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("x", "U8", "[-2]", "[0,2]") + "}", 2), {"tensor 'x'", "non-negative integer"});
  expect_rejected(st_bytes("{" + entry("x", "U8", "[2.5]", "[0,2]") + "}", 2), {"non-negative integer"});
  expect_rejected(st_bytes("{" + entry("x", "U8", "\"2\"", "[0,2]") + "}", 2), {"shape must be an array"});
  expect_rejected(st_bytes("{" + entry("x", "U8", "[1,1,1,1,1,2]", "[0,2]") + "}", 2), {"6 dimensions", "at most 5"});
}

TEST_CASE("safetensors rejects: shape whose element count overflows", "[cpu][core][safetensors]") {
  // 2^32 * 2^32 * 2 wraps to 0 in 64 bits; a wrapped count would match offsets [0, 0].
  expect_rejected(st_bytes("{" + entry("x", "F32", "[4294967296,4294967296,2]", "[0,0]") + "}", 0),
                  {"tensor 'x'", "more elements than fit in 64 bits"});
  // 2^62 elements fit, 2^62 * 4 bytes do not.
  expect_rejected(st_bytes("{" + entry("x", "F32", "[4611686018427387904]", "[0,0]") + "}", 0),
                  {"more elements than fit in 64 bits"});
  // A zero dimension does not excuse a dimension beyond int64.
  expect_rejected(st_bytes("{" + entry("x", "F32", "[0,18446744073709551615]", "[0,0]") + "}", 0),
                  {"more elements than fit in 64 bits"});
}

TEST_CASE("safetensors rejects: missing or unexpected fields", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":[2]}}", 2), {"tensor 'x'", "missing field 'data_offsets'"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"strides\":[1]}}", 2),
                  {"unexpected field 'strides'"});
  expect_rejected(st_bytes("{\"x\":[1,2]}", 0), {"tensor 'x'", "expected an object"});
}

TEST_CASE("safetensors rejects: malformed data_offsets", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("x", "U8", "[2]", "[0,1,2]") + "}", 2), {"data_offsets must be an array [begin, end]"});
  expect_rejected(st_bytes("{" + entry("x", "U8", "[2]", "[-1,1]") + "}", 2), {"non-negative integer"});
  expect_rejected(st_bytes("{" + entry("x", "U8", "[0]", "[2,0]") + "}", 2), {"end before they begin"});
}

TEST_CASE("safetensors rejects: offsets that disagree with shape and dtype", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("x", "F32", "[2,3]", "[0,20]") + "}", 20),
                  {"tensor 'x'", "span 20 bytes", "needs 24"});
}

TEST_CASE("safetensors rejects: offsets past the end of the buffer (truncated file)", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("x", "F32", "[4]", "[0,16]") + "}", 10),
                  {"tensor 'x'", "past the end of the data buffer (10 bytes"});
}

TEST_CASE("safetensors rejects: overlapping tensors", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("b", "U8", "[4]", "[2,6]") + "}", 6),
                  {"tensor 'b'", "overlaps"});
  // Two tensors sharing the same bytes.
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("b", "U8", "[4]", "[0,4]") + "}", 4),
                  {"overlaps"});
}

TEST_CASE("safetensors rejects: a gap between tensors", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("b", "U8", "[2]", "[6,8]") + "}", 8),
                  {"tensor 'b'", "gap after offset 4"});
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[4,8]") + "}", 8), {"tensor 'a'", "gap after offset 0"});
}

TEST_CASE("safetensors rejects: trailing bytes after the last tensor", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[0,4]") + "}", 9), {"cover 4 bytes of the 9-byte"});
}

TEST_CASE("safetensors rejects: duplicate tensor names", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{" + entry("a", "U8", "[4]", "[0,4]") + "," + entry("a", "U8", "[4]", "[4,8]") + "}", 8),
                  {"key 'a' more than once"});
  // Duplicate keys inside an entry are as ambiguous.
  expect_rejected(st_bytes("{\"a\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4),
                  {"key 'dtype' more than once"});
}

// The reader checks the header as it parses (SAX, no document tree): a value of the wrong kind
// anywhere, scalar or container, is named in the message; a syntax error later in the header
// still wins over a finding before it.
TEST_CASE("safetensors rejects: values of the wrong kind, named", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":[[1]],\"data_offsets\":[0,1]}}", 1),
                  {"tensor 'x'", "each shape dimension must be a non-negative integer, got an array"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":{},\"shape\":[1],\"data_offsets\":[0,1]}}", 1),
                  {"dtype must be a string, got an object"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":{\"a\":1},\"data_offsets\":[0,1]}}", 1),
                  {"shape must be an array, got an object"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1.5]}}", 1),
                  {"data_offsets end must be a non-negative integer, got 1.5"});
  expect_rejected(st_bytes("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":true}}", 1),
                  {"data_offsets must be an array [begin, end], got true"});
  expect_rejected(st_bytes("{\"__metadata__\":{\"a\":[1]}}", 0), {"__metadata__ value of 'a' is not a string: an array"});
  expect_rejected(st_bytes("{\"__metadata__\":\"v\"}", 0), {"__metadata__ must be an object of strings, got \"v\""});
  expect_rejected(st_bytes("{\"x\":5}", 0), {"tensor 'x': expected an object, got 5"});
  expect_rejected(st_bytes("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0), {"key 'a' more than once"});
  expect_rejected(st_bytes("{\"x\":5, \"y\":[}", 0), {"not valid JSON"});
  // Nesting is bounded inside a value that is already wrong, too.
  expect_rejected(st_bytes("{\"x\":{\"strides\":" + std::string(40, '[') + std::string(40, ']') + "}}", 0),
                  {"nests deeper than 16"});
}

TEST_CASE("safetensors rejects: non-string metadata", "[cpu][core][safetensors]") {
  expect_rejected(st_bytes("{\"__metadata__\":{\"step\":12}}", 0), {"__metadata__ value of 'step' is not a string"});
  expect_rejected(st_bytes("{\"__metadata__\":[\"a\"]}", 0), {"__metadata__ must be an object"});
}

TEST_CASE("safetensors accepts: empty file body and metadata only", "[cpu][core][safetensors]") {
  std::vector<uint8_t> b = st_bytes("{\"__metadata__\":{\"k\":\"v\"}}", 0);
  SafeTensors st = parse_safetensors(b.data(), b.size(), "m");
  CHECK(st.tensors.empty());
  CHECK(st.metadata == std::map<std::string, std::string>{{"k", "v"}});
  // Zero-size tensors may share an offset with their neighbour.
  b = st_bytes("{" + entry("z", "F32", "[0,3]", "[0,0]") + "," + entry("a", "U8", "[2]", "[0,2]") + "}", 2);
  st = parse_safetensors(b.data(), b.size(), "m");
  CHECK(st.tensors.at("z").shape() == Shape{0, 3});
  CHECK(st.tensors.at("a").numel() == 2);
}

// A file mangled at random is either read or refused with diffuse::Error: never a crash, never a
// read out of bounds (run under -DDIFFUSE_SANITIZE=ON to see the latter).
TEST_CASE("safetensors: every truncation and random mutations fail cleanly", "[cpu][core][safetensors]") {
  std::mt19937_64 rng(test::next_seed());
  INFO("seed " << test::run_seed());
  std::vector<uint8_t> good = serialize_safetensors(
      {{"a", random_bytes_tensor({2, 3}, DType::f32, rng)}, {"b", random_bytes_tensor({5}, DType::i64, rng)}},
      {{"k", "v"}});
  for (size_t len = 0; len < good.size(); ++len) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    CHECK_THROWS_AS(parse_safetensors(cut.data(), cut.size(), "cut"), Error);
  }
  int accepted = 0;
  for (int it = 0; it < 3000; ++it) {
    std::vector<uint8_t> m = good;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % m.size();
      switch (rng() % 4) {
        case 0: m[at] = static_cast<uint8_t>(rng()); break;
        case 1: m[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
        case 2: m.erase(m.begin() + static_cast<std::ptrdiff_t>(at)); break;
        default: m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), "0123456789{}[],:\"-"[rng() % 18]); break;
      }
      if (m.empty()) m.push_back(0);
    }
    try {
      parse_safetensors(m.data(), m.size(), "mutated");
      ++accepted;  // e.g. a flipped bit inside tensor data
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("mutated") != std::string::npos);
    }
  }
  CHECK(accepted < 3000);
}

// ---- the atomic writer -------------------------------------------------------------------------

TEST_CASE("safetensors write: refuses names it cannot represent", "[cpu][core][safetensors]") {
  TempDir dir;
  Tensor t = test::random_tensor({2});
  CHECK_THROWS_WITH(write_safetensors_atomic(dir / "x.safetensors", {{"a", t}, {"a", t}}),
                    Catch::Contains("'a' appears twice") && Catch::Contains("x.safetensors"));
  CHECK_THROWS_WITH(write_safetensors_atomic(dir / "x.safetensors", {{"__metadata__", t}}),
                    Catch::Contains("may not be named __metadata__"));
  CHECK(dir.list().empty());
}

TEST_CASE("safetensors write: unwritable directory fails clearly and leaves nothing", "[cpu][core][safetensors]") {
  TempDir dir;
  const std::string path = dir / "missing_subdir/ckpt.safetensors";
  CHECK_THROWS_WITH(write_safetensors_atomic(path, {{"a", test::random_tensor({4})}}),
                    Catch::Contains(path) && Catch::Contains("No such file or directory"));
  CHECK(dir.list().empty());
  // A read-only directory (only meaningful when not running as root, who may write anyway).
  if (::geteuid() != 0) {
    fs::create_directory(dir / "ro");
    ::chmod((dir / "ro").c_str(), 0555);
    CHECK_THROWS_WITH(write_safetensors_atomic(dir / "ro/c.safetensors", {{"a", test::random_tensor({4})}}),
                      Catch::Contains("ro/c.safetensors") && Catch::Contains("Permission denied"));
    ::chmod((dir / "ro").c_str(), 0755);
    CHECK(fs::is_empty(dir / "ro"));
  }
}

TEST_CASE("safetensors write: a failed rename removes the temporary file", "[cpu][core][safetensors]") {
  TempDir dir;
  // The target is a non-empty directory: the data is written, then rename() fails.
  fs::create_directories(dir / "target/inner");
  CHECK_THROWS_WITH(write_safetensors_atomic(dir / "target", {{"a", test::random_tensor({4})}}),
                    Catch::Contains(dir / "target") && Catch::Contains("rename failed"));
  CHECK(dir.list() == std::vector<std::string>{"target"});
}

TEST_CASE("safetensors write: a write cut short by the file-size limit keeps the previous file",
          "[cpu][core][safetensors]") {
  TempDir dir;
  const std::string path = dir / "ckpt.safetensors";
  Tensor old_t = test::random_tensor({16});
  write_safetensors_atomic(path, {{"w", old_t}}, {{"step", "1"}});
  const std::vector<uint8_t> before = slurp(path);

  // The child writes a 1 MiB checkpoint under a 64 KiB RLIMIT_FSIZE: without the writer ignoring
  // SIGXFSZ it would be killed by the signal; with it, the write fails with EFBIG and the writer
  // throws. Exit code 0: threw diffuse::Error naming the path and "File too large".
  // Built before the fork: the child should only run the writer (no allocator or OpenMP state
  // inherited mid-use from other threads).
  const Tensor big = Tensor::full({256 * 1024}, 0.5);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    struct rlimit lim {65536, 65536};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    int code = 3;
    try {
      write_safetensors_atomic(path, {{"w", big}}, {{"step", "2"}});
      code = 1;
    } catch (const Error& e) {
      std::string m = e.what();
      code = (m.find(path) != std::string::npos && m.find("File too large") != std::string::npos) ? 0 : 2;
    } catch (...) {
      code = 4;
    }
    ::_exit(code);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO("child status " << status);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(slurp(path) == before);
  CHECK(dir.list() == std::vector<std::string>{"ckpt.safetensors"});
  SafeTensors st = read_safetensors(path);
  CHECK(st.metadata.at("step") == "1");
  CHECK(same_bytes(st.tensors.at("w"), old_t));
}

TEST_CASE("safetensors write: replacing an existing file", "[cpu][core][safetensors]") {
  TempDir dir;
  const std::string path = dir / "c.safetensors";
  write_safetensors_atomic(path, {{"w", test::random_tensor({100})}});
  Tensor t = test::random_tensor({3});
  write_safetensors_atomic(path, {{"v", t}});
  SafeTensors st = read_safetensors(path);
  CHECK(st.tensors.size() == 1);
  CHECK(same_bytes(st.tensors.at("v"), t));
}

TEST_CASE("safetensors read: missing file and directory", "[cpu][core][safetensors]") {
  TempDir dir;
  CHECK_THROWS_WITH(read_safetensors(dir / "nope.safetensors"),
                    Catch::Contains("nope.safetensors") && Catch::Contains("No such file"));
  CHECK_THROWS_WITH(read_safetensors(dir.path), Catch::Contains(dir.path) && Catch::Contains("not a regular file"));
}
