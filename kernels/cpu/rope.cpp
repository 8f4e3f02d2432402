// CPU reference: rotary position embeddings (default, linear, llama3, yarn), matching transformers'
// ROPE_INIT_FUNCTIONS and apply_rotary_pos_emb.
#include <algorithm>
#include <cmath>
#include <vector>
#include <numbers>

#include "graft/cpu/ops.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"

namespace graft::cpu {
namespace {
template <bool kInterleaved>
void rope_apply(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim) {
  GRAFT_CHECK(x.dtype() == DType::F32 && x.ndim() == 3 && x.is_contiguous(), "rope: x {} must be contiguous f32 [T, heads, head_dim]",
              x.describe());
  const int64_t T = x.size(0), Hn = x.size(1), D = x.size(2);
  GRAFT_CHECK(static_cast<int64_t>(positions.size()) == T, "rope: {} positions for {} tokens", positions.size(), T);
  GRAFT_CHECK(rot_dim <= D && rot_dim % 2 == 0 && static_cast<size_t>(rot_dim / 2) == table.inv_freq.size(),
              "rope: rotary dim {} does not fit head_dim {} / table of {} frequencies", rot_dim, D, table.inv_freq.size());
  const int half = rot_dim / 2;
  float* xp = x.data<float>();
  parallel_for(T, graft::parallel_worth(T * Hn * rot_dim * 4), [&](int64_t t) {
    std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
    for (int i = 0; i < half; ++i) {
      // transformers: freqs = inv_freq (f32) * position (f32), cos/sin in f32, times attention_scaling.
      const float f = table.inv_freq[static_cast<size_t>(i)] * static_cast<float>(positions[static_cast<size_t>(t)]);
      c[static_cast<size_t>(i)] = std::cos(f) * table.attention_scaling;
      s[static_cast<size_t>(i)] = std::sin(f) * table.attention_scaling;
    }
    for (int64_t h = 0; h < Hn; ++h) {
      float* v = xp + (t * Hn + h) * D;
      for (int i = 0; i < half; ++i) {
        const int a = kInterleaved ? 2 * i : i, b = kInterleaved ? 2 * i + 1 : i + half;
        const float x1 = v[a], x2 = v[b];
        v[a] = x1 * c[static_cast<size_t>(i)] - x2 * s[static_cast<size_t>(i)];
        v[b] = x2 * c[static_cast<size_t>(i)] + x1 * s[static_cast<size_t>(i)];
      }
    }
  });
}
}  // namespace

void rope_rotate_half(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim) {
  rope_apply<false>(x, positions, table, rot_dim);
}
void rope_interleaved(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim) {
  rope_apply<true>(x, positions, table, rot_dim);
}

}  // namespace graft::cpu
