// tools/commands.h: each subcommand of the `diffuse` CLI registers itself on the root app.
#pragma once

#include <CLI/CLI.hpp>

namespace diffuse::tools {

// A subcommand's callback sets the process exit code through this.
int& exit_code();

void register_info(CLI::App& root);
void register_train(CLI::App& root);
void register_sample(CLI::App& root);
void register_eval(CLI::App& root);
void register_diffusers(CLI::App& root);  // import-diffusers, export-diffusers
void register_classifier(CLI::App& root);  // train-classifier
void register_autoencoder(CLI::App& root);  // train-autoencoder

}  // namespace diffuse::tools
