// One decoding step of a batch (decoding.BatchDecoder) in one call: the layer loop of
// Transformer.forward for one token per row, with the products in PyTorch's kernels (int8: the
// packed weights' own apply_dynamic, as quantized::linear_dynamic calls it; float32: at::addmm) and
// the work between them in decode_one.cpp's rows_* functions.
//
// Why: at 32 rows the products and the attention over the cache are most of a step, but a loop
// issued from Python still paid ~8 interpreter round trips per layer (~0.4 ms of a ~5 ms int8 step).

#include "decode_batch.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>

torch::Tensor rows_add_norm(torch::Tensor x, const torch::Tensor& delta, const torch::Tensor& w,
                            const torch::Tensor& b, double eps);
torch::Tensor rows_attend(const torch::Tensor& qkv, const torch::Tensor& positions, int64_t col,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor k_cache,
                          torch::Tensor v_cache, int64_t layer, const torch::Tensor& key_ok, int64_t heads);
torch::Tensor swiglu_forward(const torch::Tensor& h);

struct BatchStep::Impl {
  std::vector<torch::Tensor> tables, norms, weights, biases;
  std::vector<c10::intrusive_ptr<LinearPackedParamsBase>> packed;
  bool swiglu = true, reduce_range = false;
  int64_t heads = 1;
  double eps = 1e-5;

  torch::Tensor linear(size_t i, const torch::Tensor& x) const;
};

namespace {

// mkldnn::_linear_pointwise (oneDNN's x @ w^T + b, the operator Inductor uses), called boxed.
torch::Tensor onednn_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{x, w, b.numel() ? c10::IValue(b) : c10::IValue(), std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), c10::IValue()};
  op.callBoxed(stack);
  return stack[0].toTensor();
}

// quantized::linear_prepack of a per-channel int8 weight, under the quantized engine in effect (the
// caller's); the op returns the packed weights as a custom-class object holding them.
c10::intrusive_ptr<LinearPackedParamsBase> prepack(const torch::Tensor& q, const torch::Tensor& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_prepack", "");
  torch::jit::Stack stack{q, bias.numel() ? c10::IValue(bias) : c10::IValue()};
  op.callBoxed(stack);
  TORCH_CHECK(stack.size() == 1 && stack[0].isObject(), "linear_prepack: unexpected result");
  return c10::static_intrusive_pointer_cast<LinearPackedParamsBase>(stack[0].toObject()->getSlot(0).toCapsule());
}

}  // namespace

// weights[i] is [in, out]: either a transposed copy (contiguous), for MKL's x @ w, which ran ~25%
// faster than x @ w^T at 32 rows x 288-768 on a Xeon; or the layer's own [out, in] weight seen
// transposed, for oneDNN where it measured faster (decoding._weight: on AMD processors MKL runs AVX2
// code), which also spares the copy.
torch::Tensor BatchStep::Impl::linear(size_t i, const torch::Tensor& x) const {
  if (!packed.empty()) return packed[i]->apply_dynamic(x, reduce_range);
  const auto& w = weights[i];
  if (!w.is_contiguous()) return onednn_linear(x, w.t(), biases[i]);
  return biases[i].numel() ? at::addmm(biases[i], x, w) : at::mm(x, w);
}

BatchStep::BatchStep(const std::vector<torch::Tensor>& tables, const std::vector<torch::Tensor>& norms,
                     const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases, bool swiglu,
                     bool reduce_range, int64_t heads, double eps)
    : impl_(std::make_shared<Impl>()) {
  TORCH_CHECK(tables.size() == 4 && weights.size() % 4 == 1 && biases.size() == weights.size() &&
              norms.size() == weights.size() + 1, "BatchStep: 4 tables, 4 products and 4 norm tensors per layer");
  auto& s = *impl_;
  s.tables = tables, s.norms = norms, s.weights = weights, s.biases = biases;
  s.swiglu = swiglu, s.reduce_range = reduce_range, s.heads = heads, s.eps = eps;
  if (weights[0].is_quantized())
    for (size_t i = 0; i < weights.size(); ++i) s.packed.push_back(prepack(weights[i], biases[i]));
}

// Logits [B, vocab] for tokens [B] at cache column `col` of k_cache, v_cache [L, B, H, max_len, hd]
// (positions [B] or empty: all at col; key_ok: empty, or [B, >= col + 1] bool, false hiding a padded
// key). The caller advances the cache's position.
torch::Tensor BatchStep::step(const torch::Tensor& tok, const torch::Tensor& positions, const torch::Tensor& key_ok,
                              int64_t col, const torch::Tensor& k_cache, const torch::Tensor& v_cache) {
  const Impl& s = *impl_;
  const auto &tok_emb = s.tables[0], &pos_emb = s.tables[1], &cos = s.tables[2], &sin = s.tables[3];
  auto x = tok_emb.index_select(0, tok);
  if (pos_emb.numel()) x = x + (positions.numel() ? pos_emb.index_select(0, positions) : pos_emb[col]);
  torch::Tensor delta = torch::empty({0});
  const size_t layers = s.weights.size() / 4;
  for (size_t l = 0; l < layers; ++l) {
    const torch::Tensor* n = s.norms.data() + 4 * l;
    auto h = rows_add_norm(x, delta, n[0], n[1], s.eps);
    auto y = rows_attend(s.linear(4 * l, h), positions, col, cos, sin, k_cache, v_cache,
                         static_cast<int64_t>(l), key_ok, s.heads);
    h = rows_add_norm(x, s.linear(4 * l + 1, y), n[2], n[3], s.eps);
    auto mid = s.linear(4 * l + 2, h);
    delta = s.linear(4 * l + 3, s.swiglu ? swiglu_forward(mid) : at::gelu(mid, "tanh"));
  }
  return s.linear(4 * layers, rows_add_norm(x, delta, s.norms[4 * layers], s.norms[4 * layers + 1], s.eps));
}
