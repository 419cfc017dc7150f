// Vector helpers shared by the C++ kernels: AVX2 where the build targets it (and AVX-512 for the
// softmax helpers where it targets that too), plain loops otherwise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <c10/util/Half.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define TINYSCALE_AVX2 1
#include <immintrin.h>
#endif

namespace tinyscale {

#ifdef TINYSCALE_AVX2
// Eight values as floats: loaded as they are, or widened from float16 or int8.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Eight sums (a0..a7 each summed across its lanes) as one vector, in order.
inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

// exp(x) for x <= 0 (softmax after subtracting the maximum): 2^n * p(r) with x = n ln2 + r,
// |r| <= ln2 / 2 and p the degree-6 Taylor polynomial (relative error ~2e-7); below -87, 0.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);  // ln2 in two parts: exact n * hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(pow2)), keep);
}
#endif

#if defined(TINYSCALE_AVX2) && defined(__AVX512F__)
// The same exp, 16 lanes at a time (the same operations per lane, so the same values).
inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  const __m512i pow2 = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, _mm512_castsi512_ps(pow2)));
}
#define TINYSCALE_AVX512 1
#endif

// The largest of x[0..len).
inline float max_of(const float* x, int64_t len) {
  int64_t t = 0;
  float top = -INFINITY;
#ifdef TINYSCALE_AVX512
  if (len >= 16) {
    __m512 m = _mm512_loadu_ps(x);
    for (t = 16; t + 16 <= len; t += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + t));
    top = _mm512_reduce_max_ps(m);
  }
#endif
#ifdef TINYSCALE_AVX2
  if (len - t >= 8) {
    __m256 m = _mm256_loadu_ps(x + t);
    for (t += 8; t + 8 <= len; t += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + t));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    top = std::max(top, _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h))));
  }
#endif
  for (; t < len; ++t) top = std::max(top, x[t]);
  return top;
}

// x[t] <- exp(x[t] - top) for t in [0, len), with every x[t] <= top; returns their sum.
inline float exp_shifted(float* x, int64_t len, float top) {
  int64_t t = 0;
  float total = 0.f;
#ifdef TINYSCALE_AVX512
  __m512 acc16 = _mm512_setzero_ps();
  for (; t + 16 <= len; t += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(x + t), _mm512_set1_ps(top)));
    _mm512_storeu_ps(x + t, e);
    acc16 = _mm512_add_ps(acc16, e);
  }
  total = _mm512_reduce_add_ps(acc16);
#endif
#ifdef TINYSCALE_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (; t + 8 <= len; t += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + t), _mm256_set1_ps(top)));
    _mm256_storeu_ps(x + t, e);
    acc = _mm256_add_ps(acc, e);
  }
  total += hsum(acc);
#endif
  for (; t < len; ++t) total += (x[t] = std::exp(x[t] - top));
  return total;
}

// Prefetch rows [t, t + n) of the next head's keys or values (null: none). Each head's cache is a
// new short memory stream, which the hardware prefetcher joins only after a few misses; asking for
// the next head's rows while this head computes keeps the memory busy.
template <typename T>
inline void prefetch_rows(const T* next, int64_t stride, int64_t t, int64_t n, int64_t len, int64_t hd) {
  if (!next) return;
  const int64_t end = std::min(t + n, len);
  for (int64_t r = t; r < end; ++r)
    for (int64_t off = 0; off < hd * static_cast<int64_t>(sizeof(T)); off += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(next + r * stride) + off);
}

// out[0:8C] = sum_j w[j] * x[j * stride + (0:8C)] for j in [0, n), x float32 or float16. S sets of
// accumulators take consecutive rows, so the multiply-adds of consecutive rows do not wait on each
// other (S must divide 8). `next`: rows of the next head to prefetch meanwhile, or null.
template <int C, int S, typename T>
void weighted_rows(const float* w, const T* x, int64_t stride, int64_t n, float* out, const T* next = nullptr) {
#ifdef TINYSCALE_AVX2
  __m256 a[S][C];
  for (int s = 0; s < S; ++s)
    for (int c = 0; c < C; ++c) a[s][c] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + S <= n; j += S) {
    if (j % 8 == 0) prefetch_rows(next, stride, j, 8, n, 8 * C);
    for (int s = 0; s < S; ++s) {
      const __m256 ws = _mm256_broadcast_ss(w + j + s);
      for (int c = 0; c < C; ++c) a[s][c] = _mm256_fmadd_ps(ws, load8(x + (j + s) * stride + 8 * c), a[s][c]);
    }
  }
  for (; j < n; ++j)
    for (int c = 0; c < C; ++c)
      a[0][c] = _mm256_fmadd_ps(_mm256_broadcast_ss(w + j), load8(x + j * stride + 8 * c), a[0][c]);
  for (int c = 0; c < C; ++c) {
    __m256 sum = a[0][c];
    for (int s = 1; s < S; ++s) sum = _mm256_add_ps(sum, a[s][c]);
    _mm256_storeu_ps(out + 8 * c, sum);
  }
#else
  (void)next;
  for (int i = 0; i < 8 * C; ++i) out[i] = 0.f;
  for (int64_t j = 0; j < n; ++j)
    for (int i = 0; i < 8 * C; ++i) out[i] += w[j] * static_cast<float>(x[j * stride + i]);
#endif
}

// dst[d * Tp + t] = mul * src[t * stride + d] for t in [0, T), d in [0, hd): a row-major [T, hd] block
// stored transposed. Where the build has AVX2, 8 x 8 tiles are transposed in registers, so that loads
// and stores both run along rows (a scalar copy took 11-18% of the training attention's time).
inline void transpose_rows(const float* src, int64_t stride, int64_t T, int64_t hd, float mul, float* dst, int64_t Tp) {
  int64_t t0 = 0;
#ifdef TINYSCALE_AVX2
  const __m256 m = _mm256_set1_ps(mul);
  for (; t0 + 8 <= T; t0 += 8)
    for (int64_t d0 = 0; d0 + 8 <= hd; d0 += 8) {
      __m256 r[8], u[8], s8[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_mul_ps(m, _mm256_loadu_ps(src + (t0 + i) * stride + d0));
      for (int i = 0; i < 8; i += 2)
        u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      for (int i = 0; i < 8; i += 4) {
        s8[i] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s8[i + 1] = _mm256_shuffle_ps(u[i], u[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s8[i + 2] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s8[i + 3] = _mm256_shuffle_ps(u[i + 1], u[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int d = 0; d < 4; ++d) {
        _mm256_storeu_ps(dst + (d0 + d) * Tp + t0, _mm256_permute2f128_ps(s8[d], s8[d + 4], 0x20));
        _mm256_storeu_ps(dst + (d0 + d + 4) * Tp + t0, _mm256_permute2f128_ps(s8[d], s8[d + 4], 0x31));
      }
    }
  for (int64_t t = 0; t < t0; ++t)  // columns past the last whole 8
    for (int64_t d = hd / 8 * 8; d < hd; ++d) dst[d * Tp + t] = src[t * stride + d] * mul;
#endif
  for (int64_t t = t0; t < T; ++t)
    for (int64_t d = 0; d < hd; ++d) dst[d * Tp + t] = src[t * stride + d] * mul;
}

}  // namespace tinyscale
