// One whole decode step of a MiniMind model for one row on the CPU, as one call: the token's embedding, every block
// (RMSNorm, q/k/v, per-head q/k norm where the model has it, RoPE, the step's keys and values written into the
// cache, one-query attention over the cache, o, RMSNorm, SwiGLU), the final norm and the output head. A
// mixture-of-experts block routes the row as `MoEFeedForward` does (the router's softmax in fp32, its top k, their
// weights renormalized where the model asks) and runs only the chosen experts and the shared ones.
//
// Why one call: a step is ~60 matrix products of one row and ~100 small operations around them. As graph nodes (even
// compiled, even with minimind's own product kernels) each pays a dispatch and a fork and join of the thread pool,
// a few microseconds that add up to a third of an int8 step on two cores (benchmarks/generate.md). Here the step
// opens one OpenMP parallel region, every thread runs the same sequence of phases on its share of the rows (or
// heads), and threads meet at a barrier between phases, as llama.cpp's graph runner does: 4 barriers a block when the
// threads divide the key/value heads (each thread owns whole groups, from their q, k, v rows to their attention), 6
// otherwise.
//
// The residual stream and everything around the products stay fp32 (a bf16 model's activations are therefore more
// exact here than in its eager forward, which rounds them to bf16). Each product reads x as its weights' kind asks
// (rows.h): fp32 as is, bf16 rounded to bf16, int8 rounded to int8 with one scale for the row, exactly as the
// one-product ops do, so an int8 model's products here equal its eager ones.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>
#include <omp.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "rows.h"

namespace {

using namespace minimind;

enum class Kind { f32, bf16, q8, q4 };

// One weight matrix (N, K) of the step, with what its kind needs.
struct Matrix {
  Kind kind = Kind::f32;
  const void* w = nullptr;
  const float* scale = nullptr;    // q8: one per row
  const int32_t* rowsum = nullptr; // q8: one per row
  const uint16_t* scale_zeros = nullptr;  // q4: (K / group, N, 2) bf16
  int64_t N = 0, K = 0, group = 0;
};

// x (K,) as each kind of product reads it, made once per thread per x.
struct Input {
  const float* f = nullptr;
  uint16_t* b = nullptr;  // bf16 copy
  uint8_t* q = nullptr;   // int8 (+128) copy, 64-aligned
  float dq = 0.f;         // its scale
  bool need_b = false, need_q = false;

  void prepare(const float* x, int64_t K) {
    f = x;
    if (need_b) to_bf16(x, K, b);
    if (need_q) dq = quantize_row(x, K, q);
  }
};

void rows(const Matrix& m, const Input& x, float* y, int64_t begin, int64_t end) {
  switch (m.kind) {
    case Kind::f32: f32_rows(x.f, static_cast<const float*>(m.w), y, m.K, begin, end); break;
    case Kind::bf16: bf16_rows(x.b, static_cast<const uint16_t*>(m.w), y, m.K, begin, end); break;
    case Kind::q8: q8_rows(x.q, static_cast<const int8_t*>(m.w), m.rowsum, x.dq, m.scale, y, m.K, begin, end); break;
    case Kind::q4:
      q4_rows(x.f, static_cast<const uint8_t*>(m.w), m.scale_zeros, y, m.N, m.K, m.group, begin, end);
      break;
  }
}

// This thread's share [begin, end) of n items, its bounds multiples of `align` (int4 products run 64 rows at a time).
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int nt, int64_t align = 1) {
  const int64_t b = n * t / nt / align * align, e = t + 1 == nt ? n : n * (t + 1) / nt / align * align;
  return {b, e};
}

// Matrices that read the same x, their outputs concatenated into y: this thread's share of all their rows.
void products(const Matrix* ms, int count, const Input& x, float* y, int t, int nt, int64_t align) {
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += ms[i].N;
  const auto [b, e] = share(total, t, nt, align);
  int64_t start = 0;
  for (int i = 0; i < count; ++i) {
    const int64_t lo = std::max(b, start), hi = std::min(e, start + ms[i].N);
    if (lo < hi) rows(ms[i], x, y + start, lo - start, hi - start);
    start += ms[i].N;
  }
}

// out = weight * x / sqrt(mean(x^2) + eps), in fp32.
void rms_norm(const float* x, const float* weight, float* out, int64_t n, float eps) {
  double ss = 0;  // double: the sum of squares in a fixed order, whatever the vector width
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float r = 1.f / std::sqrt(float(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * r);
}

// RoPE on one head's vector (D,) in place: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1).
void rope(float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float a = x[i], b = x[i + h];
    x[i] = a * cos[i] - b * sin[i];
    x[i + h] = b * cos[i + h] + a * sin[i + h];
  }
}

template <typename T> inline float load(const T* p, int64_t i);
template <> inline float load<float>(const float* p, int64_t i) { return p[i]; }
template <> inline float load<uint16_t>(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }

#ifdef MM_AVX512
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {  // 16 bf16 as floats
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
#endif

inline float dot(const float* q, const float* k, int64_t D) {
  int64_t d = 0;
  float s = 0.f;
#ifdef MM_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; d + 16 <= D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), acc);
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; d < D; ++d) s += q[d] * k[d];
  return s;
}

inline float dot(const float* q, const uint16_t* k, int64_t D) {
  int64_t d = 0;
  float s = 0.f;
#ifdef MM_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; d + 16 <= D; d += 16) {
    const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(k + d))), 16);
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_castsi512_ps(wide), acc);
  }
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; d < D; ++d) s += q[d] * bf16_to_float(k[d]);
  return s;
}

#ifdef MM_AVX512
// e^x for 16 floats, within ~2 ulp of std::exp: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial
// (Cephes' expf coefficients), times 2^n. Below -87.3, 0; above ~88.7, inf (as std::exp).
inline __m512 exp16(__m512 x) {
  const __m512 tiny = _mm512_set1_ps(-87.3f);
  const __mmask16 zero = _mm512_cmp_ps_mask(x, tiny, _CMP_LT_OQ);
  x = _mm512_max_ps(x, tiny);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts, for an exact r
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_mov_ps(~zero, _mm512_scalef_ps(p, n));
}
#endif

// scores[0, n) <- e^(scores - top); returns their sum.
inline float exp_shifted(float* scores, int64_t n, float top) {
  int64_t c = 0;
  float total = 0.f;
#ifdef MM_AVX512
  __m512 sum = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(top);
  for (; c < n; c += 16) {
    const __mmask16 m = tail16(n - c);
    const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + c), shift)));
    _mm512_mask_storeu_ps(scores + c, m, e);
    sum = _mm512_add_ps(sum, e);
  }
  total = _mm512_reduce_add_ps(sum);
#endif
  for (; c < n; ++c) {
    scores[c] = std::exp(scores[c] - top);
    total += scores[c];
  }
  return total;
}

// gate[i] <- silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]
inline void swiglu(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
#ifdef MM_AVX512
  const __m512 one = _mm512_set1_ps(1.f);
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(gate + i, _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_loadu_ps(up + i)));
  }
#endif
  for (; i < n; ++i) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// One query head's attention over the cache columns c <= column that `seen` keeps: q (D,), keys and values
// (capacity, D) of its key/value head; scores (capacity,) is scratch. out (D,).
template <typename T>
void attend(const float* q, const T* keys, const T* values, const bool* seen, int64_t column, int64_t D,
            float* scores, float* out) {
  const float scale = 1.f / std::sqrt(float(D));
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c <= column; ++c) {
    scores[c] = seen[c] ? dot(q, keys + c * D, D) * scale : -std::numeric_limits<float>::infinity();
    top = std::max(top, scores[c]);
  }
  const float inv = 1.f / exp_shifted(scores, column + 1, top);
  int64_t d0 = 0;
#ifdef MM_AVX512
  // out = sum_c p_c v_c, up to 64 of the D outputs at a time held in registers over all the columns
  while (d0 + 16 <= D) {
    const int regs = int(std::min<int64_t>(4, (D - d0) / 16));
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t c = 0; c <= column; ++c) {
      const __m512 p = _mm512_set1_ps(scores[c]);
      const T* v = values + c * D + d0;
      for (int r = 0; r < regs; ++r) acc[r] = _mm512_fmadd_ps(p, load16(v + 16 * r), acc[r]);
    }
    for (int r = 0; r < regs; ++r) _mm512_storeu_ps(out + d0 + 16 * r, _mm512_mul_ps(acc[r], _mm512_set1_ps(inv)));
    d0 += 16 * regs;
  }
#endif
  for (; d0 < D; ++d0) {
    float total = 0.f;
    for (int64_t c = 0; c <= column; ++c) total += scores[c] * load(values + c * D, d0);
    out[d0] = total * inv;
  }
}

Matrix matrix(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& rowsum, int64_t K, int64_t index) {
  const int64_t columns = w.scalar_type() == at::kByte ? K / 2 : K;  // packed int4: two to a byte
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous() && w.size(1) == columns,
              "minimind.DecodeModel: weight ", index, " must be a contiguous CPU matrix (out, ", columns, "), got ",
              w.sizes(), " on ", w.device());
  Matrix m;
  m.kind = Kind::f32;
  m.w = w.data_ptr();
  m.N = w.size(0);
  m.K = K;
  switch (w.scalar_type()) {
    case at::kFloat: break;
    case at::kBFloat16: m.kind = Kind::bf16; break;
    case at::kChar:
      m.kind = Kind::q8;
      TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == m.N &&
                      rowsum.scalar_type() == at::kInt && rowsum.is_contiguous() && rowsum.numel() == m.N,
                  "minimind.DecodeModel: int8 weight ", index, " needs ", m.N, " float32 scales and int32 row sums");
      m.scale = scale.data_ptr<float>();
      m.rowsum = rowsum.data_ptr<int32_t>();
      break;
    case at::kByte:  // int4 packed two to a byte: (N, K / 2); `scale` holds the (K / group, N, 2) bf16 scale_zeros
      m.kind = Kind::q4;
      TORCH_CHECK(m.N % 64 == 0 && scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() &&
                      scale.dim() == 3 && scale.size(0) > 0 && K % scale.size(0) == 0 && scale.size(1) == m.N &&
                      scale.size(2) == 2,
                  "minimind.DecodeModel: int4 weight ", index, " needs a multiple of 64 rows (", m.N,
                  ") and (groups, ", m.N, ", 2) bf16 scale_zeros, got ", scale.sizes());
      m.scale_zeros = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::BFloat16>());
      m.group = K / scale.size(0);
      break;
    default: TORCH_CHECK(false, "minimind.DecodeModel: weight ", index, " is ", w.scalar_type(),
                         "; float32, bfloat16, int8 or packed int4 expected");
  }
  return m;
}

const float* vec(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n,
              "minimind.DecodeModel: ", what, " must be ", n, " contiguous float32 values, got ", t.sizes(), " ",
              t.scalar_type());
  return t.data_ptr<float>();
}

// Scratch for one thread: its normalized x and the copies of it the products read.
struct Scratch {
  std::vector<float> x, y, scores, head;
  std::vector<uint16_t> b;
  std::vector<uint8_t> q;
  Input input(bool need_b, bool need_q) {
    Input in;
    in.b = b.data();
    in.q = q.data() + (64 - reinterpret_cast<uintptr_t>(q.data()) % 64) % 64;
    in.need_b = need_b;
    in.need_q = need_q;
    return in;
  }
};

// A model's tensors, checked and gathered once (a call with ~200 tensor arguments cost ~100 us a token
// in argument conversion and checks alone): the TorchScript class minimind.DecodeModel.
struct DecodeModel : torch::CustomClassHolder {
  std::vector<at::Tensor> held;  // every tensor the pointers below point into
  at::Tensor embed, cos, sin;
  std::vector<Matrix> ms;
  std::vector<const float*> norms;
  int64_t L, H, heads, kv_heads, D;
  int64_t experts, top_k, shared;  // experts == 0: a dense model
  int64_t per_layer;  // matrices a layer: q, k, v, o, then gate, up, down (MoE: the router, then a triple an expert)
  int64_t act_width = 0;  // the most SwiGLU activations a step computes (MoE: of k experts and the shared ones)
  int64_t width = 0;  // the widest x a product reads
  bool qk_norm, norm_topk;
  bool need_b = false, need_q = false;  // whether some product reads x as bf16, as int8
  int64_t align = 1;  // the row granularity of the products: 64 with int4 ones
  float eps;

  DecodeModel(at::Tensor embed_, std::vector<at::Tensor> weights, std::vector<at::Tensor> scales,
              std::vector<at::Tensor> rowsums, std::vector<at::Tensor> norms_, at::Tensor cos_, at::Tensor sin_,
              int64_t heads_, int64_t kv_heads_, int64_t head_dim, double eps_, int64_t experts_, int64_t top_k_,
              int64_t shared_, bool norm_topk_)
      : embed(embed_), cos(cos_), sin(sin_), heads(heads_), kv_heads(kv_heads_), D(head_dim), experts(experts_),
        top_k(top_k_), shared(shared_), norm_topk(norm_topk_), eps(float(eps_)) {
    TORCH_CHECK(experts == 0 || (experts > 0 && top_k >= 1 && top_k <= experts && shared >= 0),
                "minimind.DecodeModel: ", top_k, " of ", experts, " experts (and ", shared, " shared) do not route");
    per_layer = experts ? 5 + 3 * (experts + shared) : 7;
    TORCH_CHECK(!weights.empty() && weights.size() % per_layer == 1 && scales.size() == weights.size() &&
                    rowsums.size() == weights.size(),
                "minimind.DecodeModel: ", per_layer, " weights per layer (q, k, v, o, ",
                experts ? "the router, gate, up and down of each expert" : "gate, up, down",
                ") and the head expected, with a scale and a row-sum tensor each; got ", weights.size(), " weights");
    L = weights.size() / per_layer;
    TORCH_CHECK(norms_.size() == size_t(2 * L + 1) || norms_.size() == size_t(4 * L + 1),
                "minimind.DecodeModel: 2 norms per layer (4 with q/k norms) and the final one expected, got ",
                norms_.size(), " for ", L, " layers");
    qk_norm = norms_.size() == size_t(4 * L + 1);
    TORCH_CHECK(embed.device().is_cpu() && embed.dim() == 2 && embed.is_contiguous() &&
                    (embed.scalar_type() == at::kFloat || embed.scalar_type() == at::kBFloat16),
                "minimind.DecodeModel: the embedding must be a contiguous float32 or bfloat16 CPU matrix");
    H = embed.size(1);
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && D > 0 && D % 2 == 0,
                "minimind.DecodeModel: ", heads, " heads of ", D, " do not group over ", kv_heads,
                " key/value heads");
    TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == D &&
                    cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                    sin.is_contiguous(),
                "minimind.DecodeModel: RoPE tables (positions, ", D, ") float32 expected, got ", cos.sizes());
    for (int64_t l = 0; l < L; ++l) {
      const int64_t first = per_layer * l;
      auto add = [&](int64_t i, int64_t K) { ms.push_back(matrix(weights[first + i], scales[first + i],
                                                                 rowsums[first + i], K, first + i)); };
      for (int i = 0; i < 3; ++i) add(i, H);
      add(3, heads * D);
      const Matrix* m = ms.data() + first;
      TORCH_CHECK(m[0].N == heads * D && m[1].N == kv_heads * D && m[2].N == kv_heads * D && m[3].N == H,
                  "minimind.DecodeModel: layer ", l, "'s attention weights do not fit hidden ", H, ", ", heads,
                  " heads of ", D, ", ", kv_heads, " key/value heads");
      int64_t i = 4;
      if (experts) {
        add(i++, H);
        TORCH_CHECK(ms.back().N == experts, "minimind.DecodeModel: layer ", l, "'s router has ", ms.back().N,
                    " outputs for ", experts, " experts");
      }
      std::vector<int64_t> widths;  // of the layer's feed-forwards
      for (int64_t f = 0; f < (experts ? experts + shared : 1); ++f, i += 3) {
        const int64_t I = weights[first + i].size(0);
        add(i, H);
        add(i + 1, H);
        add(i + 2, I);
        TORCH_CHECK(ms[ms.size() - 2].N == I && ms.back().N == H, "minimind.DecodeModel: layer ", l,
                    "'s feed-forward ", f, " does not fit hidden ", H, " and width ", I);
        widths.push_back(I);
        width = std::max(width, I);
      }
      // the activations of the widest choice a token can make: the k widest routed experts and the shared ones
      std::sort(widths.begin(), widths.begin() + (experts ? experts : 1), std::greater<>());
      int64_t active = 0;
      for (int64_t f = 0; f < int64_t(widths.size()); ++f)
        if (!experts || f < top_k || f >= experts) active += widths[f];
      act_width = std::max(act_width, active);
    }
    ms.push_back(matrix(weights.back(), scales.back(), rowsums.back(), H, per_layer * L));
    width = std::max({width, H, heads * D});
    for (const Matrix& m : ms) {
      need_b |= m.kind == Kind::bf16;
      need_q |= m.kind == Kind::q8;
      if (m.kind == Kind::q4) align = 64;
    }
    for (size_t i = 0; i < norms_.size(); ++i)
      norms.push_back(vec(norms_[i], qk_norm && i + 1 < norms_.size() && i % 4 >= 2 ? D : H, "a norm's weight"));
    for (auto* list : {&weights, &scales, &rowsums, &norms_}) held.insert(held.end(), list->begin(), list->end());
  }

  // A MoE layer's feed-forwards that this token runs, (gate, up, down) each, with the weight of its output: the
  // top-k routed experts by the softmax of the router's logits (E,), then the shared ones (weight 1).
  struct Active {
    const Matrix* ffn;
    float weight;
  };
  void route(const Matrix* m, const float* logits, Active* out) const {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < experts; ++e) top = std::max(top, logits[e]);
    std::vector<float> p(experts);
    float total = 0.f;
    for (int64_t e = 0; e < experts; ++e) total += p[e] = std::exp(logits[e] - top);
    for (int64_t e = 0; e < experts; ++e) p[e] /= total;
    std::vector<bool> taken(experts, false);
    float chosen = 0.f;
    for (int64_t k = 0; k < top_k; ++k) {  // the largest probability not yet taken (ties: the lower index)
      int64_t best = -1;
      for (int64_t e = 0; e < experts; ++e)
        if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
      taken[best] = true;
      out[k] = {m + 5 + 3 * best, p[best]};
      chosen += p[best];
    }
    if (norm_topk)
      for (int64_t k = 0; k < top_k; ++k) out[k].weight /= chosen + 1e-20f;
    for (int64_t f = 0; f < shared; ++f) out[top_k + f] = {m + 5 + 3 * (experts + f), 1.f};
  }

  // The step itself (see `step`): every pointer checked by the caller; keys and values (capacity, D) per kv head.
  template <typename T>
  void run(int64_t token, T* const* keys, T* const* values, const bool* seen, int64_t column, int64_t capacity,
           const float* cos, const float* sin, float* logits) const {
    const int64_t Dq = heads * D, Dkv = kv_heads * D, G = heads / kv_heads, V = ms.back().N;
    std::vector<float> h(H), qkv(Dq + 2 * Dkv), attn(Dq), act(act_width), up(act_width), router(experts);
    std::vector<Active> chosen(top_k + shared);  // a MoE layer's, shared by the threads
    if (embed.scalar_type() == at::kFloat) {
      const float* e = embed.data_ptr<float>() + token * H;
      std::copy(e, e + H, h.begin());
    } else {
      const uint16_t* e = reinterpret_cast<const uint16_t*>(embed.data_ptr<at::BFloat16>()) + token * H;
      for (int64_t i = 0; i < H; ++i) h[i] = bf16_to_float(e[i]);
    }
    const int nt = std::max(1, at::get_num_threads());
    std::vector<Scratch> scratch(nt);
    for (Scratch& s : scratch) {
      s.x.resize(width);
      s.y.resize(experts ? H : 0);
      s.scores.resize(capacity);
      s.head.resize(D);
      s.b.resize(need_b ? width : 0);
      s.q.resize(need_q ? width + 64 : 0);
    }
    const int norms_per_layer = qk_norm ? 4 : 2;

#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      Scratch& s = scratch[t];
      Input in = s.input(need_b, need_q);
      // h += W x (x (K,) shared), each thread over its rows of W
      auto residual = [&](const Matrix& w, const float* x, int64_t K) {
        in.prepare(x, K);
        const auto [b, e] = share(H, t, n, align);
        rows(w, in, s.x.data(), b, e);
        for (int64_t i = b; i < e; ++i) h[i] += s.x[i];
      };
      for (int64_t l = 0; l < L; ++l) {
        const Matrix* m = ms.data() + per_layer * l;  // q, k, v, o, then the feed-forward's (see `route`)
        const float* const* norm = norms.data() + norms_per_layer * l;
        // q/k norm and RoPE of head j of qkv (query heads, then key heads); a key head's key and value go into the
        // cache at `column`
        auto place = [&](int64_t j) {
          float* x = qkv.data() + j * D;
          if (qk_norm) {  // (not into s.x: it is the x that a thread's next key/value group's products read)
            rms_norm(x, norm[j < heads ? 2 : 3], s.head.data(), D, eps);
            std::copy(s.head.data(), s.head.data() + D, x);
          }
          rope(x, cos, sin, D);
          if (j >= heads) {
            const int64_t kv = j - heads;
            T* k = keys[l] + (kv * capacity + column) * D;
            T* v = values[l] + (kv * capacity + column) * D;
            const float* vx = qkv.data() + Dq + Dkv + kv * D;
            for (int64_t d = 0; d < D; ++d) {
              store(k, d, x[d]);
              store(v, d, vx[d]);
            }
          }
        };
        auto attend_head = [&](int64_t j) {
          const int64_t kv = j / G;
          attend(qkv.data() + j * D, keys[l] + kv * capacity * D, values[l] + kv * capacity * D, seen, column, D,
                 s.scores.data(), attn.data() + j * D);
        };
        rms_norm(h.data(), norm[0], s.x.data(), H, eps);
        in.prepare(s.x.data(), H);
        if (kv_heads % n == 0 && D % align == 0) {
          // Each thread owns whole key/value groups: its rows of q, k and v, then their attention, no barrier
          // between (two fewer a block than sharing the rows evenly)
          for (int64_t kv = t; kv < kv_heads; kv += n) {
            rows(m[0], in, qkv.data(), kv * G * D, (kv + 1) * G * D);
            rows(m[1], in, qkv.data() + Dq, kv * D, (kv + 1) * D);
            rows(m[2], in, qkv.data() + Dq + Dkv, kv * D, (kv + 1) * D);
            place(heads + kv);
            for (int64_t j = kv * G; j < (kv + 1) * G; ++j) {
              place(j);
              attend_head(j);
            }
          }
        } else {
          products(m, 3, in, qkv.data(), t, n, align);
#pragma omp barrier
          for (int64_t j = t; j < heads + kv_heads; j += n) place(j);
#pragma omp barrier
          for (int64_t j = t; j < heads; j += n) attend_head(j);
        }
#pragma omp barrier
        residual(m[3], attn.data(), Dq);  // h += o(attention)
#pragma omp barrier
        // act = silu(gate(norm(h))) * up(norm(h)) of each feed-forward the token runs (a MoE layer's router is
        // small: one thread computes it, the others wait), each thread over its rows of every gate and up
        rms_norm(h.data(), norm[1], s.x.data(), H, eps);
        in.prepare(s.x.data(), H);
        const Active dense{m + 4, 1.f};
        const Active* ffns = &dense;
        int64_t count = 1;
        if (experts) {
#pragma omp single
          {
            rows(m[4], in, router.data(), 0, experts);
            route(m, router.data(), chosen.data());
          }  // (an implied barrier)
          ffns = chosen.data();
          count = top_k + shared;
        }
        for (int64_t f = 0, offset = 0; f < count; offset += ffns[f].ffn[0].N, ++f) {
          const Matrix* ffn = ffns[f].ffn;
          const auto [b, e] = share(ffn[0].N, t, n, align);
          rows(ffn[0], in, act.data() + offset, b, e);
          rows(ffn[1], in, up.data() + offset, b, e);
          swiglu(act.data() + offset + b, up.data() + offset + b, e - b);
        }
#pragma omp barrier
        if (!experts) {
          residual(m[6], act.data(), m[6].K);  // h += down(act)
        } else {  // h += the sum of each chosen expert's down(act) times its weight, then the shared experts'
          const auto [b, e] = share(H, t, n, align);
          std::fill(s.y.begin() + b, s.y.begin() + e, 0.f);
          for (int64_t f = 0, offset = 0; f < count; offset += ffns[f].ffn[0].N, ++f) {
            const Matrix& down = ffns[f].ffn[2];
            in.prepare(act.data() + offset, down.K);
            rows(down, in, s.x.data(), b, e);
            for (int64_t i = b; i < e; ++i) s.y[i] += ffns[f].weight * s.x[i];
          }
          for (int64_t i = b; i < e; ++i) h[i] += s.y[i];
        }
#pragma omp barrier
      }
      rms_norm(h.data(), norms.back(), s.x.data(), H, eps);
      in.prepare(s.x.data(), H);
      const auto [b, e] = share(V, t, n, align);
      rows(ms.back(), in, logits, b, e);
    }
  }

  // One token's forward at RoPE `position`, its key and value written at cache `column` of every layer's
  // (1, kv_heads, capacity, D) buffers, attending to the columns <= column that `seen` (capacity,) keeps.
  at::Tensor step(int64_t token, std::vector<at::Tensor> keys, std::vector<at::Tensor> values, at::Tensor seen,
                  int64_t column, int64_t position) {
    TORCH_CHECK(keys.size() == size_t(L) && values.size() == size_t(L),
                "minimind.DecodeModel.step: one key and one value buffer per layer (", L, ") expected, got ",
                keys.size(), " and ", values.size());
    TORCH_CHECK(token >= 0 && token < embed.size(0), "minimind.DecodeModel.step: token ", token,
                " is outside the vocabulary (", embed.size(0), ")");
    const at::Tensor& k0 = keys[0];
    TORCH_CHECK(k0.dim() == 4 && k0.size(0) == 1 && k0.size(1) == kv_heads && k0.size(3) == D,
                "minimind.DecodeModel.step: one row's cache (1, ", kv_heads, ", capacity, ", D, ") expected, got ",
                k0.sizes());
    const int64_t capacity = k0.size(2);
    TORCH_CHECK(column >= 0 && column < capacity, "minimind.DecodeModel.step: column ", column,
                " outside the cache (", capacity, ")");
    TORCH_CHECK(position >= 0 && position < cos.size(0), "minimind.DecodeModel.step: position ", position,
                " outside the RoPE tables (", cos.size(0), " positions)");
    TORCH_CHECK(seen.scalar_type() == at::kBool && seen.is_contiguous() && seen.numel() == capacity,
                "minimind.DecodeModel.step: `seen` must be ", capacity, " contiguous booleans");
    for (int64_t l = 0; l < L; ++l)
      for (const at::Tensor& c : {keys[l], values[l]})
        TORCH_CHECK(c.sizes() == k0.sizes() && c.scalar_type() == k0.scalar_type() && c.is_contiguous() &&
                        c.device().is_cpu(),
                    "minimind.DecodeModel.step: layer ", l, "'s cache buffers must match layer 0's ", k0.sizes(), " ",
                    k0.scalar_type(), ", contiguous");
    at::Tensor logits = at::empty({ms.back().N}, embed.options().dtype(at::kFloat));
    const float* c = cos.data_ptr<float>() + position * D;
    const float* s = sin.data_ptr<float>() + position * D;
    if (k0.scalar_type() == at::kFloat) {
      std::vector<float*> k, v;
      for (int64_t l = 0; l < L; ++l) {
        k.push_back(keys[l].data_ptr<float>());
        v.push_back(values[l].data_ptr<float>());
      }
      run<float>(token, k.data(), v.data(), seen.data_ptr<bool>(), column, capacity, c, s, logits.data_ptr<float>());
    } else {
      TORCH_CHECK(k0.scalar_type() == at::kBFloat16, "minimind.DecodeModel.step: a float32 or bfloat16 cache expected");
      std::vector<uint16_t*> k, v;
      for (int64_t l = 0; l < L; ++l) {
        k.push_back(reinterpret_cast<uint16_t*>(keys[l].data_ptr<at::BFloat16>()));
        v.push_back(reinterpret_cast<uint16_t*>(values[l].data_ptr<at::BFloat16>()));
      }
      run<uint16_t>(token, k.data(), v.data(), seen.data_ptr<bool>(), column, capacity, c, s,
                    logits.data_ptr<float>());
    }
    return logits;
  }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(minimind, m) {
  m.class_<DecodeModel>("DecodeModel")
      .def(torch::init<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                       std::vector<at::Tensor>, at::Tensor, at::Tensor, int64_t, int64_t, int64_t, double, int64_t,
                       int64_t, int64_t, bool>())
      .def("step", &DecodeModel::step);
}
