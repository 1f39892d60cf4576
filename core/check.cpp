#include "core/check.h"

namespace diffuse::detail {

void fail(const char* file, int line, const char* expr, const std::string& msg) {
  // `file` is relative to the source tree (the build maps the prefix away).
  std::string what = std::string(file) + ":" + std::to_string(line) + ": " + msg;
  if (expr) what += std::string(" (check `") + expr + "` failed)";
  throw Error(msg, what);
}

}  // namespace diffuse::detail
