// Fused elementwise kernels for training: RMSNorm and the SwiGLU activation, each forward and backward
// in one pass over its rows (kernels/fused.py; rotary positions are applied inside attention.cpp).
//
// Why by hand: in eager PyTorch each of these is a handful of operators, every one a pass over a
// tensor of batch x sequence x width floats (the rotary's roll alone is a concatenation, and the
// gradients of the packed q/k/v and of SwiGLU's [gate, up] are two more concatenations and a copy).
// They took about a quarter of a config-B training step on the CPU against ~10% for nanoGPT's
// LayerNorm and GELU (docs/speed.md). Here each row is read once and written once.

#include <torch/types.h>  // not torch/extension.h: a third of the compile time; bindings live in module.cpp
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace {

void check_rows(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.is_contiguous(), what, " must be contiguous float32");
}

#ifdef TINYSCALE_AVX2
// silu(g) and its derivative for eight lanes: sigmoid from exp(-|g|), which never overflows.
inline void silu8(__m256 g, __m256& silu, __m256& dsilu) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 absg = _mm256_andnot_ps(_mm256_set1_ps(-0.f), g);
  const __m256 e = tinyscale::exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), absg));
  const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
  const __m256 sig = _mm256_blendv_ps(_mm256_mul_ps(e, inv), inv, _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ));
  silu = _mm256_mul_ps(g, sig);
  dsilu = _mm256_mul_ps(sig, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sig), one));  // sig (1 + g (1 - sig))
}
#endif

#ifdef TINYSCALE_AVX512
// The same for sixteen lanes (the same operations per lane).
inline void silu16(__m512 g, __m512& silu, __m512& dsilu) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 absg = _mm512_abs_ps(g);
  const __m512 e = tinyscale::exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), absg));
  const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
  const __mmask16 nonneg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GE_OQ);
  const __m512 sig = _mm512_mask_blend_ps(nonneg, _mm512_mul_ps(e, inv), inv);
  silu = _mm512_mul_ps(g, sig);
  dsilu = _mm512_mul_ps(sig, _mm512_fmadd_ps(g, _mm512_sub_ps(one, sig), one));
}
#endif

inline void silu1(float g, float& silu, float& dsilu) {
  const float sig = 1.f / (1.f + std::exp(-g));
  silu = g * sig;
  dsilu = sig * (1.f + g * (1.f - sig));
}

// One row: y = silu(g) * u, or with dy given, (dg, du) = (dy * u * silu'(g), dy * silu(g)).
void swiglu_row(const float* g, const float* u, const float* dy, float* y, float* dg, float* du, int64_t F) {
  int64_t j = 0;
#ifdef TINYSCALE_AVX512
  for (; j + 16 <= F; j += 16) {
    __m512 s, ds;
    silu16(_mm512_loadu_ps(g + j), s, ds);
    const __m512 uj = _mm512_loadu_ps(u + j);
    if (dy) {
      const __m512 d = _mm512_loadu_ps(dy + j);
      _mm512_storeu_ps(dg + j, _mm512_mul_ps(_mm512_mul_ps(d, uj), ds));
      _mm512_storeu_ps(du + j, _mm512_mul_ps(d, s));
    } else {
      _mm512_storeu_ps(y + j, _mm512_mul_ps(s, uj));
    }
  }
#endif
#ifdef TINYSCALE_AVX2
  for (; j + 8 <= F; j += 8) {
    __m256 s, ds;
    silu8(_mm256_loadu_ps(g + j), s, ds);
    const __m256 uj = _mm256_loadu_ps(u + j);
    if (dy) {
      const __m256 d = _mm256_loadu_ps(dy + j);
      _mm256_storeu_ps(dg + j, _mm256_mul_ps(_mm256_mul_ps(d, uj), ds));
      _mm256_storeu_ps(du + j, _mm256_mul_ps(d, s));
    } else {
      _mm256_storeu_ps(y + j, _mm256_mul_ps(s, uj));
    }
  }
#endif
  for (; j < F; ++j) {
    float s, ds;
    silu1(g[j], s, ds);
    if (dy) {
      dg[j] = dy[j] * u[j] * ds;
      du[j] = dy[j] * s;
    } else {
      y[j] = s * u[j];
    }
  }
}

template <typename T>
void widen(const T* x, int64_t n, float* out) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(x[j]);
}

template <typename T>
void narrow(const float* x, int64_t n, T* out) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(x[j]);
}

// Rows of [gate, up] h [n, 2F] to y [n, F], or with dy [n, F] given, to dh [n, 2F]. float32 in place;
// bfloat16 (under autocast) through float32 row buffers, rounded once at the end.
template <typename T>
void swiglu_rows(const T* h, const T* dy, T* out, int64_t n, int64_t F) {
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    constexpr bool wide = std::is_same_v<T, float>;
    std::vector<float> buf(wide ? 0 : 5 * F);  // h row, dy row, output row (2F)
    for (int64_t r = begin; r < end; ++r) {
      const T *hr = h + r * 2 * F, *dr = dy ? dy + r * F : nullptr;
      T* o = out + r * (dy ? 2 * F : F);
      if constexpr (wide) {
        swiglu_row(hr, hr + F, dr, o, o, o + F, F);
      } else {
        float *hf = buf.data(), *df = hf + 2 * F, *of = df + F;
        widen(hr, 2 * F, hf);
        if (dr) widen(dr, F, df);
        swiglu_row(hf, hf + F, dr ? df : nullptr, of, of, of + F, F);
        narrow(of, dy ? 2 * F : F, o);
      }
    }
  });
}

void check_activation(const torch::Tensor& x, const char* what) {
  TORCH_CHECK((x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16) && x.is_contiguous(), what,
              " must be contiguous float32 or bfloat16");
}


}  // namespace

// x [N, D], w [D]: (w * x / sqrt(mean(x^2) + eps), 1 / sqrt(mean(x^2) + eps) per row).
std::vector<torch::Tensor> rms_norm_forward(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_rows(x, "rms_norm: x"), check_rows(w, "rms_norm: weight");
  const int64_t D = w.numel(), n = x.numel() / D;
  auto y = torch::empty_like(x);
  auto rstd = torch::empty({n}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = xp + r * D;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < D; ++j) ss += xr[j] * xr[j];
      const float inv = 1.f / std::sqrt(ss / D + static_cast<float>(eps));
      rp[r] = inv;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) yp[r * D + j] = wp[j] * (xr[j] * inv);
    }
  });
  return {y, rstd};
}

// Gradients (dx, dw) of rms_norm_forward: with xh = x * rstd and g = dy * w,
// dx = rstd * (g - xh * mean(g * xh)), dw = sum over rows of dy * xh.
std::vector<torch::Tensor> rms_norm_backward(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& w,
                                             const torch::Tensor& rstd) {
  check_rows(dy, "rms_norm: the gradient"), check_rows(x, "rms_norm: x"), check_rows(rstd, "rms_norm: rstd");
  const int64_t D = w.numel(), n = x.numel() / D;
  auto dx = torch::empty_like(x);
  const int threads = at::get_num_threads();
  std::vector<float> partial(static_cast<size_t>(threads) * D, 0.f);  // dw of each thread's rows
  const float *dyp = dy.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = w.contiguous().data_ptr<float>();
  const float* rp = rstd.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    float* dw = partial.data() + static_cast<size_t>(at::get_thread_num()) * D;
    for (int64_t r = begin; r < end; ++r) {
      const float *xr = xp + r * D, *gr = dyp + r * D;
      const float inv = rp[r];
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < D; ++j) dot += gr[j] * wp[j] * xr[j];
      const float m = dot * inv * inv / D;  // mean(g * xh) / rstd
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) {
        dxp[r * D + j] = inv * (gr[j] * wp[j] - xr[j] * m);
        dw[j] += gr[j] * (xr[j] * inv);
      }
    }
  });
  auto dw = torch::zeros({D}, x.options());
  float* dwp = dw.data_ptr<float>();
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < D; ++j) dwp[j] += partial[static_cast<size_t>(t) * D + j];
  return {dx, dw};
}

// h [..., 2F] (gate, up): silu(gate) * up [..., F], float32 or bfloat16.
torch::Tensor swiglu_forward(const torch::Tensor& h) {
  check_activation(h, "swiglu: the input");
  const int64_t F = h.size(-1) / 2;
  auto sizes = h.sizes().vec();
  sizes.back() = F;
  auto y = torch::empty(sizes, h.options());
  if (h.scalar_type() == torch::kFloat)
    swiglu_rows(h.data_ptr<float>(), static_cast<const float*>(nullptr), y.data_ptr<float>(), h.numel() / (2 * F), F);
  else
    swiglu_rows(h.data_ptr<c10::BFloat16>(), static_cast<const c10::BFloat16*>(nullptr), y.data_ptr<c10::BFloat16>(),
                h.numel() / (2 * F), F);
  return y;
}

// The gradient of swiglu_forward with respect to h, [..., 2F] (dy: h's dtype).
torch::Tensor swiglu_backward(const torch::Tensor& dy, const torch::Tensor& h) {
  check_activation(h, "swiglu: the input"), check_activation(dy, "swiglu: the gradient");
  TORCH_CHECK(dy.scalar_type() == h.scalar_type(), "swiglu: the gradient must have the input's dtype");
  const int64_t F = h.size(-1) / 2;
  auto dh = torch::empty_like(h);
  if (h.scalar_type() == torch::kFloat)
    swiglu_rows(h.data_ptr<float>(), dy.data_ptr<float>(), dh.data_ptr<float>(), h.numel() / (2 * F), F);
  else
    swiglu_rows(h.data_ptr<c10::BFloat16>(), dy.data_ptr<c10::BFloat16>(), dh.data_ptr<c10::BFloat16>(),
                h.numel() / (2 * F), F);
  return dh;
}

// The transpose of a contiguous float32 matrix [R, C], contiguous [C, R]: 8 x 8 register transposes,
// each thread writing a band of 64 output rows. Why by hand: PyTorch's strided copy of the MLP's
// transposed weight gradient (fused.py's _GatedUp, [288, 1536]) took 0.7 ms a layer inside a training
// step, a third of what computing that gradient transposed saves.
torch::Tensor transpose_matrix(const torch::Tensor& src) {
  check_rows(src, "transpose: the input");
  TORCH_CHECK(src.dim() == 2, "transpose: the input must be a matrix");
  const int64_t R = src.size(0), C = src.size(1);
  constexpr int64_t kBand = 64;
  auto dst = torch::empty({C, R}, src.options());
  const float* s = src.data_ptr<float>();
  float* d = dst.data_ptr<float>();
  at::parallel_for(0, (C + kBand - 1) / kBand, 1, [&](int64_t begin, int64_t end) {
    const int64_t c0 = begin * kBand, c1 = std::min(C, end * kBand);
    tinyscale::transpose_rows(s + c0, C, R, c1 - c0, 1.f, d + c0 * R, R);
  });
  return dst;
}
