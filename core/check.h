// core/check.h: the one family of checks. Every failure throws diffuse::Error, which keeps two
// texts: message(), what went wrong and what to do, for the person who caused it (the CLI and
// the C API report this), and what(), the same with the source file, line and failed expression
// in front and behind, for a developer (debug builds and `diffuse --verbose` print it).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace diffuse {

class Error : public std::runtime_error {
 public:
  // An error with nothing to add for a developer: what() == message().
  explicit Error(const std::string& message) : std::runtime_error(message), message_(message) {}
  Error(const std::string& message, const std::string& what) : std::runtime_error(what), message_(message) {}
  const std::string& message() const noexcept { return message_; }

 private:
  std::string message_;
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
