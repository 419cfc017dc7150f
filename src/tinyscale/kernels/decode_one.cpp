// One decoding step of a tinyscale model (llama or neo family) for a single sequence, in one call.
//
// Why by hand: at batch 1 a step is ~8 matrix-vector products per layer plus a dozen small
// vector ops. Issued one by one from Python each op costs a few microseconds of dispatch, which at
// the widths this lab trains is as much as the arithmetic (a Python decoder written op by op spent
// ~1/3 of a step outside its products). Here the whole step is one C++ call: the products stream each weight
// row once (memory-bound), and the norms, rotary positions, attention and SwiGLU run in registers.
// The arithmetic is model.py's, in the same order where it matters (see decoding.NativeDecoder).
//
// Weights are float32 [out, in] row-major, or int8 [out, in] with one float scale per output row
// (weight-only quantization: activations stay float32, so no activation range is lost).

#include <torch/types.h>  // not torch/extension.h: a third of the compile time; bindings live in module.cpp
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

namespace {

using namespace tinyscale;

// Products with fewer output rows than this run on one thread (a fork/join costs more).
constexpr int64_t kParallelRows = 256;

// y[o] (+)= scale[o] * sum_i W[o, i] x[i] for o in [0, rows), W float32 or int8 (then with row scales).
template <typename W>
inline float dot(const W* row, const float* x, int64_t cols) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < cols; ++i) acc += static_cast<float>(row[i]) * x[i];
  return acc;
}

#ifdef TINYSCALE_AVX2
// Scores of keys [t, t + 8) against q (hd a multiple of 8), one vector.
template <typename T>
inline __m256 scores8(const float* q, const T* k, int64_t stride, int64_t hd) {
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < hd; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qv, load8(k + j * stride + i), a[j]);
  }
  return hsum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

// Dot products of four rows with x. Written with AVX2 intrinsics because compilers vectorise the
// four-accumulator loop across rows (gathers) instead of along them.
template <typename W>
inline void dot4(const W* r0, int64_t cols, const float* x, float* out) {
  const W *r1 = r0 + cols, *r2 = r1 + cols, *r3 = r2 + cols;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(load8(r0 + i), xv, a0);
    a1 = _mm256_fmadd_ps(load8(r1 + i), xv, a1);
    a2 = _mm256_fmadd_ps(load8(r2 + i), xv, a2);
    a3 = _mm256_fmadd_ps(load8(r3 + i), xv, a3);
  }
  out[0] = hsum(a0), out[1] = hsum(a1), out[2] = hsum(a2), out[3] = hsum(a3);
  for (; i < cols; ++i) {
    out[0] += static_cast<float>(r0[i]) * x[i], out[1] += static_cast<float>(r1[i]) * x[i];
    out[2] += static_cast<float>(r2[i]) * x[i], out[3] += static_cast<float>(r3[i]) * x[i];
  }
}
#else
template <typename W>
inline void dot4(const W* r0, int64_t cols, const float* x, float* out) {
  for (int r = 0; r < 4; ++r) out[r] = dot(r0 + r * cols, x, cols);
}
#endif

// y[o] (+)= scale[o] * sum_i W[o, i] x[i] for o in [0, rows), W float32 or int8 (then with row scales).
// Four rows at a time: four independent accumulators hide the latency of the fused multiply-adds,
// and each piece of x is loaded once per four rows.
template <bool Accumulate, typename W>
void matvec(const W* w, const float* scale, const float* x, float* y, int64_t rows, int64_t cols) {
  auto store = [&](int64_t o, float acc) {
    const float v = scale ? acc * scale[o] : acc;
    y[o] = Accumulate ? y[o] + v : v;
  };
  const int64_t grain = rows < kParallelRows ? rows : 64;
  at::parallel_for(0, (rows + 3) / 4, (grain + 3) / 4, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = 4 * b;
      if (o + 4 > rows) {
        for (int64_t r = o; r < rows; ++r) store(r, dot(w + r * cols, x, cols));
        continue;
      }
      float acc[4];
      dot4(w + o * cols, cols, x, acc);
      for (int r = 0; r < 4; ++r) store(o + r, acc[r]);
    }
  });
}

// A weight matrix as the Python side hands it over: float32, or int8 with per-row scales.
struct Matrix {
  const float* f32 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scale = nullptr;
  int64_t rows = 0, cols = 0;

  Matrix(const torch::Tensor& w, const torch::Tensor& s) : rows(w.size(0)), cols(w.size(1)) {
    TORCH_CHECK(w.is_contiguous() && w.device().is_cpu(), "weights must be contiguous CPU tensors");
    if (w.scalar_type() == torch::kChar) {
      TORCH_CHECK(s.defined() && s.scalar_type() == torch::kFloat && s.numel() == rows, "int8 weights need row scales");
      i8 = w.data_ptr<int8_t>();
      scale = s.data_ptr<float>();
    } else {
      TORCH_CHECK(w.scalar_type() == torch::kFloat, "weights must be float32 or int8");
      f32 = w.data_ptr<float>();
    }
  }

  template <bool Accumulate>
  void apply(const float* x, float* y) const {
    if (i8) matvec<Accumulate>(i8, scale, x, y, rows, cols);
    else matvec<Accumulate>(f32, static_cast<const float*>(nullptr), x, y, rows, cols);
  }
};

// model.py's norms: RMSNorm x * rsqrt(mean(x^2) + eps) * w (llama), or LayerNorm with bias (neo).
void norm(const float* x, const torch::Tensor& w, const torch::Tensor& b, float* out, int64_t d, float eps) {
  const float* wp = w.data_ptr<float>();
  if (b.numel() == 0) {
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) out[i] = wp[i] * (x[i] * r);
    return;
  }
  float mean = 0.f, var = 0.f;
#pragma omp simd reduction(+ : mean)
  for (int64_t i = 0; i < d; ++i) mean += x[i];
  mean /= static_cast<float>(d);
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < d; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float r = 1.f / std::sqrt(var / static_cast<float>(d) + eps);
  const float* bp = b.data_ptr<float>();
  for (int64_t i = 0; i < d; ++i) out[i] = (x[i] - mean) * r * wp[i] + bp[i];
}

void add_bias(float* y, const torch::Tensor& b) {
  if (b.numel() == 0) return;
  const float* bp = b.data_ptr<float>();
  for (int64_t i = 0; i < b.numel(); ++i) y[i] += bp[i];
}

// Rotary positions in model.py's split-halves layout: x * cos + roll(x, hd/2) * signed_sin.
void rotate(float* x, const float* cos, const float* sin, int64_t hd) {
  float tmp[512];
  const int64_t half = hd / 2;  // two loops rather than an index modulo hd: vectorised, no divisions
  for (int64_t i = 0; i < half; ++i) tmp[i] = x[i] * cos[i] + x[i + half] * sin[i];
  for (int64_t i = half; i < hd; ++i) tmp[i] = x[i] * cos[i] + x[i - half] * sin[i];
  for (int64_t i = 0; i < hd; ++i) x[i] = tmp[i];
}

// Hidden keys' scores to -inf (ok: null, or false where hidden); returns the largest score.
inline float masked_max(float* scores, const bool* ok, int64_t len) {
  if (ok)
    for (int64_t t = 0; t < len; ++t)
      if (!ok[t]) scores[t] = -INFINITY;
  return max_of(scores, len);  // vectorised, where a running std::max is not
}

// Scores of the `len` keys (stride floats apart) against q, times scale; hidden keys -inf. Returns the maximum.
template <typename T>
float row_scores(const float* q, const T* k, int64_t stride, const bool* ok, int64_t len, int64_t hd,
                 float scale, float* scores, const T* next_k = nullptr) {
  int64_t t = 0;
#ifdef TINYSCALE_AVX2
  if (hd % 8 == 0)
    for (; t + 8 <= len; t += 8)
      prefetch_rows(next_k, stride, t, 8, len, hd),
      _mm256_storeu_ps(scores + t, _mm256_mul_ps(scores8(q, k + t * stride, stride, hd), _mm256_set1_ps(scale)));
#endif
  for (; t < len; ++t) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < hd; ++i) s += q[i] * static_cast<float>(k[t * stride + i]);
    scores[t] = s * scale;
  }
  return masked_max(scores, ok, len);
}

#ifdef __AVX512F__
// AVX-512 versions of the one-query attention for head sizes that are multiples of 16 (C vectors of
// 16): half the instructions of the AVX2 path per key, where the 32-row decoding step's attention
// runs compute-bound once its cache is in the core's caches.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The lane sums of a[0..16) as one vector, in order (a transpose-and-add tree).
inline __m512 hsum16(const __m512* a) {
  __m512 b[8], c[4];
  for (int j = 0; j < 8; ++j) b[j] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * j], a[2 * j + 1]),
                                                   _mm512_unpackhi_ps(a[2 * j], a[2 * j + 1]));
  for (int k = 0; k < 4; ++k) {
    const __m512d x = _mm512_castps_pd(b[2 * k]), y = _mm512_castps_pd(b[2 * k + 1]);
    c[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 d = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
  const __m512 e = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d, e, 0x88), _mm512_shuffle_f32x4(d, e, 0xdd));
}

template <int C, typename T>
void attend_row16(const float* q, const T* k, int64_t ks, const T* v, int64_t vs, const bool* ok, int64_t len,
                  float scale, float* scores, float* y, const T* next_k, const T* next_v) {
  constexpr int64_t hd = 16 * C;
  __m512 qv[C];
  for (int c = 0; c < C; ++c) qv[c] = _mm512_mul_ps(load16(q + 16 * c), _mm512_set1_ps(scale));
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
    prefetch_rows(next_k, ks, t, 16, len, hd);
    __m512 a[16];
    for (int j = 0; j < 16; ++j) {
      const T* kt = k + (t + j) * ks;
      a[j] = _mm512_mul_ps(qv[0], load16(kt));
      for (int c = 1; c < C; ++c) a[j] = _mm512_fmadd_ps(qv[c], load16(kt + 16 * c), a[j]);
    }
    _mm512_storeu_ps(scores + t, hsum16(a));
  }
  for (; t < len; ++t) {
    const T* kt = k + t * ks;
    __m512 a = _mm512_mul_ps(qv[0], load16(kt));
    for (int c = 1; c < C; ++c) a = _mm512_fmadd_ps(qv[c], load16(kt + 16 * c), a);
    scores[t] = _mm512_reduce_add_ps(a);
  }
  const float top = masked_max(scores, ok, len);
  const float inv = 1.f / exp_shifted(scores, len, top);
  __m512 acc[2][C];
  for (int s = 0; s < 2; ++s)
    for (int c = 0; c < C; ++c) acc[s][c] = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 2 <= len; j += 2) {
    if (j % 16 == 0) prefetch_rows(next_v, vs, j, 16, len, hd);
    for (int s = 0; s < 2; ++s) {
      const __m512 w = _mm512_set1_ps(scores[j + s]);
      for (int c = 0; c < C; ++c) acc[s][c] = _mm512_fmadd_ps(w, load16(v + (j + s) * vs + 16 * c), acc[s][c]);
    }
  }
  for (; j < len; ++j)
    for (int c = 0; c < C; ++c)
      acc[0][c] = _mm512_fmadd_ps(_mm512_set1_ps(scores[j]), load16(v + j * vs + 16 * c), acc[0][c]);
  for (int c = 0; c < C; ++c)
    _mm512_storeu_ps(y + 16 * c, _mm512_mul_ps(_mm512_add_ps(acc[0][c], acc[1][c]), _mm512_set1_ps(inv)));
}
#endif

// One query over one head's cached keys and values: y = softmax(q k^T * scale) v.
template <typename T>
void attend_row(const float* q, const T* k, int64_t ks, const T* v, int64_t vs, const bool* ok, int64_t len,
                int64_t hd, float scale, float* scores, float* y, const T* next_k = nullptr,
                const T* next_v = nullptr) {
#ifdef __AVX512F__
  switch (hd) {
    case 16: return attend_row16<1>(q, k, ks, v, vs, ok, len, scale, scores, y, next_k, next_v);
    case 32: return attend_row16<2>(q, k, ks, v, vs, ok, len, scale, scores, y, next_k, next_v);
    case 48: return attend_row16<3>(q, k, ks, v, vs, ok, len, scale, scores, y, next_k, next_v);
    case 64: return attend_row16<4>(q, k, ks, v, vs, ok, len, scale, scores, y, next_k, next_v);
  }
#endif
  const float top = row_scores(q, k, ks, ok, len, hd, scale, scores, next_k);
  const float inv = 1.f / exp_shifted(scores, len, top);
#pragma omp simd
  for (int64_t t = 0; t < len; ++t) scores[t] *= inv;
  switch (hd) {  // the head sizes this lab's presets use: accumulators in registers
    case 16: return weighted_rows<2, 2>(scores, v, vs, len, y, next_v);
    case 32: return weighted_rows<4, 2>(scores, v, vs, len, y, next_v);
    case 48: return weighted_rows<6, 2>(scores, v, vs, len, y, next_v);
    case 64: return weighted_rows<8, 2>(scores, v, vs, len, y, next_v);
  }
  std::fill(y, y + hd, 0.f);
  for (int64_t t = 0; t < len; ++t) {
    const T* vt = v + t * vs;
#pragma omp simd
    for (int64_t i = 0; i < hd; ++i) y[i] += scores[t] * static_cast<float>(vt[i]);
  }
}

}  // namespace

// The MLP's nonlinearity on the first product's output h: SwiGLU (llama: h = [gate, up], 2 * ffn
// values, result in h[0:ffn]) or GPT-Neo's tanh GELU (neo: ffn values).
void activate(float* h, int64_t ffn, bool swiglu) {
  for (int64_t i = 0; i < ffn; ++i) {
    const float g = h[i];
    if (swiglu) {
      h[i] = g / (1.f + std::exp(-g)) * h[ffn + i];
    } else {
      h[i] = 0.5f * g * (1.f + std::tanh(0.7978845608028654f * (g + 0.044715f * g * g * g)));
    }
  }
}

constexpr int kPerLayer = 15;

// layers, per layer: attn_norm weight, bias | qkv, scale | proj, scale, bias | mlp_norm weight, bias |
// fc, scale, bias | down, scale, bias. Empty tensors mark what a family lacks (llama: biases; float32
// weights: scales). Positions: rotary tables (llama) or, when pos_emb is not empty, learned (neo).
// k_cache/v_cache: [n_layers, 1, H, max_len, hd] float32, written at column `pos`.
torch::Tensor step(int64_t token, int64_t pos, const torch::Tensor& tok_emb, const torch::Tensor& pos_emb,
                   const std::vector<torch::Tensor>& layers, const torch::Tensor& norm_w, const torch::Tensor& norm_b,
                   const torch::Tensor& head, const torch::Tensor& head_scale, const torch::Tensor& rope_cos,
                   const torch::Tensor& rope_sin, torch::Tensor k_cache, torch::Tensor v_cache, int64_t heads,
                   double eps_) {
  const int64_t d = tok_emb.size(1), hd = d / heads, n_layers = k_cache.size(0), max_len = k_cache.size(3);
  const bool rope = pos_emb.numel() == 0;
  TORCH_CHECK(static_cast<int64_t>(layers.size()) == kPerLayer * n_layers, "expected 15 tensors per layer");
  TORCH_CHECK(pos < max_len && pos < (rope ? rope_cos.size(0) : pos_emb.size(0)), "position beyond the cache");
  TORCH_CHECK(hd <= 512, "head size above 512");
  const int64_t ffn = layers[12].size(1);  // the down projection's input width
  const bool swiglu = layers[9].size(0) == 2 * ffn;  // the first MLP product gives [gate, up]
  const float scale = 1.f / std::sqrt(static_cast<float>(hd)), eps = static_cast<float>(eps_);
  std::vector<float> x(d), h(d), qkv(3 * d), y(d), mid(layers[9].size(0)), scores(pos + 1);
  const float* emb = tok_emb.data_ptr<float>() + token * d;
  std::copy(emb, emb + d, x.begin());
  if (!rope) {
    const float* pe = pos_emb.data_ptr<float>() + pos * d;
    for (int64_t i = 0; i < d; ++i) x[i] += pe[i];
  }
  const float* cos = rope ? rope_cos.data_ptr<float>() + pos * hd : nullptr;
  const float* sin = rope ? rope_sin.data_ptr<float>() + pos * hd : nullptr;
  const int64_t layer_stride = heads * max_len * hd;

  for (int64_t l = 0; l < n_layers; ++l) {
    const torch::Tensor* p = layers.data() + kPerLayer * l;
    norm(x.data(), p[0], p[1], h.data(), d, eps);
    Matrix(p[2], p[3]).apply<false>(h.data(), qkv.data());
    float* kc = k_cache.data_ptr<float>() + l * layer_stride;
    float* vc = v_cache.data_ptr<float>() + l * layer_stride;
    for (int64_t hh = 0; hh < heads; ++hh) {
      float* q = qkv.data() + hh * hd;
      float* k = qkv.data() + d + hh * hd;
      const float* v = qkv.data() + 2 * d + hh * hd;
      if (rope) rotate(q, cos, sin, hd), rotate(k, cos, sin, hd);
      std::copy(k, k + hd, kc + (hh * max_len + pos) * hd);
      std::copy(v, v + hd, vc + (hh * max_len + pos) * hd);
    }
    for (int64_t hh = 0; hh < heads; ++hh)
      attend_row(qkv.data() + hh * hd, kc + hh * max_len * hd, hd, vc + hh * max_len * hd, hd, nullptr, pos + 1, hd,
                 scale, scores.data(), y.data() + hh * hd);
    std::fill(h.begin(), h.end(), 0.f);
    Matrix(p[4], p[5]).apply<true>(y.data(), h.data());  // proj(y) + bias, then into the residual
    add_bias(h.data(), p[6]);
    for (int64_t i = 0; i < d; ++i) x[i] += h[i];
    norm(x.data(), p[7], p[8], h.data(), d, eps);
    Matrix(p[9], p[10]).apply<false>(h.data(), mid.data());
    add_bias(mid.data(), p[11]);
    activate(mid.data(), ffn, swiglu);
    std::fill(h.begin(), h.end(), 0.f);
    Matrix(p[12], p[13]).apply<true>(mid.data(), h.data());
    add_bias(h.data(), p[14]);
    for (int64_t i = 0; i < d; ++i) x[i] += h[i];
  }
  norm(x.data(), norm_w, norm_b, h.data(), d, eps);
  auto logits = torch::empty({1, head.size(0)}, torch::kFloat);
  Matrix(head, head_scale).apply<false>(h.data(), logits.data_ptr<float>());
  return logits;
}

// One query per row and head over a cached layer (the batched decoding step's attention).
// q: [B, H, 1, hd]; k, v: [B, H, >= len, hd] with the last dimension contiguous (a layer of the
// cache, or a view of its first rows); key_ok: empty, or [B, len] bool (false hides a key: padding).
// Returns softmax(q k^T * scale) v, [B, H, 1, hd], as scaled_dot_product_attention computes it.
//
// Why by hand: PyTorch's CPU flash attention, given one query, ran at ~5 GFLOP/s here and took 31%
// of a 32-row fp32 decoding step (58% at int8); this streams each cached key and value once.
template <typename T>
void attend_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t len,
                  const torch::Tensor& key_ok, float scale, torch::Tensor& y) {
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(3);
  const float* qp = q.data_ptr<float>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const bool* okp = key_ok.numel() > 0 ? key_ok.data_ptr<bool>() : nullptr;
  float* yp = y.data_ptr<float>();
  // Split rows x heads over the threads only when there is enough to share (as matvec does).
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, len * hd));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(len);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, nb = (bh + 1) / H, nh = (bh + 1) % H;
      const bool more = bh + 1 < end;
      attend_row(qp + bh * hd, kp + b * k.stride(0) + h * k.stride(1), k.stride(2),
                 vp + b * v.stride(0) + h * v.stride(1), v.stride(2), okp ? okp + b * key_ok.stride(0) : nullptr,
                 len, hd, scale, scores.data(), yp + bh * hd, more ? kp + nb * k.stride(0) + nh * k.stride(1) : nullptr,
                 more ? vp + nb * v.stride(0) + nh * v.stride(1) : nullptr);
    }
  });
}

torch::Tensor attend_cached(const torch::Tensor& q_, const torch::Tensor& k, const torch::Tensor& v, int64_t len,
                            const torch::Tensor& key_ok, double scale) {
  const torch::Tensor q = q_.contiguous();
  const int64_t B = q.size(0), H = q.size(1), hd = q.size(3);
  const bool half = k.scalar_type() == torch::kHalf;
  TORCH_CHECK(q.scalar_type() == torch::kFloat && (half || k.scalar_type() == torch::kFloat) &&
              v.scalar_type() == k.scalar_type(), "attend_cached: a float32 query over a float32 or float16 cache");
  TORCH_CHECK(q.size(2) == 1 && k.size(0) == B && k.size(1) == H && k.size(2) >= len && k.size(3) == hd &&
              v.sizes() == k.sizes() && k.stride(3) == 1 && v.stride(3) == 1 && len >= 1, "attend_cached: bad shapes");
  TORCH_CHECK(key_ok.numel() == 0 || (key_ok.scalar_type() == torch::kBool && key_ok.size(0) == B &&
                                      key_ok.size(1) >= len && key_ok.stride(1) == 1),
              "attend_cached: key_ok must be bool [B, >= len]");
  auto y = torch::empty({B, H, 1, hd}, torch::kFloat);
  if (half) attend_heads<at::Half>(q, k, v, len, key_ok, static_cast<float>(scale), y);
  else attend_heads<float>(q, k, v, len, key_ok, static_cast<float>(scale), y);
  return y;
}

// ---- Batched decoding steps (decoding.BatchDecoder): the small ops between the products ----
//
// Why: at 32 rows a step through Transformer.forward spent ~30% of its time in ~600 small ATen ops
// and their Python dispatch (norms, rotary positions, cache writes, residual adds, sampling). These
// functions do the work between two products of a layer in one call each; the products stay in
// PyTorch (int8: its oneDNN/fbgemm kernels, float32: its GEMM).

namespace {

void check_rows_f32(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 2 && t.is_contiguous(), what,
              ": a contiguous float32 CPU matrix");
}

// Keys or values of one head into the cache at one column (float16: rounded to nearest, as copy_ does).
inline void store(const float* src, float* dst, int64_t n) { std::copy(src, src + n, dst); }
inline void store(const float* src, at::Half* dst, int64_t n) {
  int64_t i = 0;
#ifdef TINYSCALE_AVX2
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) dst[i] = static_cast<at::Half>(src[i]);
}

// Rotate q and k of every row at its position, write k and v at cache column `col`; q into qout [B, H, hd].
template <typename T>
void rotate_and_store(const torch::Tensor& qkv, const int64_t* positions, int64_t col, const float* cos,
                      const float* sin, torch::Tensor& kl, torch::Tensor& vl, float* qout, int64_t H, int64_t hd) {
  const int64_t B = qkv.size(0), d = H * hd;
  T* kp = kl.data_ptr<T>();
  T* vp = vl.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    const float* row = qkv.data_ptr<float>() + b * 3 * d;
    const int64_t p = positions ? positions[b] : col;
    float k[512];
    for (int64_t h = 0; h < H; ++h) {
      float* q = qout + (b * H + h) * hd;
      std::copy(row + h * hd, row + (h + 1) * hd, q);
      std::copy(row + d + h * hd, row + d + (h + 1) * hd, k);
      if (cos) rotate(q, cos + p * hd, sin + p * hd, hd), rotate(k, cos + p * hd, sin + p * hd, hd);
      store(k, kp + b * kl.stride(0) + h * kl.stride(1) + col * kl.stride(2), hd);
      store(row + 2 * d + h * hd, vp + b * vl.stride(0) + h * vl.stride(1) + col * vl.stride(2), hd);
    }
  }
}

}  // namespace

// x [B, d] (the residual stream, updated in place): x += delta (unless delta is empty), then returns
// norm(x) with weight w and, for LayerNorm, bias b (RMSNorm: b empty), as model.py computes them.
torch::Tensor rows_add_norm(torch::Tensor x, const torch::Tensor& delta, const torch::Tensor& w,
                            const torch::Tensor& b, double eps) {
  check_rows_f32(x, "rows_add_norm: x");
  const int64_t B = x.size(0), d = x.size(1);
  if (delta.numel() > 0) {
    check_rows_f32(delta, "rows_add_norm: delta");
    TORCH_CHECK(delta.sizes() == x.sizes(), "rows_add_norm: delta must match x");
    float* xp = x.data_ptr<float>();
    const float* dp = delta.data_ptr<float>();
#pragma omp simd
    for (int64_t i = 0; i < B * d; ++i) xp[i] += dp[i];
  }
  TORCH_CHECK(w.numel() == d && (b.numel() == 0 || b.numel() == d), "rows_add_norm: norm weights of width d");
  auto out = torch::empty_like(x);
  for (int64_t r = 0; r < B; ++r)
    norm(x.data_ptr<float>() + r * d, w, b, out.data_ptr<float>() + r * d, d, static_cast<float>(eps));
  return out;
}

// The attention of a batched decoding step, after the qkv product: qkv [B, 3d] (q, k, v of H heads);
// rotary positions from the tables cos, sin [max_len, hd] (empty: none) at each row's position
// (positions [B] int64, or empty: all at `col`); k and v written into the caches [L, B, H, max_len,
// hd] (float32 or float16) of `layer` at column `col`; then one query per row and head over columns
// [0, col] (key_ok: as attend_cached). Returns [B, d], heads side by side (the proj's input).
torch::Tensor rows_attend(const torch::Tensor& qkv, const torch::Tensor& positions, int64_t col,
                          const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor k_cache,
                          torch::Tensor v_cache, int64_t layer, const torch::Tensor& key_ok, int64_t heads) {
  check_rows_f32(qkv, "rows_attend: qkv");
  const int64_t B = qkv.size(0), d = qkv.size(1) / 3, hd = d / heads;
  TORCH_CHECK(k_cache.dim() == 5 && k_cache.sizes() == v_cache.sizes() && k_cache.scalar_type() == v_cache.scalar_type() &&
              k_cache.size(1) == B && k_cache.size(2) == heads && k_cache.size(4) == hd && col < k_cache.size(3) &&
              layer < k_cache.size(0) && hd <= 512, "rows_attend: caches must be [L, B, H, max_len, hd]");
  TORCH_CHECK(positions.numel() == 0 || (positions.scalar_type() == torch::kLong && positions.numel() == B &&
                                         positions.is_contiguous()), "rows_attend: positions must be int64 [B]");
  const bool rope = cos.numel() > 0;
  TORCH_CHECK(!rope || (cos.is_contiguous() && sin.is_contiguous() && cos.size(1) == hd && sin.sizes() == cos.sizes()),
              "rows_attend: rotary tables must be [max_len, hd]");
  const int64_t* pos = positions.numel() ? positions.data_ptr<int64_t>() : nullptr;
  const int64_t limit = rope ? cos.size(0) : INT64_MAX;
  for (int64_t b = 0; b < (pos ? B : 0); ++b) TORCH_CHECK(pos[b] >= 0 && pos[b] < limit, "rows_attend: position out of range");
  TORCH_CHECK(col < limit, "rows_attend: position out of range");
  auto kl = k_cache.select(0, layer), vl = v_cache.select(0, layer);
  auto q = torch::empty({B, heads, 1, hd}, torch::kFloat);
  const float *c = rope ? cos.data_ptr<float>() : nullptr, *s = rope ? sin.data_ptr<float>() : nullptr;
  if (k_cache.scalar_type() == torch::kHalf)
    rotate_and_store<at::Half>(qkv, pos, col, c, s, kl, vl, q.data_ptr<float>(), heads, hd);
  else
    rotate_and_store<float>(qkv, pos, col, c, s, kl, vl, q.data_ptr<float>(), heads, hd);
  return attend_cached(q, kl, vl, col + 1, key_ok, std::pow(static_cast<double>(hd), -0.5)).view({B, d});
}

// One token per row from logits [B, V] as generate.sample_next draws it without top-k/top-p: with
// u [B] uniform in [0, 1), the first token whose cumulative softmax(logits / temperature) mass
// exceeds u * total (inverse CDF, sums in float64 as cumsum's); greedy (first maximum) at
// temperature 0 or where a scaled logit overflows to +inf.
torch::Tensor rows_sample(const torch::Tensor& logits, const torch::Tensor& u, double temperature) {
  check_rows_f32(logits, "rows_sample: logits");
  const int64_t B = logits.size(0), V = logits.size(1);
  TORCH_CHECK(u.scalar_type() == torch::kFloat && u.numel() == B && u.is_contiguous(), "rows_sample: u must be float32 [B]");
  auto out = torch::empty({B}, torch::kLong);
  const float temp = static_cast<float>(temperature);
  at::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> e(V);
    for (int64_t r = begin; r < end; ++r) {
      const float* x = logits.data_ptr<float>() + r * V;
      if (temperature == 1) std::copy(x, x + V, e.begin());
      else if (temperature > 0)
#pragma omp simd
        for (int64_t i = 0; i < V; ++i) e[i] = x[i] / temp;
      const float top = temperature > 0 ? max_of(e.data(), V) : 0.f;
      if (temperature == 0 || (std::isinf(top) && top > 0)) {  // argmax: the first maximum, a NaN counting as the largest
        int64_t best = 0;
        for (int64_t i = 1; i < V; ++i)
          if (x[i] > x[best] || (std::isnan(x[i]) && !std::isnan(x[best]))) best = i;
        out.data_ptr<int64_t>()[r] = best;
        continue;
      }
      const float inv = 1.f / exp_shifted(e.data(), V, top);
#pragma omp simd
      for (int64_t i = 0; i < V; ++i) e[i] *= inv;  // probabilities, as softmax gives them
      // The cumulative mass in float64 (as cumsum accumulates), block by block of 16, walking into
      // the block where it first exceeds the target (a sequential sum of all V is latency-bound).
      double cum = 0.;
#pragma omp simd reduction(+ : cum)
      for (int64_t i = 0; i < V; ++i) cum += e[i];
      const float target = u.data_ptr<float>()[r] * static_cast<float>(cum);
      int64_t pick = -1;
      double run = 0.;
      for (int64_t blk = 0; blk < V && pick < 0; blk += 16) {
        const int64_t stop = std::min(V, blk + 16);
        double part = 0.;
#pragma omp simd reduction(+ : part)
        for (int64_t i = blk; i < stop; ++i) part += e[i];
        if (static_cast<float>(run + part) <= target) {
          run += part;
          continue;
        }
        for (int64_t i = blk; i < stop && pick < 0; ++i)
          if (static_cast<float>(run += e[i]) > target) pick = i;
      }
      for (int64_t i = V - 1; pick < 0 && i >= 0; --i)  // rounding left the target unreached: the last token with mass
        if (e[i] > 0) pick = i;
      out.data_ptr<int64_t>()[r] = std::max<int64_t>(pick, 0);
    }
  });
  return out;
}
