// core/enum_names.h: the names of an enumeration, in one table beside it, and the one parser and
// printer every edge uses (the CLI's flags and their --help, the config files, the C API).
//
// An enumeration E that has names declares, in its own namespace,
//   inline constexpr EnumName<E> kENames[] = {{E::a, "a"}, {E::b, "b"}};
//   constexpr std::span<const EnumName<E>> enum_table(E) { return kENames; }
// and then parse_enum<E>(text, what), enum_name(value) and enum_list<E>() work for it (found by
// argument-dependent lookup). Each value has exactly one name; the parser accepts exactly those
// names (case-sensitive, no aliases) and refuses anything else with the list of valid names, so a
// typo never silently becomes a default.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/check.h"

namespace diffuse {

template <class E>
struct EnumName {
  E value;
  std::string_view name;
};

// "on" / "off" switches (--cuda-graph, ...): stored as bool, named like any other enumeration.
enum class OnOff : bool { off = false, on = true };
inline constexpr EnumName<OnOff> kOnOffNames[] = {{OnOff::on, "on"}, {OnOff::off, "off"}};
constexpr std::span<const EnumName<OnOff>> enum_table(OnOff) { return kOnOffNames; }

template <class E>
constexpr std::span<const EnumName<E>> enum_names() {
  return enum_table(E{});
}

// The valid names as people read them: "a, b or c".
template <class E>
std::string enum_list() {
  std::string out;
  const auto t = enum_names<E>();
  for (size_t i = 0; i < t.size(); ++i) {
    if (i > 0) out += i + 1 == t.size() ? " or " : ", ";
    out += t[i].name;
  }
  return out;
}

template <class E>
std::vector<std::string> enum_name_strings() {
  std::vector<std::string> out;
  for (const auto& e : enum_names<E>()) out.emplace_back(e.name);
  return out;
}

template <class E>
std::optional<E> try_parse_enum(std::string_view text) {
  for (const auto& e : enum_names<E>())
    if (e.name == text) return e.value;
  return std::nullopt;
}

// The refusal of `text` as a `what` ("sampler", "spacing", "value"): what is wrong and the valid
// names. Shared by parse_enum and the CLI's validators, so both say the same.
template <class E>
std::string enum_refusal(std::string_view text, std::string_view what) {
  return "unknown " + std::string(what) + " '" + std::string(text) + "' (expected " + enum_list<E>() + ")";
}

// `what` names the thing ("sampler", "objective"); `where`, when given, where the text came from
// ("training config"): "training config: unknown objective 'score' (expected eps, x0, v, ...)".
template <class E>
E parse_enum(std::string_view text, std::string_view what, std::string_view where = {}) {
  if (std::optional<E> v = try_parse_enum<E>(text)) return *v;
  DF_FAIL(where, where.empty() ? "" : ": ", enum_refusal<E>(text, what));
}

template <class E>
std::string_view enum_name(E value) {
  for (const auto& e : enum_names<E>())
    if (e.value == value) return e.name;
  DF_FAIL("enum_name: a value without a name in its table");
}

}  // namespace diffuse
