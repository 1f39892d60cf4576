// kernels/embedding.h: the lookup copies rows (exact); the backward sums the rows' gradients in
// id order, the same f32 additions as the loop below (exact).
#include <catch2/catch.hpp>

#include <vector>

#include "core/tensor.h"
#include "kernels/embedding.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("embedding gathers rows and scatter-adds gradients", "[cpu][kernels]") {
  for (int64_t K : {1, 7}) {
    for (int64_t D : {1, 5, 33}) {
      const std::vector<int64_t> ids = K == 1 ? std::vector<int64_t>{0} : std::vector<int64_t>{3, 0, 6, 3, 3};
      const int64_t B = static_cast<int64_t>(ids.size());
      Tensor table = random_tensor({K, D}), id = Tensor::from_vector_i64(ids, {B});
      Tensor out = Tensor::empty({B, D});
      out.poison_();
      kernels::cpu::embedding_forward(id, table, out);
      const std::vector<float> tv = table.to_vector(), ov = out.to_vector();
      bool ok = true;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t d = 0; d < D; ++d) ok = ok && ov[b * D + d] == tv[ids[b] * D + d];
      CHECK(ok);

      Tensor dy = random_tensor({B, D}), dt = Tensor::empty({K, D});
      dt.poison_();
      kernels::cpu::embedding_backward(dy, id, dt);
      const std::vector<float> g = dy.to_vector();
      std::vector<float> want(static_cast<size_t>(K * D), 0.f);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t d = 0; d < D; ++d) want[ids[b] * D + d] += g[b * D + d];
      CHECK(dt.to_vector() == want);
    }
  }
}

TEST_CASE("embedding rejects ids outside the table", "[cpu][kernels]") {
  Tensor table = random_tensor({4, 3});
  CHECK_THROWS_WITH(kernels::embedding_forward(Tensor::from_vector_i64({1, 4}, {2}), table),
                    Catch::Contains("id 4 at position 1"));
  CHECK_THROWS_AS(kernels::embedding_forward(Tensor::from_vector_i64({-1}, {1}), table), Error);
  CHECK_THROWS_AS(kernels::embedding_forward(Tensor::from_vector({1.f}, {1}), table), Error);  // not i64
}
