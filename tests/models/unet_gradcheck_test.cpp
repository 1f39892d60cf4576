// A double-precision gradcheck of a small UNet with every block kind: time conditioning (added
// and scale-shift), attention, down and up sampling (conv, and inside ResBlocks), skip
// concatenation, class labels, dropout, and the google/ddpm-* variant (GroupNorm eps 1e-6,
// diffusers' bottom/right padding before the downsampling conv); the input gradient and every
// parameter's gradient.
#include <catch2/catch.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/gradcheck.h"
#include "models/nn/unet.h"
#include "tests/models/micro_unet.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

namespace {

// The micro UNet (micro_unet.h) in three variants: ADM's options, DDPM's, diffusers' google/ddpm-*.
enum class Variant { ddpm, adm, diffusers_ddpm };

UNetConfig micro_config(Variant v) {
  UNetConfig c = test::micro_unet_config();
  if (v == Variant::adm) {
    c.scale_shift_norm = true;
    c.resblock_updown = true;
    c.num_classes = 3;
    c.learn_sigma = true;
    c.dropout = 0.2f;
  } else if (v == Variant::ddpm) {
    c.rescale_residual = true;
    c.head_channels = 2;
  } else {
    c.norm_eps = 1e-6;
    c.downsample_padding = 0;
  }
  return c;
}

}  // namespace

TEST_CASE("a small UNet's gradients match finite differences in f64 (input and parameters)", "[cpu][models][heavy]") {
  // Thousands of evaluations of a network whose tensors have a few dozen elements: a thread team
  // per op only costs (and under a loaded machine its spinning barriers cost 50x), so one thread.
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  for (Variant variant : {Variant::ddpm, Variant::adm, Variant::diffusers_ddpm}) {
    CAPTURE(static_cast<int>(variant));
    const bool adm = variant == Variant::adm;
    UNetConfig c = micro_config(variant);
    UNet net(c, test::next_seed());
    net.to(DType::f64);
    const int64_t B = 2;
    Tensor t = test::random_tensor({B}, 0.f, 1000.f);
    Tensor labels = Tensor::from_vector_i64({1, 3}, {B});
    // Random weights everywhere (the zero-initialised ends would otherwise hide every gradient
    // upstream of them); scaled so activations stay of unit order.
    auto params = net.named_parameters();
    std::vector<Tensor> inputs = {test::random_normal({B, 4, 4, c.in_channels})};
    for (auto& [n, v] : params) inputs.push_back(test::random_tensor(v.shape(), -0.5f, 0.5f));
    INFO(net.num_parameters() << " parameters");
    auto f = [&](const std::vector<ag::Var>& v) {
      net.bind_parameters({v.begin() + 1, v.end()});
      net.set_dropout_seed(7);  // the same dropout masks on every evaluation
      return net.forward(v[0], t, adm ? labels : Tensor());
    };
    auto r = ag::gradcheck(f, inputs);
    INFO(r.report);
    CHECK(r.ok);
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}
