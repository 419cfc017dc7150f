// Causal self-attention for training, forward and backward, for small heads on the CPU.
//
// Why by hand: with the head sizes small models use (16-64), PyTorch's CPU flash attention runs
// its blocks as tiny matrix products; it took 31% of a training step of a 64-wide, 8-layer model.
// Here each (row, head) of the batch is one task whose queries, keys and values (~50 KB at 256
// positions) stay in the core's cache: for each query, its scores against every earlier key are
// formed in registers from the keys stored transposed ([head_dim, T]), exponentiated in place and
// combined with the values, so the T x T matrix never exists. The backward recomputes the
// probabilities from the saved log-sum-exp, as flash attention does, and accumulates the key and
// value gradients in the task's buffers, a block of 16 queries at a time (with AVX-512 where the
// build has it, for head sizes that are multiples of 16). From a packed q/k/v projection
// (qkv_attention_*), the rotary positions are applied here too, as each head's rows come in and its
// gradients go out, and each task prefetches the next head's rows while it computes.

#include <torch/types.h>  // not torch/extension.h: a third of the compile time; bindings live in module.cpp
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace {

// One vector register's worth of floats: 16 where the build has AVX-512 (and, for rows of head_dim,
// the row is a whole number of them), else 8: the scores, combinations and rank updates below.
#ifdef TINYSCALE_AVX2
struct Vec8 {
  using reg = __m256;
  static constexpr int W = 8;
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg zero() { return _mm256_setzero_ps(); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg exp(reg x) { return tinyscale::exp_nonpositive(x); }
  // x with its lanes from m on replaced by `fill`.
  static reg keep_first(reg x, int64_t m, float fill) {
    const __m256 lane = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_blendv_ps(set1(fill), x, _mm256_cmp_ps(lane, set1(static_cast<float>(m)), _CMP_LT_OQ));
  }
  static float sum(reg x) { return tinyscale::hsum(x); }
  static float top(reg x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  }
};
#if defined(__AVX512F__)
struct Vec16 {
  using reg = __m512;
  static constexpr int W = 16;
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg zero() { return _mm512_setzero_ps(); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg exp(reg x) { return tinyscale::exp_nonpositive(x); }
  static reg keep_first(reg x, int64_t m, float fill) {
    return _mm512_mask_blend_ps(m >= 16 ? 0xFFFF : (1u << m) - 1, set1(fill), x);
  }
  static float sum(reg x) { return _mm512_reduce_add_ps(x); }
  static float top(reg x) { return _mm512_reduce_max_ps(x); }
};
template <int HD>
using VecFor = std::conditional_t<HD % 16 == 0, Vec16, Vec8>;
using VecWide = Vec16;
constexpr int kRegisters = 32;
#else
template <int HD>
using VecFor = Vec8;
using VecWide = Vec8;
constexpr int kRegisters = 16;
#endif

// s[r][j0 + j] = sum_d q[r][d] * xt[d * Tp + j0 + j] for R query rows and j in [0, NV vectors). The
// rows share each load of xt, and the block of scores stays in registers until its end (a store per
// multiply-add would halve the speed).
template <typename V, int R, int NV>
void dots_block(const float* const* q, const float* xt, int64_t Tp, int64_t j0, int64_t hd, float* const* s) {
  typename V::reg a[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) a[r][v] = V::zero();
  for (int64_t d = 0; d < hd; ++d) {
    typename V::reg x[NV];
    for (int v = 0; v < NV; ++v) x[v] = V::load(xt + d * Tp + j0 + V::W * v);
    for (int r = 0; r < R; ++r) {
      const typename V::reg qd = V::set1(q[r][d]);
      for (int v = 0; v < NV; ++v) a[r][v] = V::fma(qd, x[v], a[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) V::store(s[r] + j0 + V::W * v, a[r][v]);
}

// The scores of R query rows against keys [0, n rounded up to a vector) (Tp: a multiple of 16), in
// blocks of NV (3 with either build's R), 2 and 1 vectors of keys: the last keys of a causal row still
// keep 2R multiply-adds in flight.
template <int R>
void row_dots(const float* const* q, const float* xt, int64_t Tp, int64_t n, int64_t hd, float* const* s) {
  using V = VecWide;
  // R x NV accumulators: 24 of AVX-512's 32 registers, 12 of AVX2's 16 (beside the loaded keys and a
  // broadcast: all 16; 8 accumulators made the step of configs A and B 0.7-0.9% slower under AVX2)
  constexpr int NV = std::max(1, (kRegisters == 32 ? 24 : 12) / R);
  int64_t j = 0;
  for (; j + V::W * NV <= n; j += V::W * NV) dots_block<V, R, NV>(q, xt, Tp, j, hd, s);
  if (NV > 2 && j + V::W * 2 <= n) dots_block<V, R, 2>(q, xt, Tp, j, hd, s), j += V::W * 2;
  if (NV > 1 && j + V::W <= n) dots_block<V, R, 1>(q, xt, Tp, j, hd, s), j += V::W;
  if (j < n) dots_block<V, R, 1>(q, xt, Tp, j, hd, s);
}

// Query rows per pass over the keys (forward) and per row_dots call (backward).
constexpr int kGroup = kRegisters == 32 ? 8 : 4;

// A register tile for the products below: `rows` rows (of w, up to `max_rows`, a power of two) times
// `cols` of the head's CW vector registers (a divisor of CW, so a row is a whole number of chunks),
// chosen to do the most multiply-adds per load (rows * cols / (rows + cols)) with rows * cols
// accumulators plus the loaded chunk and a broadcast within `budget` registers.
struct Tile {
  int rows, cols;
};
constexpr Tile best_tile(int CW, int max_rows, int budget, bool powers_of_two) {
  Tile best{1, 1};
  for (int r = 1; r <= max_rows; r = powers_of_two ? 2 * r : r + 1)
    for (int c = 1; c <= CW; ++c)
      if (CW % c == 0 && r * c + c + 1 <= budget &&
          r * c * (best.rows + best.cols) > best.rows * best.cols * (r + c))
        best = {r, c};
  return best;
}

// out[r] = mul[r] * sum_j w[r][j] * x[j * xs, :] for R rows of HD floats over j in [0, n), sharing
// each load of x between the rows; every w[r][j] past that row's own keys must be 0. The columns go
// in chunks of CC registers, so wide heads keep several rows per load under AVX2's 16 registers.
template <int HD, int R, int CC>
void combine_rows(const float* const* w, const float* x, int64_t xs, int64_t n, float* const* out, const float* mul) {
  using V = VecFor<HD>;
  for (int c0 = 0; c0 < HD / V::W; c0 += CC) {
    typename V::reg a[R][CC];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CC; ++c) a[r][c] = V::zero();
    for (int64_t j = 0; j < n; ++j) {
      typename V::reg xj[CC];
      for (int c = 0; c < CC; ++c) xj[c] = V::load(x + j * xs + V::W * (c0 + c));
      for (int r = 0; r < R; ++r) {
        const typename V::reg wr = V::set1(w[r][j]);
        for (int c = 0; c < CC; ++c) a[r][c] = V::fma(wr, xj[c], a[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < CC; ++c) V::store(out[r] + V::W * (c0 + c), V::mul(V::set1(mul[r]), a[r][c]));
  }
}

// The tile of combine_rows: up to kGroup rows (a power of two, so that they divide a group); under
// AVX-512 within 29 of the 32 registers, under AVX2 within 11 of 16 (8 accumulators, the budget of
// the rule before the tiles; larger ones were not measured).
constexpr int kBudget = kRegisters == 32 ? 29 : 11;
template <int HD>
constexpr Tile kCombine = best_tile(HD / VecFor<HD>::W, kGroup, kBudget, true);
template <int HD>
constexpr int kRows = kCombine<HD>.rows;

// All R rows of a group through combine_rows, kRows at a time.
template <int HD, int R>
void combine_group(const float* const* w, const float* x, int64_t xs, int64_t n, float* const* out,
                   const float* mul) {
  for (int r = 0; r < R; r += kRows<HD>) combine_rows<HD, kRows<HD>, kCombine<HD>.cols>(w + r, x, xs, n, out + r, mul + r);
}

// The largest of x[0..n) (n >= 1) in whole vectors, the lanes past n (later keys) left out.
inline float row_max(const float* x, int64_t n) {
  using V = VecWide;
  typename V::reg m = V::set1(-INFINITY);
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) m = V::max(m, V::load(x + j));
  if (j < n) m = V::max(m, V::keep_first(V::load(x + j), n - j, -INFINITY));
  return V::top(m);
}

// x[j] <- exp(x[j] - top) for j in [0, n), and 0 for the rest of the last vector; returns the sum.
// Whole vectors: the row's last keys cost one masked vector, not up to 15 scalar exps.
inline float row_exp(float* x, int64_t n, float top) {
  using V = VecWide;
  const typename V::reg t = V::set1(top);
  typename V::reg acc = V::zero();
  int64_t j = 0;
  for (; j + V::W <= n; j += V::W) {
    const typename V::reg e = V::exp(V::sub(V::load(x + j), t));
    V::store(x + j, e), acc = V::add(acc, e);
  }
  if (j < n) {
    const typename V::reg e = V::keep_first(V::exp(V::sub(V::load(x + j), t)), n - j, 0.f);
    V::store(x + j, e), acc = V::add(acc, e);
  }
  return V::sum(acc);
}
#else
template <int HD>
using VecFor = void;
template <int R>
void row_dots(const float* const* q, const float* xt, int64_t Tp, int64_t n, int64_t hd, float* const* s) {
  for (int r = 0; r < R; ++r) {
    std::fill(s[r], s[r] + n, 0.f);
    for (int64_t d = 0; d < hd; ++d)
      for (int64_t j = 0; j < n; ++j) s[r][j] += q[r][d] * xt[d * Tp + j];
  }
}

template <int HD, int R>
void combine_group(const float* const* w, const float* x, int64_t xs, int64_t n, float* const* out,
                   const float* mul) {
  for (int r = 0; r < R; ++r) {
    tinyscale::weighted_rows<HD / 8, 1>(w[r], x, xs, n, out[r]);
    for (int d = 0; d < HD; ++d) out[r][d] *= mul[r];
  }
}

inline float row_max(const float* x, int64_t n) { return tinyscale::max_of(x, n); }
inline float row_exp(float* x, int64_t n, float top) { return tinyscale::exp_shifted(x, n, top); }

constexpr int kRegisters = 16;
constexpr int kGroup = 4;
#endif

// Rotary positions in the split-halves layout: y[j] = x[j] cos[j] + x[j ^ half] sin[j] (sin signed,
// as model._apply_rotary's table), and its transpose for the gradient: dx[j] = dy[j] cos[j] +
// dy[j ^ half] sin[j ^ half]. y may be x. The halves are read into locals first so that the loop
// vectorises (with y possibly x the compiler kept it scalar: 10-16% of the kernel's time at head size 48).
template <int HD>
inline void rotate(const float* x, const float* c, const float* s, bool transpose, float* y) {
  constexpr int half = HD / 2;
  float a[half], b[half];
  for (int j = 0; j < half; ++j) a[j] = x[j], b[j] = x[j + half];
  const float *sa = transpose ? s + half : s, *sb = transpose ? s : s + half;
#pragma omp simd
  for (int j = 0; j < half; ++j) {
    y[j] = a[j] * c[j] + b[j] * sa[j];
    y[j + half] = b[j] * c[j + half] + a[j] * sb[j];
  }
}

// Rotary tables [T, hd] (null: no rotation).
struct Rope {
  const float *cos = nullptr, *sin = nullptr;
  // Row t of x (HD floats) rotated, or rotated back (transpose), in place.
  template <int HD>
  void apply(float* x, int64_t t, bool transpose) const {
    if (cos) rotate<HD>(x, cos + t * HD, sin + t * HD, transpose, x);
  }
};

// One (row, head) task's inputs: its rows of q, k and v are read where they are (rows of head_dim
// floats, `stride` apart) unless rotary positions apply, when q and k are rotated into the task's
// own buffers on the way in (a pass over the head's rows in cache, instead of a rotated copy of the
// whole projection written and read back through memory); kt and vt are the transposed copies the
// scores need.
struct Head {
  int64_t T, Tp, hd;
  Rope rope;
  std::vector<float> kt, vt, qr, kr;  // scale * k^T and v^T: [hd, Tp], zero past T; rotated q, k: [T, hd]
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t qs = 0, ks = 0, vs = 0;

  Head(int64_t T_, int64_t hd_, Rope rope_)
      : T(T_), Tp((T_ + 15) / 16 * 16), hd(hd_), rope(rope_), kt(hd * Tp, 0.f), vt(hd * Tp, 0.f),
        qr(rope.cos ? T * hd : 0), kr(rope.cos ? T * hd : 0) {}

  // Points at head h of batch row b (rotating q and k), and makes kt (and vt for the backward).
  template <int HD>
  void load(const torch::Tensor& qx, const torch::Tensor& kx, const torch::Tensor& vx, int64_t b, int64_t h,
            float scale, bool backward) {
    auto at = [&](const torch::Tensor& x) { return x.data_ptr<float>() + b * x.stride(0) + h * x.stride(1); };
    q = at(qx), k = at(kx), v = at(vx), qs = qx.stride(2), ks = kx.stride(2), vs = vx.stride(2);
    if (rope.cos) {
      for (int64_t t = 0; t < T; ++t) {
        rotate<HD>(q + t * qs, rope.cos + t * HD, rope.sin + t * HD, false, qr.data() + t * HD);
        rotate<HD>(k + t * ks, rope.cos + t * HD, rope.sin + t * HD, false, kr.data() + t * HD);
      }
      q = qr.data(), k = kr.data(), qs = ks = hd;
    }
    tinyscale::transpose_rows(k, ks, T, hd, scale, kt.data(), Tp);
    if (backward) tinyscale::transpose_rows(v, vs, T, hd, 1.f, vt.data(), Tp);
  }
};

// Asks for rows [t0, t1) of a [B, H, T, hd] tensor's head (b, h) (rows of hd floats) to be brought into
// the cache. Why: a head's rows are `stride` apart (3 x width floats in the packed projection, 3.4 KB
// at width 288), so most sit in 4 KB pages of their own, where the hardware's stream prefetchers
// (which stay within a page) do not follow them; the tasks ask for the next head's rows, a slice at a
// time, while they compute.
void prefetch_rows(const float* base, int64_t stride, int64_t hd, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t d = 0; d < hd; d += 16) __builtin_prefetch(base + t * stride + d);
}

// A [B, H, T, hd] tensor's data and strides, read once per call rather than per prefetch.
struct Strided {
  const float* data;
  int64_t b, h, t;
  explicit Strided(const torch::Tensor& x) : data(x.data_ptr<float>()), b(x.stride(0)), h(x.stride(1)), t(x.stride(2)) {}
  void prefetch(int64_t bh, int64_t H, int64_t hd, int64_t t0, int64_t t1) const {
    prefetch_rows(data + bh / H * b + bh % H * h, t, hd, t0, t1);
  }
};

void check(const torch::Tensor& x, const torch::Tensor& like, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 4 && x.sizes() == like.sizes() && x.stride(3) == 1,
              "causal attention: ", what, " must be float32 [B, H, T, head_dim] with contiguous rows");
}

template <int C>
void forward_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, Rope rope, float* out,
                   float* lse) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = 8 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const Strided inputs[] = {Strided(q), Strided(k), Strided(v)};
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Head hb(T, hd, rope);
    constexpr int R = kGroup;
    const int64_t stride = hb.Tp + 16;
    std::vector<float> p(R * stride);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      hb.load<8 * C>(q, k, v, b, h, scale, false);
      for (int64_t i = 0; i < T; i += R) {
        if (bh + 1 < end) {  // the next head's rows of this group: inputs, and the output rows it writes
          const int64_t next = bh + 1, stop = std::min<int64_t>(i + R, T);
          for (const auto& x : inputs) x.prefetch(next, H, hd, i, stop);
          prefetch_rows(out + (next / H * T * H + next % H) * hd, H * hd, hd, i, stop);
        }
        const float* qr[R];
        float* sr[R];
        for (int r = 0; r < R; ++r)  // past the last row, repeat it (computed, not used)
          qr[r] = hb.q + std::min<int64_t>(i + r, T - 1) * hb.qs, sr[r] = p.data() + r * stride;
        row_dots<R>(qr, hb.kt.data(), hb.Tp, std::min<int64_t>(i + R, T), hd, sr);
        const int64_t n_group = std::min<int64_t>(i + R, T);
        float* o[R];
        float inv[R];
        for (int r = 0; r < R; ++r) {
          const int64_t row = std::min<int64_t>(i + r, T - 1), n = row + 1;  // causal: keys 0..row
          const float top = row_max(sr[r], n);
          const float total = row_exp(sr[r], n, top);
          std::fill(sr[r] + n, sr[r] + n_group, 0.f);  // keys after the row: weight 0 in combine_rows
          o[r] = out + ((b * T + row) * H + h) * hd;
          inv[r] = 1.f / total;
          if (i + r < T) lse[bh * T + row] = top + std::log(total);
        }
        // rows past T rewrite row T - 1 with its own values
        combine_group<8 * C, R>(sr, hb.v, hb.vs, n_group, o, inv);
      }
    }
  });
}

#ifdef TINYSCALE_AVX2
// x[j, :] += sum_r w[r][j] * a[r, :] for j in [0, n rounded up to J) and r in [0, rows): the key or
// value gradients of a block of queries. J rows of x stay in registers while the block's rows of `a`
// stream past them, so each row of x is loaded and stored once per block rather than once per query.
template <int HD>
constexpr Tile kRank = best_tile(HD / VecFor<HD>::W, 8, kRegisters == 32 ? 29 : 15, false);

template <int HD>
void rank_block(const float* const* w, const float* const* a, int rows, int64_t n, float* x) {
  using V = VecFor<HD>;
  constexpr int J = kRank<HD>.rows, CC = kRank<HD>.cols;  // rows of x by registers of a row, in the tile
  for (int c0 = 0; c0 < HD / V::W; c0 += CC)
    for (int64_t j = 0; j < n; j += J) {
      typename V::reg acc[J][CC];
      for (int jj = 0; jj < J; ++jj)
        for (int c = 0; c < CC; ++c) acc[jj][c] = V::load(x + (j + jj) * HD + V::W * (c0 + c));
      for (int r = 0; r < rows; ++r) {  // the row of `a` loaded once, each weight broadcast once
        typename V::reg av[CC];
        for (int c = 0; c < CC; ++c) av[c] = V::load(a[r] + V::W * (c0 + c));
        for (int jj = 0; jj < J; ++jj) {
          const typename V::reg wj = V::set1(w[r][j + jj]);
          for (int c = 0; c < CC; ++c) acc[jj][c] = V::fma(wj, av[c], acc[jj][c]);
        }
      }
      for (int jj = 0; jj < J; ++jj)
        for (int c = 0; c < CC; ++c) V::store(x + (j + jj) * HD + V::W * (c0 + c), acc[jj][c]);
    }
}
#else
template <int HD>
void rank_block(const float* const* w, const float* const* a, int rows, int64_t n, float* x) {
  for (int64_t j = 0; j < n; ++j)
    for (int r = 0; r < rows; ++r)
      for (int d = 0; d < HD; ++d) x[j * HD + d] += w[r][j] * a[r][d];
}
#endif

constexpr int kBlock = 16;  // queries per block of the backward

// dst[0:HD] = mul * src[0:HD] (restrict: the compiler kept a possibly aliased copy scalar).
template <int HD>
inline void scaled_row(const float* __restrict src, float mul, float* __restrict dst) {
#pragma omp simd
  for (int d = 0; d < HD; ++d) dst[d] = mul * src[d];
}

// For a block's rows (row i0 + r, its keys 0..i0 + r): p = exp(score - lse) in place of the scores
// and ds = p (dp - dO . O), the scores' gradient over scale, in place of dp; both zero past the row's
// keys up to n_pad + 8 (rank_block reads up to 7 past the block's keys).
template <int HD>
void softmax_backward_rows(float* const* pr, float* const* dr, const float* const* gr, const float* ob,
                           int64_t os, const float* lse, int64_t i0, int rows, int64_t n_pad) {
  for (int r = 0; r < rows; ++r) {
    const int64_t row = i0 + r, n = row + 1;
    const float *oi = ob + row * os, *gi = gr[r];
    row_exp(pr[r], n, lse[row]);
    float delta = 0.f;  // sum_j p_j dp_j, computed as dO_i . O_i
#pragma omp simd reduction(+ : delta)
    for (int d = 0; d < HD; ++d) delta += gi[d] * oi[d];
    float *pk = pr[r], *dk = dr[r];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dk[j] = pk[j] * (dk[j] - delta);
    std::fill(pk + n, pk + n_pad + 8, 0.f);
    std::fill(dk + n, dk + n_pad + 8, 0.f);
  }
}

template <int C>
void backward_heads(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                    const torch::Tensor& v, const torch::Tensor& out, const float* lse, Rope rope, float* dq,
                    float* dk, float* dv, int64_t rs) {  // rs: the outputs' stride between positions
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = 8 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const Strided inputs[] = {Strided(q), Strided(k), Strided(v), Strided(dout), Strided(out)};
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Head hb(T, hd, rope);
    const int64_t stride = hb.Tp + 16;  // rows of p and ds, zero past each row's keys up to a multiple of 8, + 8
    std::vector<float> p(kBlock * stride), ds(kBlock * stride), gk((hb.Tp + 8) * hd), gv((hb.Tp + 8) * hd);
    float scales[kBlock];
    std::fill_n(scales, kBlock, scale);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      hb.load<8 * C>(q, k, v, b, h, scale, true);
      std::fill(gk.begin(), gk.end(), 0.f);
      std::fill(gv.begin(), gv.end(), 0.f);
      const float* ob = out.data_ptr<float>() + b * out.stride(0) + h * out.stride(1);
      const float* gb = dout.data_ptr<float>() + b * dout.stride(0) + h * dout.stride(1);
      for (int64_t i0 = 0; i0 < T; i0 += kBlock) {
        if (bh + 1 < end) {  // the next head's rows of this block: inputs, and the gradient rows it writes
          const int64_t next = bh + 1, stop = std::min<int64_t>(i0 + kBlock, T);
          for (const auto& x : inputs) x.prefetch(next, H, hd, i0, stop);
          for (float* g : {dq, dk, dv}) prefetch_rows(g + next / H * T * rs + next % H * hd, rs, hd, i0, stop);
        }
        const int rows = static_cast<int>(std::min<int64_t>(kBlock, T - i0));
        const int64_t nb = i0 + rows, n_pad = (nb + 7) / 8 * 8;  // keys the block sees
        const float *qr[kBlock], *gr[kBlock];
        float *pr[kBlock], *dr[kBlock], *dqr[kBlock];
        for (int r = 0; r < kBlock; ++r) {  // past the last row, repeat it (the same values, written twice)
          const int rr = std::min(r, rows - 1);
          const int64_t row = i0 + rr;
          qr[r] = hb.q + row * hb.qs, gr[r] = gb + row * dout.stride(2);
          pr[r] = p.data() + rr * stride, dr[r] = ds.data() + rr * stride, dqr[r] = dq + (b * T + row) * rs + h * hd;
        }
        for (int r = 0; r < kBlock; r += kGroup) {
          row_dots<kGroup>(qr + r, hb.kt.data(), hb.Tp, nb, hd, pr + r);  // scores, then probabilities
          row_dots<kGroup>(gr + r, hb.vt.data(), hb.Tp, nb, hd, dr + r);  // dp_j = dO_i . v_j
        }
        softmax_backward_rows<8 * C>(pr, dr, gr, ob, out.stride(2), lse + bh * T, i0, rows, n_pad);
        combine_group<8 * C, kBlock>(dr, hb.k, hb.ks, nb, dqr, scales);  // dq_i = scale * sum_j ds_ij k_j
        for (int r = 0; r < rows; ++r) rope.apply<8 * C>(dqr[r], i0 + r, true);  // to the unrotated q
        rank_block<8 * C>(dr, qr, rows, nb, gk.data());  // dk_j / scale = sum_i ds_ij q_i
        rank_block<8 * C>(pr, gr, rows, nb, gv.data());  // dv_j = sum_i p_ij dO_i
      }
      for (int64_t t = 0; t < T; ++t) {
        scaled_row<8 * C>(gk.data() + t * hd, scale, dk + (b * T + t) * rs + h * hd);
        rope.apply<8 * C>(dk + (b * T + t) * rs + h * hd, t, true);
        scaled_row<8 * C>(gv.data() + t * hd, 1.f, dv + (b * T + t) * rs + h * hd);
      }
    }
  });
}

template <typename F>
void by_head_size(int64_t hd, F&& f) {
  switch (hd) {
    case 8: return f(std::integral_constant<int, 1>());
    case 16: return f(std::integral_constant<int, 2>());
    case 24: return f(std::integral_constant<int, 3>());
    case 32: return f(std::integral_constant<int, 4>());
    case 48: return f(std::integral_constant<int, 6>());
    case 64: return f(std::integral_constant<int, 8>());
  }
  TORCH_CHECK(false, "causal attention: head size ", hd, " is not one of 8, 16, 24, 32, 48, 64");
}

}  // namespace

// (out [B, H, T, hd] stored as [B, T, H, hd], so the output projection reads it without a copy;
// lse [B, H, T], the log-sum-exp of each query's scaled scores).
std::vector<torch::Tensor> causal_attention_forward(const torch::Tensor& q, const torch::Tensor& k,
                                                    const torch::Tensor& v) {
  check(q, q, "q"), check(k, q, "k"), check(v, q, "v");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  auto out = torch::empty({B, T, H, hd}, torch::kFloat);
  auto lse = torch::empty({B, H, T}, torch::kFloat);
  by_head_size(hd, [&](auto c) { forward_heads<c()>(q, k, v, Rope{}, out.data_ptr<float>(), lse.data_ptr<float>()); });
  return {out.permute({0, 2, 1, 3}), lse};
}

// Gradients (dq, dk, dv) of causal_attention_forward, each [B, H, T, hd] stored as [B, T, H, hd].
std::vector<torch::Tensor> causal_attention_backward(const torch::Tensor& dout, const torch::Tensor& q,
                                                     const torch::Tensor& k, const torch::Tensor& v,
                                                     const torch::Tensor& out, const torch::Tensor& lse) {
  check(q, q, "q"), check(k, q, "k"), check(v, q, "v"), check(out, q, "out"), check(dout, q, "the gradient");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == B * H * T, "causal attention: lse must be [B, H, T]");
  auto dq = torch::empty({B, T, H, hd}, torch::kFloat);
  auto dk = torch::empty({B, T, H, hd}, torch::kFloat);
  auto dv = torch::empty({B, T, H, hd}, torch::kFloat);
  by_head_size(hd, [&](auto c) {
    backward_heads<c()>(dout, q, k, v, out, lse.data_ptr<float>(), Rope{}, dq.data_ptr<float>(),
                        dk.data_ptr<float>(), dv.data_ptr<float>(), H * hd);
  });
  return {dq.permute({0, 2, 1, 3}), dk.permute({0, 2, 1, 3}), dv.permute({0, 2, 1, 3})};
}

// q, k, v of a packed projection [B, T, 3, H, hd] as [B, H, T, hd] views, and rotary tables [T, hd]
// (empty: no rotation).
std::vector<torch::Tensor> unpack(const torch::Tensor& qkv) {
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat && qkv.dim() == 5 && qkv.size(2) == 3 && qkv.is_contiguous(),
              "causal attention: qkv must be contiguous float32 [B, T, 3, H, head_dim]");
  return {qkv.select(2, 0).transpose(1, 2), qkv.select(2, 1).transpose(1, 2), qkv.select(2, 2).transpose(1, 2)};
}

Rope rope_tables(const torch::Tensor& cos, const torch::Tensor& sin, int64_t T, int64_t hd) {
  if (cos.numel() == 0) return {};
  for (const auto* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == torch::kFloat && t->is_contiguous() && t->numel() == T * hd,
                "causal attention: rotary tables must be contiguous float32 [T, head_dim]");
  return {cos.data_ptr<float>(), sin.data_ptr<float>()};
}

// Causal attention of a packed projection [B, T, 3, H, hd] whose q and k are first rotated by the
// tables cos, sin [T, hd] (empty: not rotated): (out, lse) as causal_attention_forward's.
std::vector<torch::Tensor> qkv_attention_forward(const torch::Tensor& qkv, const torch::Tensor& cos,
                                                 const torch::Tensor& sin) {
  const auto qkvs = unpack(qkv);
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  const Rope rope = rope_tables(cos, sin, T, hd);
  auto out = torch::empty({B, T, H, hd}, torch::kFloat);
  auto lse = torch::empty({B, H, T}, torch::kFloat);
  by_head_size(hd, [&](auto c) {
    forward_heads<c()>(qkvs[0], qkvs[1], qkvs[2], rope, out.data_ptr<float>(), lse.data_ptr<float>());
  });
  return {out.permute({0, 2, 1, 3}), lse};
}

// Its gradient with respect to the (unrotated) packed projection, [B, T, 3, H, hd]: the packed
// projection's backward reads it without a concatenation.
torch::Tensor qkv_attention_backward(const torch::Tensor& dout, const torch::Tensor& qkv, const torch::Tensor& out,
                                     const torch::Tensor& lse, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto qkvs = unpack(qkv);
  const auto& q = qkvs[0];
  check(out, q, "out"), check(dout, q, "the gradient");
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == B * H * T, "causal attention: lse must be [B, H, T]");
  const Rope rope = rope_tables(cos, sin, T, hd);
  auto dqkv = torch::empty({B, T, 3, H, hd}, torch::kFloat);
  float* g = dqkv.data_ptr<float>();
  by_head_size(hd, [&](auto c) {
    backward_heads<c()>(dout, q, qkvs[1], qkvs[2], out, lse.data_ptr<float>(), rope, g, g + H * hd, g + 2 * H * hd,
                        3 * H * hd);
  });
  return dqkv;
}
