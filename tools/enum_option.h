// tools/enum_option.h: CLI11 validators built from the name tables (core/enum_names.h), so a flag
// accepts exactly the names its enumeration has, refuses others with the same words as the config
// parser, and --help lists the values.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "core/enum_names.h"
#include "models/train/config_fields.h"
#include "models/train/trainer.h"

namespace diffuse::tools {

// "{a,b,c}": how CLI11 shows a set of values in --help.
inline std::string braced(const std::vector<std::string>& names) {
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? "," : "") + names[i];
  return out + "}";
}

template <class E>
CLI::Validator enum_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        return try_parse_enum<E>(text) ? std::string() : enum_refusal<E>(text, "value");
      },
      braced(enum_name_strings<E>()));
}

// A flag whose value is one of E's names, stored as the enumeration in `field` (which must outlive
// the command); --help shows the names and the default.
template <class E>
CLI::Option* add_enum_option(CLI::App* cmd, const std::string& name, E& field, const std::string& help) {
  return cmd
      ->add_option_function<std::string>(
          name, [&field, name](const std::string& text) { field = parse_enum<E>(text, "value", name); }, help)
      ->check(enum_validator<E>())
      ->default_str(std::string(enum_name(field)));
}

// cpu, cuda, cuda:N or auto: the spelling, through the one check the training config uses.
inline CLI::Validator device_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          train::check_device_spec(text);
        } catch (const Error& e) {
          return e.message();
        }
        return {};
      },
      braced(train::field_checks::device_forms()));
}

// A value from a list that is not an enumeration (the UNet presets).
inline CLI::Validator one_of(std::vector<std::string> names) {
  const std::string desc = braced(names);
  return CLI::Validator(
      [names = std::move(names)](std::string& text) -> std::string {
        for (const std::string& n : names)
          if (n == text) return {};
        std::string list;
        for (size_t i = 0; i < names.size(); ++i) list += (i ? i + 1 == names.size() ? " or " : ", " : "") + names[i];
        return "unknown value '" + text + "' (expected " + list + ")";
      },
      desc);
}

}  // namespace diffuse::tools
