// Cross-entropy of a chunk of logits with its gradient, row by row, in place (train.HeadLoss).
//
// Why by hand: for small models the output head dominates a training step, and in eager PyTorch the
// softmax of a [rows, vocab] chunk is half a dozen passes over it (max, subtract, exp, sum, divide,
// scatter, scale), each a separate operator. Here each row (16 KB at a 4096-token vocabulary) stays
// in the core's first-level cache while its maximum, exponentials, sum and gradient are formed.

#include <torch/types.h>  // not torch/extension.h: a third of the compile time; bindings live in module.cpp
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "simd.h"

// logits [n, V] float32, contiguous: overwritten with scale * (softmax(logits) - onehot(targets)).
// Returns the summed cross-entropy of the n rows.
double softmax_xent_grad_(torch::Tensor logits, const torch::Tensor& targets, double scale_) {
  TORCH_CHECK(logits.scalar_type() == torch::kFloat && logits.dim() == 2 && logits.is_contiguous(),
              "softmax_xent_grad_: logits must be contiguous float32 [n, vocab]");
  TORCH_CHECK(targets.scalar_type() == torch::kLong && targets.dim() == 1 && targets.size(0) == logits.size(0) &&
              targets.is_contiguous(), "softmax_xent_grad_: targets must be int64 [n]");
  const int64_t n = logits.size(0), V = logits.size(1);
  float* x = logits.data_ptr<float>();
  const int64_t* t = targets.data_ptr<int64_t>();
  const float scale = static_cast<float>(scale_);
  std::vector<double> row_loss(n);
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = x + r * V;
      const int64_t target = t[r];
      TORCH_CHECK(target >= 0 && target < V, "softmax_xent_grad_: target out of range");
      const float picked = row[target];
      const float top = tinyscale::max_of(row, V);
      const float total = tinyscale::exp_shifted(row, V, top);
      row_loss[r] = static_cast<double>(top) + std::log(static_cast<double>(total)) - picked;
      const float mul = scale / total;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) row[j] *= mul;
      row[target] -= scale;
    }
  });
  double sum = 0;
  for (const double l : row_loss) sum += l;
  return sum;
}
