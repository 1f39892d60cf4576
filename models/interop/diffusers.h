// models/interop/diffusers.h: HuggingFace diffusers UNet2DModel folders in and out.
//
// A diffusers model folder holds config.json (the UNet2DModel's constructor arguments) and
// diffusion_pytorch_model.safetensors (its state dict, PyTorch layouts); a pipeline folder holds
// them in unet/ and its noise schedule in scheduler/scheduler_config.json. diffuse's UNet is the
// same network (ADM's layout, which diffusers' UNet2DModel follows block for block), so a model
// maps over exactly when its config uses only what diffuse's UNet has; anything else is refused
// with the key and value, before anything is written (docs/models.md, "diffusers models").
//
// Names: down_blocks.<i>.resnets.<j>  <-> down.<i>.res.<j>      (norm1 conv1 time_emb_proj norm2
//        down_blocks.<i>.attentions.<j> <-> down.<i>.attn.<j>    conv2 conv_shortcut <-> norm1 conv1
//        down_blocks.<i>.downsamplers.0 <-> down.<i>.downsample  emb_proj norm2 conv2 skip)
//        up_blocks.<L-1-i>.*           <-> up.<i>.*  (diffusers counts up blocks coarsest first)
//        mid_block.resnets.0/1, attentions.0 <-> mid.res1/res2, mid.attn
//        time_embedding.linear_1/2 <-> time.fc1/2, class_embedding <-> label_emb,
//        conv_norm_out <-> out_norm, conv_out <-> out_conv, conv_in <-> conv_in.
// Layouts: convolutions (Cout, Cin, KH, KW) <-> (Cout, KH, KW, Cin); attention's to_q, to_k,
// to_v (or the older query, key, value) <-> rows [0, C), [C, 2C), [2C, 3C) of qkv; to_out.0 (or
// proj_attn) <-> proj. Heads take contiguous channel ranges in both.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "models/nn/unet.h"
#include "models/train/trainer.h"

namespace diffuse::interop {

// What a diffusers folder becomes.
struct DiffusersModel {
  nn::UNetConfig unet;
  train::TrainConfig train;                 // objective, schedule, timesteps: what sampling needs
  std::map<std::string, Tensor> weights;    // diffuse parameter names, diffuse layouts, f32
  nlohmann::json scheduler;                 // scheduler_config.json as read; null when there was none
  // `diffuse sample` options that reproduce the scheduler's own sampling settings (clip_sample,
  // timestep_spacing), e.g. "--spacing leading"; empty when the defaults already do.
  std::string sample_flags;
};

// config.json -> diffuse's UNet config. `file` names the file in messages.
nn::UNetConfig unet_config_from_diffusers(const nlohmann::json& config, const std::string& file);
// diffuse's UNet config -> config.json (refuses what UNet2DModel cannot express).
nlohmann::json diffusers_config_from_unet(const nn::UNetConfig& c);

// scheduler_config.json -> the noise process of `t` (timesteps, schedule, beta_start / beta_end,
// betas), its objective and its DDPM variance (learn_sigma says whether the UNet outputs one).
// Returns the sample flags (see DiffusersModel). docs/embedding.md lists each key.
std::string schedule_from_diffusers(const nlohmann::json& scheduler, const std::string& file, bool learn_sigma,
                                    train::TrainConfig& t);
// The scheduler_config.json of a diffuse model (DDPMScheduler, diffusers' defaults otherwise;
// trained_betas where no named schedule gives the betas).
nlohmann::json diffusers_scheduler_from(const train::TrainConfig& t);

// Reads DIR (config.json and diffusion_pytorch_model.safetensors in DIR or DIR/unet;
// scheduler_config.json in DIR/scheduler or DIR, optional: DDPM's linear betas, 1000 steps, eps
// without it). Throws diffuse::Error naming the file and key for anything it cannot take.
DiffusersModel read_diffusers(const std::string& dir);

// read_diffusers, then a diffuse checkpoint at `out` (the same weights as live and EMA weights,
// step 0), written atomically: `diffuse sample` and the C API load it like a trained one.
DiffusersModel import_diffusers(const std::string& dir, const std::string& out);

// A checkpoint's EMA weights as a diffusers folder: DIR/config.json,
// DIR/diffusion_pytorch_model.safetensors, DIR/scheduler_config.json (UNet2DModel.from_pretrained
// and the schedulers' from_pretrained read it). Everything is checked before the first file is
// written; each file is written atomically.
void export_diffusers(const std::string& checkpoint, const std::string& dir);

}  // namespace diffuse::interop
