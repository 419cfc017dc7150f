// The Python module of tinyscale's C++ kernels (one extension, compiled once; see __init__.py).

// torch/types.h and the pybind caster, not torch/extension.h (the whole C++ API): compiles in ~60% of the time.
#include <torch/types.h>
#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "decode_batch.h"

// decode_one.cpp
torch::Tensor step(int64_t token, int64_t pos, const torch::Tensor& tok_emb, const torch::Tensor& pos_emb,
                   const std::vector<torch::Tensor>& layers, const torch::Tensor& norm_w, const torch::Tensor& norm_b,
                   const torch::Tensor& head, const torch::Tensor& head_scale, const torch::Tensor& rope_cos,
                   const torch::Tensor& rope_sin, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   double eps);
torch::Tensor attend_cached(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t len,
                            const torch::Tensor& key_ok, double scale);
torch::Tensor rows_add_norm(torch::Tensor x, const torch::Tensor& delta, const torch::Tensor& w,
                            const torch::Tensor& b, double eps);
torch::Tensor rows_attend(const torch::Tensor& qkv, const torch::Tensor& positions, int64_t col,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor k_cache,
                          torch::Tensor v_cache, int64_t layer, const torch::Tensor& key_ok, int64_t heads);
torch::Tensor rows_sample(const torch::Tensor& logits, const torch::Tensor& u, double temperature);
// attention.cpp
std::vector<torch::Tensor> causal_attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                                    const torch::Tensor& v);
std::vector<torch::Tensor> causal_attention_backward(const torch::Tensor& dout, const torch::Tensor& q,
                                                     const torch::Tensor& k, const torch::Tensor& v,
                                                     const torch::Tensor& out, const torch::Tensor& lse);
std::vector<torch::Tensor> qkv_attention_forward(const torch::Tensor& qkv, const torch::Tensor& cos,
                                                 const torch::Tensor& sin);
torch::Tensor qkv_attention_backward(const torch::Tensor& dout, const torch::Tensor& qkv, const torch::Tensor& out,
                                     const torch::Tensor& lse, const torch::Tensor& cos, const torch::Tensor& sin);
// fused.cpp
std::vector<torch::Tensor> rms_norm_forward(const torch::Tensor& x, const torch::Tensor& w, double eps);
std::vector<torch::Tensor> rms_norm_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& w,
                                             const torch::Tensor& rstd);
torch::Tensor swiglu_forward(const torch::Tensor& h);
torch::Tensor swiglu_backward(const torch::Tensor& dy, const torch::Tensor& h);
torch::Tensor transpose_matrix(const torch::Tensor& src);
// loss.cpp
double softmax_xent_grad_(torch::Tensor logits, const torch::Tensor& targets, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "one decoding step for a single sequence");
  m.def("attend_cached", &attend_cached, "one query per row and head over a cached layer");
  m.def("rows_add_norm", &rows_add_norm, "batched decoding: residual add in place, then the norm");
  m.def("rows_attend", &rows_attend, "batched decoding: rotary, cache write and attention after qkv");
  m.def("rows_sample", &rows_sample, "batched decoding: one token per row by inverse-CDF sampling");
  pybind11::class_<BatchStep>(m, "BatchStep", "a batch's decoding step in one call (decode_batch.cpp)")
      .def(pybind11::init<const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&,
                          const std::vector<torch::Tensor>&, const std::vector<torch::Tensor>&, bool, bool, int64_t,
                          double>())
      .def("step", &BatchStep::step);
  m.def("causal_attention_forward", &causal_attention_forward, "causal attention for training: (out, lse)");
  m.def("softmax_xent_grad_", &softmax_xent_grad_, "cross-entropy of a chunk of logits; its gradient in place");
  m.def("causal_attention_backward", &causal_attention_backward, "gradients (dq, dk, dv) of the forward");
  m.def("qkv_attention_forward", &qkv_attention_forward, "rotary positions + causal attention of a packed projection");
  m.def("qkv_attention_backward", &qkv_attention_backward, "its gradient, packed as [B, T, 3, H, hd]");
  m.def("rms_norm_forward", &rms_norm_forward, "RMSNorm: (y, 1 / rms per row)");
  m.def("rms_norm_backward", &rms_norm_backward, "RMSNorm gradients (dx, dw)");
  m.def("swiglu_forward", &swiglu_forward, "silu(gate) * up of [gate, up]");
  m.def("swiglu_backward", &swiglu_backward, "gradient of swiglu_forward for [gate, up]");
  m.def("transpose_matrix", &transpose_matrix, "a float32 matrix's transpose, contiguous");
}
