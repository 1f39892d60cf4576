// `diffuse train`: train a diffusion model; flags and/or a JSON config.
#include <cstdio>
#include <fstream>
#include <optional>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "models/train/config_fields.h"
#include "models/train/trainer.h"
#include "tools/commands.h"
#include "tools/enum_option.h"
#include "tools/progress.h"

namespace diffuse::tools {

namespace {

// A flag of a config field and the key it sets.
struct ConfigFlag {
  CLI::Option* option;
  std::string key;
};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

// The field's own check (config_fields.h) on the flag's text, so a bad value is refused naming the
// flag; text that is not a T at all is left to CLI11's conversion, which says so. `values`: what
// --help shows after the type ("{a,b}"), or "".
template <class T>
CLI::Validator field_validator(train::FieldCheck<T> check, const std::string& values) {
  return CLI::Validator(
      [check](std::string& text) -> std::string {
        T v{};
        if constexpr (is_optional<T>::value) {
          typename T::value_type x{};
          if (!CLI::detail::lexical_cast(text, x)) return {};
          v = x;
        } else {
          if (!CLI::detail::lexical_cast(text, v)) return {};
        }
        return check(v);
      },
      values);
}

// One option per field of the training config, bound to `cfg`, which must outlive `cmd`.
std::vector<ConfigFlag> add_config_flags(CLI::App* cmd, train::TrainConfig& cfg) {
  std::vector<ConfigFlag> out;
  train::for_each_field([&](const auto& f) {
    using T = std::decay_t<decltype(cfg.*f.member)>;
    T& field = cfg.*f.member;
    const std::string name = f.flag_name(), help(f.help);
    CLI::Option* o = nullptr;
    switch (f.flag_kind) {
      case train::FlagKind::none: return;
      case train::FlagKind::toggle:
        if constexpr (std::is_same_v<T, bool>) o = cmd->add_flag(name, field, help);
        break;
      case train::FlagKind::on_off:
        if constexpr (std::is_same_v<T, bool>) {
          o = cmd->add_option_function<std::string>(
                     name, [&field](const std::string& text) { field = parse_enum<OnOff>(text, "value") == OnOff::on; },
                     help)
                  ->check(enum_validator<OnOff>())
                  ->default_str(std::string(enum_name(static_cast<OnOff>(field))));
        }
        break;
      case train::FlagKind::json:
        if constexpr (std::is_same_v<T, nlohmann::json>) {
          o = cmd->add_option_function<std::string>(
              name,
              [&field, name](const std::string& text) {
                try {
                  field = nlohmann::json::parse(text);
                } catch (const nlohmann::json::exception& e) {
                  DF_FAIL(name, ": not valid JSON (", e.what(), ")");
                }
              },
              help);
        }
        break;
      case train::FlagKind::value:
        if constexpr (std::is_enum_v<T>) {
          o = add_enum_option(cmd, name, field, help);
        } else if constexpr (is_optional<T>::value) {
          o = cmd->add_option_function<typename T::value_type>(
              name, [&field](const typename T::value_type& v) { field = v; }, help);
        } else if constexpr (!std::is_same_v<T, nlohmann::json> && !std::is_same_v<T, std::vector<double>>) {
          o = cmd->add_option(name, field, help)->capture_default_str();
        }
        break;
    }
    DF_CHECK(o != nullptr, "diffuse train: field '", f.key, "' has a flag kind its type cannot take");
    if constexpr (!std::is_enum_v<T> && !std::is_same_v<T, nlohmann::json> && !std::is_same_v<T, std::vector<double>>)
      if (f.check && f.flag_kind == train::FlagKind::value)
        o->check(field_validator<T>(f.check, f.values ? braced(f.values()) : std::string()));
    out.push_back({o, std::string(f.key)});
  });
  return out;
}

}  // namespace

void register_train(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("train", "Train a diffusion model (checkpoints, sample grids and a CSV log go to --out)");
  auto cfg = std::make_shared<train::TrainConfig>();
  auto config_file = std::make_shared<std::string>();
  auto resume = std::make_shared<bool>(false);

  cmd->add_option("--config", *config_file, "JSON file of training settings (keys as the flags, with _ for -); flags given on the command line override it");
  // One flag per field of the config, from its one list (models/train/config_fields.h).
  const auto flags = std::make_shared<std::vector<ConfigFlag>>(add_config_flags(cmd, *cfg));
  cmd->add_flag("--resume", *resume, "continue the run in --out from its checkpoint (exactly: same batches, same noise)");

  cmd->callback([cfg, config_file, resume, flags] {
    train::TrainConfig c = *cfg;
    bool schedule_given = false;
    for (const ConfigFlag& f : *flags) schedule_given = schedule_given || (f.key == "schedule" && f.option->count() > 0);
    if (!config_file->empty()) {
      std::ifstream in(*config_file);
      DF_CHECK(in.good(), "cannot read the config file ", *config_file);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        DF_FAIL(*config_file, ": not valid JSON (", e.what(), ")");
      }
      // Flags given on the command line win over the file.
      const nlohmann::json given = cfg->to_json();
      if (j.is_object() && j.contains("schedule")) schedule_given = true;
      train::TrainConfig from_file = train::TrainConfig::from_json(j);
      nlohmann::json merged = from_file.to_json();
      for (const ConfigFlag& f : *flags) {
        if (f.option->count() == 0) continue;
        if (given.contains(f.key)) merged[f.key] = given[f.key];
        else merged.erase(f.key);  // a key to_json writes only when set, given as the default
      }
      c = train::TrainConfig::from_json(merged);
    }
    // VDM's point is the learned schedule: it is what --objective vdm trains unless told otherwise.
    if (c.objective == train::Objective::vdm && !schedule_given) c.schedule = train::ScheduleKind::learned;
    c = train::TrainConfig::from_json(c.to_json());  // validates
    stop_on_signals();
    auto progress = std::make_shared<Progress>("train", c.steps);
    double last_loss = 0, last_rate = 0;
    train::TrainCallbacks cb;
    cb.on_step = [&](const train::StepStats& s) {
      if (s.total_steps > 0) progress->set_total(s.total_steps);
      if (s.images_per_s > 0) { last_loss = s.loss; last_rate = s.images_per_s; }
      char extra[128];
      if (last_rate > 0)
        std::snprintf(extra, sizeof extra, "loss %.4f  %.0f img/s%s", last_loss, last_rate,
                      s.nonfinite_skipped ? "  (non-finite steps skipped)" : "");
      else  // nothing measured before the first log row
        std::snprintf(extra, sizeof extra, "%s", s.nonfinite_skipped ? "(non-finite steps skipped)" : "");
      progress->update(s.step, extra);
    };
    cb.on_message = [&](const std::string& m) { std::fprintf(stderr, "\n%s\n", m.c_str()); };
    cb.should_stop = stop_requested;
    std::string ckpt = train::train(c, *resume, cb);
    if (stop_requested()) {
      progress->finish();
      report_stopped(ckpt);
    }
  });
}

}  // namespace diffuse::tools
