// `diffuse import-diffusers` and `diffuse export-diffusers`: HuggingFace diffusers UNet2DModel
// folders in and out (models/interop/diffusers.h has the mapping).
#include <cstdio>
#include <memory>
#include <string>

#include "models/interop/diffusers.h"
#include "tools/commands.h"

namespace diffuse::tools {

void register_diffusers(CLI::App& root) {
  struct Args {
    std::string in, out;
  };
  auto imp = std::make_shared<Args>();
  CLI::App* ci = root.add_subcommand(
      "import-diffusers", "Convert a diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors, "
                          "optional scheduler_config.json; or a pipeline folder with unet/ and scheduler/) into a "
                          "diffuse checkpoint");
  ci->add_option("dir", imp->in, "the diffusers model or pipeline folder")->required();
  ci->add_option("checkpoint", imp->out, "the checkpoint to write (.safetensors)")->required();
  ci->callback([imp] {
    interop::DiffusersModel m = interop::import_diffusers(imp->in, imp->out);
    int64_t params = 0;
    for (const auto& [name, t] : m.weights) params += t.numel();
    std::printf("wrote %s (%lld parameters, %dx%dx%d, objective %s, %s schedule, %d steps%s%s)\n", imp->out.c_str(),
                static_cast<long long>(params), m.unet.image_size, m.unet.image_size, m.unet.in_channels,
                std::string(enum_name(m.train.objective)).c_str(), std::string(enum_name(m.train.schedule)).c_str(),
                m.train.timesteps,
                m.train.variance == diffusion::VarianceKind::beta ? ", DDPM variance beta (fixed_large)" : "",
                m.scheduler.is_null() ? "; no scheduler_config.json, so DDPM's linear betas" : "");
    if (!m.sample_flags.empty())
      std::printf("the scheduler's own sampling settings: diffuse sample %s %s\n", m.sample_flags.c_str(),
                  imp->out.c_str());
  });

  auto exp = std::make_shared<Args>();
  CLI::App* ce = root.add_subcommand(
      "export-diffusers", "Write a diffuse checkpoint's EMA weights as a diffusers UNet2DModel folder (config.json, "
                          "diffusion_pytorch_model.safetensors, scheduler_config.json)");
  ce->add_option("checkpoint", exp->in, "checkpoint.safetensors")->required();
  ce->add_option("dir", exp->out, "the folder to write (created if missing; its three files are replaced)")->required();
  ce->callback([exp] {
    interop::export_diffusers(exp->in, exp->out);
    std::printf("wrote %s (UNet2DModel.from_pretrained reads it)\n", exp->out.c_str());
  });
}

}  // namespace diffuse::tools
