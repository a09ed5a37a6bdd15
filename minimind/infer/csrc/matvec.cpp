// One-row matrix products for batch-1 decoding on x86 CPUs: y = W x for one activation row x (K,) and a weight
// matrix W (N, K) in bf16 or int8 (one scale per row), accumulated in fp32.
//
// A library GEMM called with one row streams the weights well under what the machine can feed, and a compiled
// reduction that converts each weight to fp32 before a multiply-add is bound by that conversion once the weights sit
// in cache (benchmarks/generate.md). These loops use the CPU's dot-product instructions instead, as llama.cpp does:
//   bf16: x rounded to bf16, vdpbf16ps (32 products of bf16 pairs into fp32 per instruction, AVX512-BF16);
//   int8: x quantized to int8 (one scale for the row: its largest |x| / 127), then vpdpbusd (64 products of
//         bytes into int32 per instruction, AVX512-VNNI), scaled back to fp32 once per output;
// One row at a time, read front to back (several rows interleaved streamed the weights ~2x slower from L3).
// Each op also has a plain C++ loop (the same arithmetic), used where the CPU or compiler lacks the instructions.
// Rows are split over ATen's threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MM_AVX512 1
#endif

namespace {

// Rows per task: at least ~64 KiB of weights each, so that a small product is not split across threads.
int64_t grain(int64_t row_bytes) {
  int64_t rows = (int64_t{1} << 16) / std::max<int64_t>(row_bytes, 1);
  return std::max<int64_t>(rows, 1);
}

// The weights of one call: matrices (N_i, K) of one dtype, all taking the same x (K,); their outputs are
// concatenated (several layers that read the same x can be one call and one split of their rows over the threads).
std::vector<int64_t> check_args(const at::Tensor& x, at::TensorList ws, at::ScalarType wtype, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && !ws.empty(), op, ": a CPU x and at least one weight expected");
  std::vector<int64_t> starts{0};
  for (const at::Tensor& w : ws) {
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous() && w.scalar_type() == wtype, op,
                ": weights must be contiguous (out, in) ", c10::toString(wtype), " CPU matrices, got ", w.sizes(), " ",
                w.scalar_type(), " on ", w.device());
    TORCH_CHECK(x.numel() == w.size(1), op, ": x has ", x.numel(), " values, a weight takes ", w.size(1));
    starts.push_back(starts.back() + w.size(0));
  }
  return starts;
}

// Rows [0, starts.back()) of the concatenated weights split over ATen's threads, each task handed to
// rows_of(matrix, first row, end row, offset of that matrix's outputs).
template <typename F>
void over_rows(const std::vector<int64_t>& starts, int64_t row_bytes, const F& rows_of) {
  at::parallel_for(0, starts.back(), grain(row_bytes), [&](int64_t b, int64_t e) {
    for (size_t m = 0; m + 1 < starts.size(); ++m) {
      const int64_t lo = std::max(b, starts[m]), hi = std::min(e, starts[m + 1]);
      if (lo < hi) rows_of(m, lo - starts[m], hi - starts[m], starts[m]);
    }
  });
}

// t itself when it is already contiguous and of `dtype` (the usual case: no dispatch on the hot path), else a copy.
at::Tensor as(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype && t.is_contiguous() ? t : t.contiguous().to(dtype);
}

#ifdef MM_AVX512
inline __mmask32 tail32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }
inline __mmask64 tail64(int64_t n) { return n >= 64 ? ~__mmask64(0) : __mmask64((uint64_t{1} << n) - 1); }
#endif

// ---- bf16 ----

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void bf16_rows(const uint16_t* x, const uint16_t* w, float* y, int64_t K, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    const uint16_t* row = w + n * K;
    int64_t k = 0;
#if defined(MM_AVX512) && defined(__AVX512BF16__)
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; k + 128 <= K; k += 128)
      for (int a = 0; a < 4; ++a)
        acc[a] = _mm512_dpbf16_ps(acc[a], (__m512bh)_mm512_loadu_si512(x + k + 32 * a),
                                  (__m512bh)_mm512_loadu_si512(row + k + 32 * a));
    for (; k < K; k += 32) {
      const __mmask32 m = tail32(K - k);
      acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_maskz_loadu_epi16(m, x + k),
                                (__m512bh)_mm512_maskz_loadu_epi16(m, row + k));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#else
    float s = 0.f;
#endif
    for (; k < K; ++k) s += bf16_to_float(row[k]) * bf16_to_float(x[k]);
    y[n] = s;
  }
}

at::Tensor matvec_bf16(const at::Tensor& x_, at::TensorList ws) {
  const auto starts = check_args(x_, ws, at::kBFloat16, "minimind::matvec_bf16");
  const at::Tensor x = as(x_, at::kBFloat16);
  const int64_t K = x.numel();
  at::Tensor y = at::empty({starts.back()}, x.options().dtype(at::kFloat));
  auto xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  over_rows(starts, K * 2, [&](size_t m, int64_t b, int64_t e, int64_t at) {
    bf16_rows(xp, reinterpret_cast<const uint16_t*>(ws[m].data_ptr<at::BFloat16>()), yp + at, K, b, e);
  });
  return y;
}

// ---- int8 ----

// x quantized for vpdpbusd, which multiplies unsigned by signed bytes: q = round(x / d) with d = max |x| / 127, one
// scale for the row, stored as q + 128 in [1, 255]. Then sum_k (q_k + 128) w_k = sum_k q_k w_k + 128 sum_k w_k, and
// the second term is the weight row's sum, computed once when the layer is quantized.
float quantize_row(const float* x, int64_t K, uint8_t* out) {
  float amax = 0.f;
  int64_t k = 0;
#ifdef MM_AVX512
  __m512 m = _mm512_setzero_ps();
  for (; k + 16 <= K; k += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
  amax = _mm512_reduce_max_ps(m);
#endif
  for (; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  const float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
  k = 0;
#ifdef MM_AVX512
  const __m512 scale = _mm512_set1_ps(id);
  const __m512i offset = _mm512_set1_epi32(128);
  for (; k + 16 <= K; k += 16) {  // round to nearest (even), as std::nearbyint below
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), scale)), offset);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtusepi32_epi8(q));
  }
#endif
  for (; k < K; ++k) out[k] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(x[k] * id)) + 128);
  return d;
}

void q8_rows(const uint8_t* xq, const int8_t* w, const int32_t* rowsum, float dx, const float* scale, float* y,
             int64_t K, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    const int8_t* row = w + n * K;
    int64_t k = 0;
    int32_t dot = 0;
#if defined(MM_AVX512) && defined(__AVX512VNNI__)
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (; k + 256 <= K; k += 256)
      for (int a = 0; a < 4; ++a)
        acc[a] = _mm512_dpbusd_epi32(acc[a], _mm512_loadu_si512(xq + k + 64 * a), _mm512_loadu_si512(row + k + 64 * a));
    for (; k < K; k += 64) {
      const __mmask64 m = tail64(K - k);
      acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_maskz_loadu_epi8(m, xq + k), _mm512_maskz_loadu_epi8(m, row + k));
    }
    dot = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3])));
#endif
    for (; k < K; ++k) dot += int32_t(xq[k]) * row[k];
    y[n] = float(dot - 128 * rowsum[n]) * dx * scale[n];
  }
}

at::Tensor matvec_q8(const at::Tensor& x_, at::TensorList ws, at::TensorList scales_, at::TensorList rowsums) {
  const auto starts = check_args(x_, ws, at::kChar, "minimind::matvec_q8");
  TORCH_CHECK(scales_.size() == ws.size() && rowsums.size() == ws.size(),
              "minimind::matvec_q8: one scale tensor and one row-sum tensor per weight expected");
  std::vector<at::Tensor> scales;
  for (size_t m = 0; m < ws.size(); ++m) {
    const int64_t N = ws[m].size(0);
    TORCH_CHECK(scales_[m].numel() == N && rowsums[m].numel() == N && rowsums[m].scalar_type() == at::kInt &&
                rowsums[m].is_contiguous(), "minimind::matvec_q8: weight ", m, " has ", N, " rows but ",
                scales_[m].numel(), " scales and ", rowsums[m].numel(), " ", rowsums[m].scalar_type(), " row sums");
    scales.push_back(as(scales_[m], at::kFloat));
  }
  const at::Tensor x = as(x_, at::kFloat);
  const int64_t K = x.numel();
  at::Tensor y = at::empty({starts.back()}, x.options());
  // x's bytes 64-aligned: every vpdpbusd loads 64 of them, and a load across two cache lines is slower
  thread_local std::vector<uint8_t> buffer;
  buffer.resize(K + 64);
  uint8_t* xq = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
  const float dx = quantize_row(x.data_ptr<float>(), K, xq);
  const uint8_t* xp = xq;  // this thread's buffer: the lambda runs on others too
  float* yp = y.data_ptr<float>();
  over_rows(starts, K, [&](size_t m, int64_t b, int64_t e, int64_t at) {
    q8_rows(xp, ws[m].data_ptr<int8_t>(), rowsums[m].data_ptr<int32_t>(), dx, scales[m].data_ptr<float>(),
            yp + at, K, b, e);
  });
  return y;
}

// Which ops run on the CPU's vector instructions in this build ("bf16,q8" or a part of it): the others run
// their plain loops, slower than the library paths they would replace.
std::string vector_ops() {
  std::string ops;
#ifdef MM_AVX512
#ifdef __AVX512BF16__
  ops += "bf16,";
#endif
#ifdef __AVX512VNNI__
  ops += "q8";
#endif
#endif
  return ops;
}

}  // namespace

TORCH_LIBRARY(minimind, m) {
  m.def("matvec_bf16(Tensor x, Tensor[] weights) -> Tensor");
  m.def("matvec_q8(Tensor x, Tensor[] weights, Tensor[] scales, Tensor[] rowsums) -> Tensor");
  m.def("vector_ops() -> str", vector_ops);
}

TORCH_LIBRARY_IMPL(minimind, CPU, m) {
  m.impl("matvec_bf16", matvec_bf16);
  m.impl("matvec_q8", matvec_q8);
}
