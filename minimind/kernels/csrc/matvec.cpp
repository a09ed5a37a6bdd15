// One-row matrix products for batch-1 decoding on x86 CPUs, as torch ops: y = W x for one activation row x (K,) and
// weight matrices W (N, K) in bf16 or int8 (one scale per row), accumulated in fp32 (the row loops: rows.h).
//
// A library GEMM called with one row streams the weights well under what the machine can feed, and a compiled
// reduction that converts each weight to fp32 before a multiply-add is bound by that conversion once the weights sit
// in cache (benchmarks/generate.md). These ops use the CPU's dot-product instructions instead, as llama.cpp does.
// Rows are split over ATen's threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "rows.h"

namespace {

using namespace minimind;

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

}  // namespace

TORCH_LIBRARY(minimind, m) {
  m.def("matvec_bf16(Tensor x, Tensor[] weights) -> Tensor");
  m.def("matvec_q8(Tensor x, Tensor[] weights, Tensor[] scales, Tensor[] rowsums) -> Tensor");
  m.def("vector_ops() -> str", [] { return minimind::vector_ops(); });
}

TORCH_LIBRARY_IMPL(minimind, CPU, m) {
  m.impl("matvec_bf16", matvec_bf16);
  m.impl("matvec_q8", matvec_q8);
}
