// The row loops of minimind's batch-1 CPU kernels: y[n] = W[n, :] . x for rows [begin, end) of one weight matrix W
// (N, K), x one activation row, accumulated in fp32. Shared by the one-product ops (matvec.cpp) and the whole decode
// step (decode.cpp).
//   fp32: 64 fused multiply-adds per iteration, four accumulators;
//   bf16: x rounded to bf16, vdpbf16ps (32 products of bf16 pairs into fp32 per instruction, AVX512-BF16);
//   int8: x quantized to int8 (one scale for the row: its largest |x| / 127), then vpdpbusd (64 products of bytes
//         into int32 per instruction, AVX512-VNNI), scaled back to fp32 once per output.
// One row at a time, read front to back (several rows interleaved streamed the weights ~2x slower from L3). Each loop
// ends in plain C++ (the same arithmetic), which is all of it where the CPU or compiler lacks the instructions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define MM_AVX512 1
#endif

namespace minimind {

#ifdef MM_AVX512
inline __mmask16 tail16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
inline __mmask32 tail32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << n) - 1); }
inline __mmask64 tail64(int64_t n) { return n >= 64 ? ~__mmask64(0) : __mmask64((uint64_t{1} << n) - 1); }
#endif

// ---- fp32 ----

inline void f32_rows(const float* x, const float* w, float* y, int64_t K, int64_t begin, int64_t end) {
  for (int64_t n = begin; n < end; ++n) {
    const float* row = w + n * K;
    int64_t k = 0;
#ifdef MM_AVX512
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (; k + 64 <= K; k += 64)
      for (int a = 0; a < 4; ++a)
        acc[a] = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16 * a), _mm512_loadu_ps(row + k + 16 * a), acc[a]);
    for (; k < K; k += 16) {
      const __mmask16 m = tail16(K - k);
      acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + k), _mm512_maskz_loadu_ps(m, row + k), acc[0]);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#else
    float s = 0.f;
#endif
    for (; k < K; ++k) s += row[k] * x[k];
    y[n] = s;
  }
}

// ---- bf16 ----

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even, as PyTorch's conversion (NaN kept a NaN).
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return uint16_t((bits >> 16) | 0x40);
  return uint16_t((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

inline void to_bf16(const float* x, int64_t K, uint16_t* out) {
  for (int64_t k = 0; k < K; ++k) out[k] = float_to_bf16(x[k]);
}

inline void bf16_rows(const uint16_t* x, const uint16_t* w, float* y, int64_t K, int64_t begin, int64_t end) {
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

// ---- int8 ----

// x quantized for vpdpbusd, which multiplies unsigned by signed bytes: q = round(x / d) with d = max |x| / 127, one
// scale for the row, stored as q + 128 in [1, 255]. Then sum_k (q_k + 128) w_k = sum_k q_k w_k + 128 sum_k w_k, and
// the second term is the weight row's sum, computed once when the layer is quantized. Returns d.
inline float quantize_row(const float* x, int64_t K, uint8_t* out) {
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

inline void q8_rows(const uint8_t* xq, const int8_t* w, const int32_t* rowsum, float dx, const float* scale, float* y,
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

// Which row loops run on the CPU's vector instructions in this build ("f32" on AVX-512, "bf16" with AVX512-BF16,
// "q8" with AVX512-VNNI, comma-separated): the others run their plain loops, slower than the library paths they
// would replace.
inline std::string vector_ops() {
  std::string ops;
#ifdef MM_AVX512
  ops += "f32,";
#ifdef __AVX512BF16__
  ops += "bf16,";
#endif
#ifdef __AVX512VNNI__
  ops += "q8,";
#endif
#endif
  return ops;
}

}  // namespace minimind
