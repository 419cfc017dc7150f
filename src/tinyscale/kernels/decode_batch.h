// decode_batch.cpp's step of a batch, as module.cpp binds it.
#pragma once

#include <torch/types.h>

#include <memory>
#include <vector>

class BatchStep {
 public:
  // tables: tok_emb, pos_emb (empty: rotary), cos, sin (empty: learned positions);
  // norms: per layer attn weight, bias, mlp weight, bias (empty bias: RMSNorm), then the final norm's;
  // weights, biases: per layer qkv, proj, fc, down, then the head: float32 [in, out] (a transposed copy
  // for MKL, or the [out, in] weight's transposed view for oneDNN), or
  // quantized int8 [out, in] (per-channel).
  BatchStep(const std::vector<torch::Tensor>& tables, const std::vector<torch::Tensor>& norms,
            const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases, bool swiglu,
            bool reduce_range, int64_t heads, double eps);
  torch::Tensor step(const torch::Tensor& tok, const torch::Tensor& positions, const torch::Tensor& key_ok,
                     int64_t col, const torch::Tensor& k_cache, const torch::Tensor& v_cache);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};
