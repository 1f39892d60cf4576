// The `diffuse` command line: train, sample, eval, info.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <exception>

#include "core/check.h"
#include "tools/commands.h"

namespace diffuse::tools {
int& exit_code() {
  static int code = 0;
  return code;
}

namespace {
std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }
}  // namespace

void stop_on_signals() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}
bool stop_requested() { return g_stop.load(); }
void report_stopped(const std::string& checkpoint) {
  std::fprintf(stderr, "interrupted: the run is saved in %s; continue it with --resume\n", checkpoint.c_str());
  exit_code() = 130;
}

nlohmann::json parse_model_json(const std::string& text, const std::string& keys) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    DF_FAIL("--model: not valid JSON (", e.what(), ")");
  }
  DF_CHECK(j.is_object(), "--model must be a JSON object of ", keys);
  return j;
}
}  // namespace diffuse::tools

int main(int argc, char** argv) {
  CLI::App app{"diffuse: a diffusion-model engine (train, sample, evaluate)", "diffuse"};
  app.require_subcommand(1);
  // Errors a user can cause say what is wrong and what to do; the source file, line and failed
  // check behind them are for developers: --verbose, or a Debug build (CMAKE_BUILD_TYPE=Debug;
  // not NDEBUG, which sanitizer and other custom-flag builds leave undefined), adds them.
#if defined(DIFFUSE_VERBOSE_ERRORS)
  bool verbose = true;
#else
  bool verbose = false;
#endif
  app.add_flag("--verbose", verbose, "on an error, also print where in the source it was raised and which check failed");
  app.set_version_flag("--version", std::string("diffuse ") + "0.1.0");
  diffuse::tools::register_info(app);
  diffuse::tools::register_train(app);
  diffuse::tools::register_sample(app);
  diffuse::tools::register_eval(app);
  diffuse::tools::register_diffusers(app);
  diffuse::tools::register_classifier(app);
  diffuse::tools::register_autoencoder(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const diffuse::Error& e) {
    std::fprintf(stderr, "diffuse: error: %s\n", verbose ? e.what() : e.message().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "diffuse: error: %s\n", e.what());
    return 1;
  }
  return diffuse::tools::exit_code();
}
