// CPU reference: RMSNorm, SwiGLU, embedding lookup.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) {
  GRAFT_CHECK(x.dtype() == DType::F32 && x.is_contiguous() && x.ndim() >= 1, "rmsnorm: x {} must be contiguous f32",
              x.describe());
  const int64_t H = x.size(-1), T = H ? x.numel() / H : 0;
  GRAFT_CHECK(w.dtype() == DType::F32 && w.numel() == H, "rmsnorm: weight {} must be f32 [{}]", w.describe(), H);
  GRAFT_CHECK(y.dtype() == DType::F32 && y.numel() == x.numel() && y.is_contiguous(), "rmsnorm: y {} must match x {}",
              y.describe(), x.describe());
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  parallel_for(T, graft::parallel_worth(T * H * 4), [&](int64_t t) {
    const float* r = xp + t * H;
    // Eight partial double sums: the compiler vectorizes them (one serial chain of double adds ran at one add per
    // 4 cycles: rmsnorm was ~3% of a Qwen3-MoE prefill with its per-head q/k norms). Double keeps the result exact
    // to float rounding whatever the order.
    double part[8] = {};
    int64_t i = 0;
    for (; i + 8 <= H; i += 8)
      for (int j = 0; j < 8; ++j) part[j] += double(r[i + j]) * r[i + j];
    double ss = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < H; ++i) ss += double(r[i]) * r[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(H) + eps));
    float* o = yp + t * H;
    for (int64_t i = 0; i < H; ++i) o[i] = wp[i] * (r[i] * inv);
  });
}

void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) {
  GRAFT_CHECK(gate.dtype() == DType::F32 && up.dtype() == DType::F32 && out.dtype() == DType::F32 &&
                  gate.is_contiguous() && up.is_contiguous() && out.is_contiguous(),
              "swiglu: gate {}, up {}, out {} must be contiguous f32", gate.describe(), up.describe(), out.describe());
  GRAFT_CHECK(gate.shape() == up.shape() && gate.shape() == out.shape(), "swiglu: shapes differ: gate {}, up {}, out {}",
              gate.describe(), up.describe(), out.describe());
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* o = out.data<float>();
  const int64_t n = gate.numel();
  // Eigen's vectorized exp, 4096 elements per task (a scalar std::exp per element was ~5% of a Qwen3-MoE prefill).
  constexpr int64_t kChunk = 4096;
  parallel_for((n + kChunk - 1) / kChunk, graft::parallel_worth(n * 16), [&](int64_t c) {
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    const Eigen::Map<const Eigen::ArrayXf> G(g + i0, len), U(u + i0, len);
    Eigen::Map<Eigen::ArrayXf>(o + i0, len) = G / (1.0f + (-G).exp()) * U;
  });
}

void embedding(std::span<const int32_t> ids, const Tensor& table, Tensor& out) {
  GRAFT_CHECK(table.dtype() == DType::F32 && table.ndim() == 2 && table.is_contiguous(),
              "embedding: table {} must be contiguous f32 [V, H]", table.describe());
  const int64_t V = table.size(0), H = table.size(1), T = static_cast<int64_t>(ids.size());
  GRAFT_CHECK(out.dtype() == DType::F32 && out.numel() == T * H && out.is_contiguous(), "embedding: out {} must be [{}, {}]",
              out.describe(), T, H);
  for (int64_t t = 0; t < T; ++t)
    GRAFT_CHECK_FIX(ids[static_cast<size_t>(t)] >= 0 && ids[static_cast<size_t>(t)] < V,
                    "check that the tokenizer matches the model", "token id {} at position {} is outside the vocabulary [0, {})",
                    ids[static_cast<size_t>(t)], t, V);
  const float* tp = table.data<float>();
  float* op = out.data<float>();
  parallel_for(T, graft::parallel_worth(T * H), [&](int64_t t) {
    std::copy_n(tp + static_cast<int64_t>(ids[static_cast<size_t>(t)]) * H, H, op + t * H);
  });
}

}  // namespace graft::cpu
