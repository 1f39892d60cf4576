// core/json_util.h: reading config values out of JSON with range checks.
//
// nlohmann's get<T>() converts numbers with a static_cast: 1e300 read into an int (or a float) is
// undefined behaviour, and 4294967304 read into an int silently becomes 8. Configs come from
// files (a checkpoint's metadata) and the command line, so every value is checked to be
// representable before it is converted (found by fuzzing the config readers, docs/reliability.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace diffuse {

// Sets `out` and returns true when `v` holds a value of T's kind that T represents exactly (for
// integers: an integer, or a float with an integral value, in range; for floating point: any
// number in range; bool and string: the same JSON type; a vector: an array of such values).
// Otherwise returns false and leaves `out` alone.
template <class T>
bool json_to(const nlohmann::json& v, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) return false;
    out = v.get<bool>();
    return true;
  } else if constexpr (std::is_integral_v<T>) {
    if (v.is_number_unsigned()) {
      const uint64_t x = v.get<uint64_t>();
      if (!std::in_range<T>(x)) return false;
      out = static_cast<T>(x);
      return true;
    }
    if (v.is_number_integer()) {
      const int64_t x = v.get<int64_t>();
      if (!std::in_range<T>(x)) return false;
      out = static_cast<T>(x);
      return true;
    }
    if (v.is_number_float()) {
      // 2^63 and 2^64 are exact doubles: compare against them, not against the integer limits
      // (which round up when converted to double).
      const double d = v.get<double>(), lo = static_cast<double>(std::numeric_limits<T>::min());
      const double hi_excl =
          std::is_signed_v<T> ? -lo : 2.0 * (static_cast<double>(std::numeric_limits<T>::max() / 2) + 1);
      if (!(d >= lo && d < hi_excl) || std::trunc(d) != d) return false;
      out = static_cast<T>(d);
      return true;
    }
    return false;
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number()) return false;
    const double d = v.get<double>();
    if (!(std::fabs(d) <= static_cast<double>(std::numeric_limits<T>::max()))) return false;
    out = static_cast<T>(d);
    return true;
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) return false;
    out = v.get<std::string>();
    return true;
  } else {
    static_assert(std::is_same_v<T, std::vector<typename T::value_type>>, "json_to: unsupported type");
    if (!v.is_array()) return false;
    T tmp(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      if (!json_to(v[i], tmp[i])) return false;
    out = std::move(tmp);
    return true;
  }
}

// A value for an error message: short, and never a recursive dump of a hostile nesting (dump()
// recurses once per level; a file can nest thousands deep).
inline std::string json_brief(const nlohmann::json& v) {
  if (v.is_structured())
    for (const auto& e : v)
      if (e.is_structured()) return std::string("a nested ") + v.type_name() + " of " + std::to_string(v.size());
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

}  // namespace diffuse
