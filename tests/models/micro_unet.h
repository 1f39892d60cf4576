// tests/models/micro_unet.h: the UNet of the f64 gradchecks, small enough for finite differences
// (~3.5k parameters, each perturbed twice): 4x4x1 images, two levels of 2 and 4 channels, one
// block per level, attention at 2x2 with 2 heads, one group. Each gradcheck adds what it tests
// (ADM's options, a low-resolution input, a context).
#pragma once

#include "models/nn/unet.h"

namespace diffuse::test {

inline nn::UNetConfig micro_unet_config() {
  nn::UNetConfig c;
  c.in_channels = 1;
  c.out_channels = 1;
  c.image_size = 4;
  c.base_channels = 2;
  c.channel_mult = {1, 2};
  c.num_res_blocks = 1;
  c.attention_resolutions = {2};
  c.groups = 1;
  c.num_heads = 2;
  return c;
}

}  // namespace diffuse::test
