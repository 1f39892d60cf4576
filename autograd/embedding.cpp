// autograd/embedding.cpp: the differentiable table lookup (kernels/embedding.h does the math).
#include <vector>

#include "autograd/autocast.h"
#include "autograd/elementwise.h"
#include "kernels/embedding.h"

namespace diffuse::ag {

// ids are integers: no gradient; the table's gradient is the scatter-add of the rows' gradients.
Var embedding(const Tensor& ids, const Var& table_in) {
  const Var table = autocast(table_in);
  return record("embedding", kernels::embedding_forward(ids, table.value()), {table},
                [ids, ts = table.shape()](const Tensor& g) {
                  return std::vector<Tensor>{kernels::embedding_backward(g, ids, ts)};
                });
}

}  // namespace diffuse::ag
