// Causal self-attention for training, forward and backward, for small heads on the CPU.
//
// Why by hand: with the head sizes small models use (16-64), PyTorch's CPU flash attention runs
// its blocks as tiny matrix products; it took 31% of a training step of a 64-wide, 8-layer model.
// Here each (row, head) of the batch is one task whose queries, keys and values (~50 KB at 256
// positions) stay in the core's cache: for each query, its scores against every earlier key are
// formed in registers from the keys stored transposed ([head_dim, T]), exponentiated in place and
// combined with the values, so the T x T matrix never exists. The backward recomputes the
// probabilities from the saved log-sum-exp, as flash attention does, and accumulates the key and
// value gradients across queries in the task's buffers.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

namespace {

using tinyscale::exp_shifted;

#ifdef TINYSCALE_AVX2
// s[r][j] = sum_d q[r][d] * xt[d * Tp + j] for R query rows and j in [0, n rounded up to 8). The
// rows share each load of xt, and a block of scores stays in registers until its end (a store per
// multiply-add would halve the speed): R rows x V vectors of 8 keys = 8 accumulators.
template <int R>
void row_dots(const float* const* q, const float* xt, int64_t Tp, int64_t n, int64_t hd, float* const* s) {
  constexpr int V = 8 / R;
  int64_t j = 0;
  for (; j + 8 * V <= n; j += 8 * V) {
    __m256 a[R][V];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) a[r][v] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      __m256 x[V];
      for (int v = 0; v < V; ++v) x[v] = _mm256_loadu_ps(xt + d * Tp + j + 8 * v);
      for (int r = 0; r < R; ++r) {
        const __m256 qd = _mm256_broadcast_ss(q[r] + d);
        for (int v = 0; v < V; ++v) a[r][v] = _mm256_fmadd_ps(qd, x[v], a[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) _mm256_storeu_ps(s[r] + j + 8 * v, a[r][v]);
  }
  for (; j < n; j += 8) {
    __m256 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
      const __m256 x = _mm256_loadu_ps(xt + d * Tp + j);
      for (int r = 0; r < R; ++r) a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[r] + d), x, a[r]);
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(s[r] + j, a[r]);
  }
}

// out[r] = sum_j w[r][j] * x[j, :] for R rows over j in [0, n), sharing each load of x; every
// w[r][j] past that row's own keys must be 0.
template <int C, int R>
void combine_rows(const float* const* w, const float* x, int64_t n, float* const* out) {
  __m256 a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    __m256 xj[C];
    for (int c = 0; c < C; ++c) xj[c] = _mm256_loadu_ps(x + j * 8 * C + 8 * c);
    for (int r = 0; r < R; ++r) {
      const __m256 wr = _mm256_broadcast_ss(w[r] + j);
      for (int c = 0; c < C; ++c) a[r][c] = _mm256_fmadd_ps(wr, xj[c], a[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(out[r] + 8 * c, a[r][c]);
}

// x[j, :] += w[j] * a for j in [0, n) (x row-major with 8C columns): one rank-one update.
template <int C>
void rank_one(const float* a, const float* w, int64_t n, float* x) {
  __m256 av[C];
  for (int c = 0; c < C; ++c) av[c] = _mm256_loadu_ps(a + 8 * c);
  for (int64_t j = 0; j < n; ++j) {
    const __m256 wj = _mm256_broadcast_ss(w + j);
    float* xj = x + j * 8 * C;
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(xj + 8 * c, _mm256_fmadd_ps(wj, av[c], _mm256_loadu_ps(xj + 8 * c)));
  }
}

// x[j, :] += w0[j] * a0 + w1[j] * a1 for j in [0, n): two queries' updates in one pass over x.
template <int C>
void rank_two(const float* a0, const float* w0, const float* a1, const float* w1, int64_t n, float* x) {
  __m256 u[C], v[C];
  for (int c = 0; c < C; ++c) u[c] = _mm256_loadu_ps(a0 + 8 * c), v[c] = _mm256_loadu_ps(a1 + 8 * c);
  for (int64_t j = 0; j < n; ++j) {
    const __m256 s0 = _mm256_broadcast_ss(w0 + j), s1 = _mm256_broadcast_ss(w1 + j);
    float* xj = x + j * 8 * C;
    for (int c = 0; c < C; ++c)
      _mm256_storeu_ps(xj + 8 * c, _mm256_fmadd_ps(s1, v[c], _mm256_fmadd_ps(s0, u[c], _mm256_loadu_ps(xj + 8 * c))));
  }
}
#else
template <int C>
void rank_two(const float* a0, const float* w0, const float* a1, const float* w1, int64_t n, float* x) {
  for (int64_t j = 0; j < n; ++j)
    for (int i = 0; i < 8 * C; ++i) x[j * 8 * C + i] += w0[j] * a0[i] + w1[j] * a1[i];
}

template <int R>
void row_dots(const float* const* q, const float* xt, int64_t Tp, int64_t n, int64_t hd, float* const* s) {
  for (int r = 0; r < R; ++r) {
    std::fill(s[r], s[r] + n, 0.f);
    for (int64_t d = 0; d < hd; ++d)
      for (int64_t j = 0; j < n; ++j) s[r][j] += q[r][d] * xt[d * Tp + j];
  }
}

template <int C, int R>
void combine_rows(const float* const* w, const float* x, int64_t n, float* const* out) {
  for (int r = 0; r < R; ++r) tinyscale::weighted_rows<C, 1>(w[r], x, 8 * C, n, out[r]);
}

template <int C>
void rank_one(const float* a, const float* w, int64_t n, float* x) {
  for (int64_t j = 0; j < n; ++j)
    for (int i = 0; i < 8 * C; ++i) x[j * 8 * C + i] += w[j] * a[i];
}
#endif

// One (row, head) task's inputs, copied from strided [T, hd] rows into its own buffers.
struct Head {
  int64_t T, Tp, hd;
  std::vector<float> q, k, kt, v, vt;  // q scaled by 1/sqrt(hd); kt, vt: [hd, Tp]

  Head(int64_t T_, int64_t hd_) : T(T_), Tp((T_ + 7) / 8 * 8), hd(hd_), q(T * hd), k(Tp * hd, 0.f),
                                  kt(hd * Tp, 0.f), v(Tp * hd, 0.f), vt(hd * Tp, 0.f) {}

  static void rows(const float* src, int64_t stride, int64_t T, int64_t hd, float mul, float* dst, float* dst_t,
                   int64_t Tp) {
    for (int64_t t = 0; t < T; ++t) {
      const float* row = src + t * stride;
      if (dst)
        for (int64_t d = 0; d < hd; ++d) dst[t * hd + d] = row[d] * mul;
      if (dst_t)
        for (int64_t d = 0; d < hd; ++d) dst_t[d * Tp + t] = row[d] * mul;
    }
  }

  void load(const torch::Tensor& qs, const torch::Tensor& ks, const torch::Tensor& vs, int64_t b, int64_t h,
            float scale, bool backward) {
    auto at = [&](const torch::Tensor& x) { return x.data_ptr<float>() + b * x.stride(0) + h * x.stride(1); };
    rows(at(qs), qs.stride(2), T, hd, scale, q.data(), nullptr, Tp);
    rows(at(ks), ks.stride(2), T, hd, 1.f, backward ? k.data() : nullptr, kt.data(), Tp);
    rows(at(vs), vs.stride(2), T, hd, 1.f, v.data(), backward ? vt.data() : nullptr, Tp);
  }
};

void check(const torch::Tensor& x, const torch::Tensor& like, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 4 && x.sizes() == like.sizes() && x.stride(3) == 1,
              "causal attention: ", what, " must be float32 [B, H, T, head_dim] with contiguous rows");
}

// Rows per combine_rows call (and accumulator sets per weighted_rows call): R x C accumulators stay
// within the 16 vector registers.
template <int C>
constexpr int kRows = C <= 2 ? 4 : C <= 4 ? 2 : 1;

template <int C>
void forward_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, float* out, float* lse) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = 8 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Head hb(T, hd);
    constexpr int R = 4;  // query rows per pass over the keys
    const int64_t stride = hb.Tp + 8;
    std::vector<float> p(R * stride);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      hb.load(q, k, v, b, h, scale, false);
      for (int64_t i = 0; i < T; i += R) {
        const float* qr[R];
        float* sr[R];
        for (int r = 0; r < R; ++r)  // past the last row, repeat it (computed, not used)
          qr[r] = hb.q.data() + std::min<int64_t>(i + r, T - 1) * hd, sr[r] = p.data() + r * stride;
        row_dots<R>(qr, hb.kt.data(), hb.Tp, std::min<int64_t>(i + R, T), hd, sr);
        const int64_t n_group = std::min<int64_t>(i + R, T);
        float* o[R];
        float inv[R];
        for (int r = 0; r < R; ++r) {
          const int64_t row = std::min<int64_t>(i + r, T - 1), n = row + 1;  // causal: keys 0..row
          const float top = tinyscale::max_of(sr[r], n);
          const float total = exp_shifted(sr[r], n, top);
          std::fill(sr[r] + n, sr[r] + n_group, 0.f);  // keys after the row: weight 0 in combine_rows
          o[r] = out + ((b * T + row) * H + h) * hd;
          inv[r] = 1.f / total;
          if (i + r < T) lse[bh * T + row] = top + std::log(total);
        }
        for (int r = 0; r < R; r += kRows<C>)
          combine_rows<C, kRows<C>>(sr + r, hb.v.data(), n_group, o + r);
        for (int r = 0; r < R && i + r < T; ++r)
          for (int64_t d = 0; d < hd; ++d) o[r][d] *= inv[r];
      }
    }
  });
}

template <int C>
void backward_heads(const torch::Tensor& dout, const torch::Tensor& q, const torch::Tensor& k,
                    const torch::Tensor& v, const torch::Tensor& out, const float* lse, float* dq, float* dk,
                    float* dv, int64_t rs) {  // rs: the outputs' stride between positions
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = 8 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    Head hb(T, hd);
    std::vector<float> p(2 * (hb.Tp + 8)), ds(2 * (hb.Tp + 8)), gk(hb.Tp * hd), gv(hb.Tp * hd), qi(2 * hd);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      hb.load(q, k, v, b, h, scale, true);
      std::fill(gk.begin(), gk.end(), 0.f);
      std::fill(gv.begin(), gv.end(), 0.f);
      const float* ob = out.data_ptr<float>() + b * out.stride(0) + h * out.stride(1);
      const float* gb = dout.data_ptr<float>() + b * dout.stride(0) + h * dout.stride(1);
      // Queries in pairs: both rows' key and value gradients go into gk, gv in one pass.
      for (int64_t i = 0; i < T; i += 2) {
        const int r = i + 1 < T ? 2 : 1;
        const int64_t i1 = i + r - 1, n_pair = i1 + 1;
        const float* qr[2] = {hb.q.data() + i * hd, hb.q.data() + i1 * hd};
        const float* gr[2] = {gb + i * dout.stride(2), gb + i1 * dout.stride(2)};
        float* pr[2] = {p.data(), p.data() + hb.Tp + 8};
        float* dr[2] = {ds.data(), ds.data() + hb.Tp + 8};
        row_dots<2>(qr, hb.kt.data(), hb.Tp, n_pair, hd, pr);  // scores, then probabilities
        row_dots<2>(gr, hb.vt.data(), hb.Tp, n_pair, hd, dr);  // dp_j = dO_i . v_j
        for (int k2 = 0; k2 < r; ++k2) {
          const int64_t row = i + k2, n = row + 1;
          const float *oi = ob + row * out.stride(2), *gi = gr[k2];
          exp_shifted(pr[k2], n, lse[bh * T + row]);
          float delta = 0.f;  // sum_j p_j dp_j, computed as dO_i . O_i
          for (int64_t d = 0; d < hd; ++d) delta += gi[d] * oi[d];
          float *pk = pr[k2], *dk2 = dr[k2];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) dk2[j] = pk[j] * (dk2[j] - delta) * scale;  // d(score) incl. the scale
          pk[n] = dk2[n] = 0.f;  // the first row of a pair does not see the second row's key
          for (int64_t d = 0; d < hd; ++d) qi[k2 * hd + d] = hb.q[row * hd + d] / scale;  // the unscaled query
        }
        for (int k2 = 0; k2 < r; ++k2)  // dq_i = sum_j ds_ij k_j
          tinyscale::weighted_rows<C, kRows<C>>(dr[k2], hb.k.data(), 8 * C, i + k2 + 1,
                                                dq + (b * T + i + k2) * rs + h * hd);
        const float* g0 = gb + i * dout.stride(2);
        if (r == 2) {
          const float* g1 = g0 + dout.stride(2);
          rank_two<C>(qi.data(), dr[0], qi.data() + hd, dr[1], i + 2, gk.data());
          rank_two<C>(g0, pr[0], g1, pr[1], i + 2, gv.data());
        } else {
          rank_one<C>(qi.data(), ds.data(), i + 1, gk.data());
          rank_one<C>(g0, p.data(), i + 1, gv.data());
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        std::copy_n(gk.data() + t * hd, hd, dk + (b * T + t) * rs + h * hd);
        std::copy_n(gv.data() + t * hd, hd, dv + (b * T + t) * rs + h * hd);
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
  by_head_size(hd, [&](auto c) { forward_heads<c()>(q, k, v, out.data_ptr<float>(), lse.data_ptr<float>()); });
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
    backward_heads<c()>(dout, q, k, v, out, lse.data_ptr<float>(), dq.data_ptr<float>(), dk.data_ptr<float>(),
                        dv.data_ptr<float>(), H * hd);
  });
  return {dq.permute({0, 2, 1, 3}), dk.permute({0, 2, 1, 3}), dv.permute({0, 2, 1, 3})};
}

// The same gradients packed as the q/k/v projection's output, [B, T, 3, H, hd] (dq, dk, dv side by
// side per position): the packed projection's backward reads them without a concatenation.
torch::Tensor causal_attention_backward_packed(const torch::Tensor& dout, const torch::Tensor& q,
                                               const torch::Tensor& k, const torch::Tensor& v,
                                               const torch::Tensor& out, const torch::Tensor& lse) {
  check(q, q, "q"), check(k, q, "k"), check(v, q, "v"), check(out, q, "out"), check(dout, q, "the gradient");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == B * H * T, "causal attention: lse must be [B, H, T]");
  auto dqkv = torch::empty({B, T, 3, H, hd}, torch::kFloat);
  float* g = dqkv.data_ptr<float>();
  by_head_size(hd, [&](auto c) {
    backward_heads<c()>(dout, q, k, v, out, lse.data_ptr<float>(), g, g + H * hd, g + 2 * H * hd, 3 * H * hd);
  });
  return dqkv;
}
