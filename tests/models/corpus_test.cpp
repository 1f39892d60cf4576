// The fuzzing seed corpus (tests/corpus, written by tests/corpus/make_corpus.py) doubles as a
// regression test: every ok_* file loads with its reader and every bad_* file is refused with a
// diffuse::Error that names it.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>

#include "core/image_io.h"
#include "core/safetensors.h"
#include "models/data/dataset.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

// The corpus lives in the source tree; tests run from the build tree. Look upward from the
// executable and from the working directory (or take DIFFUSE_SOURCE_DIR).
std::string corpus_dir() {
  std::vector<fs::path> starts;
  if (const char* e = std::getenv("DIFFUSE_SOURCE_DIR")) starts.emplace_back(e);
  std::error_code ec;
  starts.push_back(fs::read_symlink("/proc/self/exe", ec).parent_path());
  starts.push_back(fs::current_path(ec));
  for (fs::path p : starts)
    for (; !p.empty(); p = p.parent_path()) {
      if (fs::exists(p / "tests/corpus/make_corpus.py", ec)) return (p / "tests/corpus").string();
      if (p == p.parent_path()) break;
    }
  return {};
}

// Runs `load` on every file of the folder: ok_* must load, bad_* must throw an Error naming it.
template <class F>
void check_folder(const std::string& sub, F&& load) {
  const std::string root = corpus_dir();
  if (root.empty()) {
    WARN("skipped: tests/corpus not found (set DIFFUSE_SOURCE_DIR)");
    return;
  }
  int ok = 0, bad = 0;
  for (const auto& e : fs::directory_iterator(root + "/" + sub)) {
    const std::string name = e.path().filename().string(), path = e.path().string();
    INFO(path);
    if (name.rfind("ok_", 0) == 0) {
      CHECK_NOTHROW(load(path));
      ++ok;
    } else if (name.rfind("bad_", 0) == 0) {
      CHECK_THROWS_WITH(load(path), Catch::Contains(path));
      ++bad;
    }
  }
  CHECK(ok >= 1);
  CHECK(bad >= 1);
}

}  // namespace

TEST_CASE("corpus: safetensors", "[cpu][data][corpus]") {
  check_folder("safetensors", [](const std::string& p) { read_safetensors(p); });
}

TEST_CASE("corpus: idx", "[cpu][data][corpus]") {
  check_folder("idx", [](const std::string& p) {
    std::vector<uint8_t> b = data::read_maybe_gzip(p);
    if (p.find("labels") != std::string::npos) data::parse_idx_labels(b.data(), b.size(), p);
    else data::parse_idx_images(b.data(), b.size(), p);
  });
}

TEST_CASE("corpus: cifar", "[cpu][data][corpus]") {
  check_folder("cifar", [](const std::string& p) { data::load_cifar10(p); });
}

TEST_CASE("corpus: images", "[cpu][data][corpus]") {
  check_folder("images", [](const std::string& p) { read_image(p, 3); });
}
