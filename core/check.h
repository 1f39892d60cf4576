// core/check.h: the one family of checks. Every failure throws diffuse::Error with the failing
// expression's text, the file and the line, so a user sees what and where, and a caller can
// catch it (CLI: one message and a non-zero exit).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace diffuse {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

[[noreturn]] void fail(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace detail
}  // namespace diffuse

// DF_CHECK(cond, parts...): throws diffuse::Error("file:line: parts... (check `cond` failed)").
// Stays on in release builds: shape and argument checks guard every launcher.
#define DF_CHECK(cond, ...)                                                                  \
  do {                                                                                       \
    if (!(cond)) [[unlikely]]                                                                \
      ::diffuse::detail::fail(__FILE__, __LINE__, #cond, ::diffuse::detail::concat(__VA_ARGS__)); \
  } while (0)

// DF_FAIL(parts...): unconditional error with the same format.
#define DF_FAIL(...) ::diffuse::detail::fail(__FILE__, __LINE__, nullptr, ::diffuse::detail::concat(__VA_ARGS__))
