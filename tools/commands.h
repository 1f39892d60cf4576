// tools/commands.h: each subcommand of the `diffuse` CLI registers itself on the root app.
#pragma once

#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace diffuse::tools {

// A subcommand's callback sets the process exit code through this.
int& exit_code();

// The training commands' Ctrl-C and SIGTERM: stop_on_signals() before the run makes either one a
// request (stop_requested()) that the run answers at its next step by saving its checkpoint; then
// report_stopped says how to continue and sets the exit code 130.
void stop_on_signals();
bool stop_requested();
void report_stopped(const std::string& checkpoint);

// A --model flag's text: a JSON object of `keys` (e.g. "UNet keys"), or an error saying what is wrong.
nlohmann::json parse_model_json(const std::string& text, const std::string& keys);

void register_info(CLI::App& root);
void register_train(CLI::App& root);
void register_sample(CLI::App& root);
void register_eval(CLI::App& root);
void register_diffusers(CLI::App& root);  // import-diffusers, export-diffusers
void register_classifier(CLI::App& root);  // train-classifier
void register_autoencoder(CLI::App& root);  // train-autoencoder

}  // namespace diffuse::tools
