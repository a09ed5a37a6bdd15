// The row loops of minimind's batch-1 CPU kernels: y[n] = W[n, :] . x for rows [begin, end) of one weight matrix W
// (N, K), x one activation row, accumulated in fp32. Shared by the one-product ops (matvec.cpp) and the whole decode
// step (decode.cpp).
//   fp32: 64 fused multiply-adds per iteration, four accumulators;
//   bf16: x rounded to bf16, vdpbf16ps (32 products of bf16 pairs into fp32 per instruction, AVX512-BF16);
//   int8: x quantized to int8 (one scale for the row: its largest |x| / 127), then vpdpbusd (64 products of bytes
//         into int32 per instruction, AVX512-VNNI), scaled back to fp32 once per output;
//   int4: PyTorch's packed int4 layout read in place, 64 rows at a time (q4_rows below), x in fp32.
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

// ---- int4 (PyTorch's CPU int4 pack, as minimind's Int4Linear holds it) ----

// `torch._convert_weight_to_int4pack_for_cpu` lays rows out in blocks of 64: for block b and input k, 32 bytes, byte
// j holding q[64 b + j, k] in its low nibble and q[64 b + j + 32, k] in its high one. scale_zeros (K / group, N, 2)
// bf16 gives w = (q - 8) * scale + zero per group of `group` inputs. A block is computed vertically: for each k its 64
// weights times x[k] into 64 accumulators, and at the end of each group y += scale * (acc - 8 sum x) + zero * sum x.
// Rows [begin, end) must be whole blocks (N a multiple of 64; native.py checks the layout once per process).
inline void q4_rows(const float* x, const uint8_t* w, const uint16_t* scale_zeros, float* y, int64_t N, int64_t K,
                    int64_t group, int64_t begin, int64_t end) {
  for (int64_t blk = begin / 64; blk < end / 64; ++blk) {
    const uint8_t* p = w + blk * K * 32;
#ifdef MM_AVX512
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m512i high_half = _mm512_set1_epi32(int32_t(0xFFFF0000u));
    __m512 out[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g0 = 0; g0 < K; g0 += group) {
      __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
      float sx = 0.f;
      for (int64_t k = g0; k < g0 + group; ++k) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k * 32));
        const __m256i lo = _mm256_and_si256(bytes, low), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
        const __m512 xk = _mm512_set1_ps(x[k]);
        sx += x[k];
        acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo))), xk, acc[0]);
        acc[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1))), xk, acc[1]);
        acc[2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi))), xk, acc[2]);
        acc[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1))), xk, acc[3]);
      }
      const uint16_t* sz = scale_zeros + ((g0 / group) * N + blk * 64) * 2;
      const __m512 sum = _mm512_set1_ps(sx), eight_sum = _mm512_set1_ps(8.f * sx);
      for (int a = 0; a < 4; ++a) {  // 16 (scale, zero) bf16 pairs: scale in each 32-bit lane's low half
        const __m512i pair = _mm512_loadu_si512(sz + 32 * a);
        const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
        const __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(pair, high_half));
        out[a] = _mm512_fmadd_ps(scale, _mm512_sub_ps(acc[a], eight_sum), _mm512_fmadd_ps(zero, sum, out[a]));
      }
    }
    for (int a = 0; a < 4; ++a) _mm512_storeu_ps(y + blk * 64 + 16 * a, out[a]);
#else
    for (int64_t j = 0; j < 64; ++j) {
      float total = 0.f;
      for (int64_t g0 = 0; g0 < K; g0 += group) {
        float acc = 0.f, sx = 0.f;
        for (int64_t k = g0; k < g0 + group; ++k) {
          const uint8_t byte = p[k * 32 + (j & 31)];
          acc += float(j < 32 ? byte & 15 : byte >> 4) * x[k];
          sx += x[k];
        }
        const uint16_t* sz = scale_zeros + ((g0 / group) * N + blk * 64 + j) * 2;
        total += bf16_to_float(sz[0]) * (acc - 8.f * sx) + bf16_to_float(sz[1]) * sx;
      }
      y[blk * 64 + j] = total;
    }
#endif
  }
}

// Which row loops run on the CPU's vector instructions in this build ("f32" and "q4" on AVX-512, "bf16" with
// AVX512-BF16, "q8" with AVX512-VNNI, comma-separated): the others run their plain loops, slower than the library paths they
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
  ops += "q4,";
#endif
  return ops;
}

}  // namespace minimind
