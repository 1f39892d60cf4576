// tests/fuzz/diffusers_input.h: the one-file form of a diffusers model folder that fuzz_diffusers
// reads and its seeds (tests/corpus/diffusers) hold.
//
//   config.json <cut> scheduler_config.json <cut> diffusion_pytorch_model.safetensors
//
// with <cut> = kDiffusersCut. The file is split at the first two cuts, so the weights (binary)
// may contain anything; an empty scheduler part means no scheduler_config.json (the importer's
// DDPM defaults), and a missing part means a missing file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace diffuse::fuzz {

inline constexpr std::string_view kDiffusersCut = "\n--8<-- diffusers --8<--\n";

inline std::string join_diffusers_input(std::string_view config, std::string_view scheduler, std::string_view weights) {
  std::string s(config);
  s.append(kDiffusersCut).append(scheduler).append(kDiffusersCut).append(weights);
  return s;
}

// Writes the parts of `input` into `dir` (created if missing) as config.json,
// scheduler_config.json and diffusion_pytorch_model.safetensors, after removing what an earlier
// input left there.
inline void write_diffusers_input(std::string_view input, const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const char* names[3] = {"config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"};
  fs::create_directories(dir);
  for (const char* n : names) fs::remove(dir / n);
  size_t at = 0;
  for (int part = 0; part < 3; ++part) {
    size_t end = part == 2 ? std::string_view::npos : input.find(kDiffusersCut, at);
    const std::string_view text = input.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at);
    if (part != 1 || !text.empty()) std::ofstream(dir / names[part], std::ios::binary).write(text.data(), text.size());
    if (end == std::string_view::npos) break;
    at = end + kDiffusersCut.size();
  }
}

}  // namespace diffuse::fuzz
