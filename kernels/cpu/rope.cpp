// CPU reference: rotary position embeddings (default, linear, llama3, yarn), matching transformers'
// ROPE_INIT_FUNCTIONS and apply_rotary_pos_emb.
#include <algorithm>
#include <cmath>
#include <vector>
#include <numbers>

#include "graft/cpu/ops.hpp"

namespace graft::cpu {
namespace {
double yarn_get_mscale(double scale, double mscale) { return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }
double yarn_correction_dim(double rotations, double dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (rotations * 2.0 * std::numbers::pi))) / (2.0 * std::log(base));
}
}  // namespace

RopeTable rope_table(const RopeParams& p) {
  GRAFT_CHECK(p.rot_dim > 0 && p.rot_dim % 2 == 0, "rope: rotary dimension {} must be positive and even", p.rot_dim);
  GRAFT_CHECK(p.theta > 0, "rope: rope_theta {} must be positive", p.theta);
  const int half = p.rot_dim / 2;
  const double dim = p.rot_dim;
  RopeTable t;
  t.inv_freq.resize(static_cast<size_t>(half));
  std::vector<double> base(static_cast<size_t>(half));
  // transformers computes base ** (arange(0, dim, 2) / dim) in float32.
  for (int i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(p.rot_dim);
    base[static_cast<size_t>(i)] = 1.0 / static_cast<double>(std::pow(static_cast<float>(p.theta), expo));
  }
  switch (p.kind) {
    case RopeKind::Default:
      break;
    case RopeKind::Linear:
      GRAFT_CHECK(p.factor > 0, "rope: linear scaling factor {} must be positive", p.factor);
      for (auto& f : base) f /= p.factor;
      break;
    case RopeKind::Llama3: {
      GRAFT_CHECK(p.factor > 0 && p.high_freq_factor != p.low_freq_factor,
                  "rope: llama3 scaling needs factor > 0 and high_freq_factor != low_freq_factor");
      const double low_wavelen = p.original_max_position / p.low_freq_factor;
      const double high_wavelen = p.original_max_position / p.high_freq_factor;
      for (auto& f : base) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        double g = wavelen > low_wavelen ? f / p.factor : f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) {
          const double smooth = (p.original_max_position / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor);
          g = (1.0 - smooth) * g / p.factor + smooth * g;
        }
        f = g;
      }
      break;
    }
    case RopeKind::Yarn: {
      GRAFT_CHECK(p.factor > 0, "rope: yarn factor {} must be positive", p.factor);
      double attn = p.attention_factor;
      if (attn == 0.0) {
        attn = (p.mscale != 0.0 && p.mscale_all_dim != 0.0)
                   ? yarn_get_mscale(p.factor, p.mscale) / yarn_get_mscale(p.factor, p.mscale_all_dim)
                   : yarn_get_mscale(p.factor, 1.0);
      }
      t.attention_scaling = static_cast<float>(attn);
      double low = yarn_correction_dim(p.beta_fast, dim, p.theta, p.original_max_position);
      double high = yarn_correction_dim(p.beta_slow, dim, p.theta, p.original_max_position);
      if (p.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, dim - 1);
      if (low == high) high += 0.001;
      for (int i = 0; i < half; ++i) {
        const double extrap = base[static_cast<size_t>(i)];
        const double interp = extrap / p.factor;
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        const double extrap_factor = 1.0 - ramp;
        base[static_cast<size_t>(i)] = interp * (1.0 - extrap_factor) + extrap * extrap_factor;
      }
      break;
    }
  }
  for (int i = 0; i < half; ++i) t.inv_freq[static_cast<size_t>(i)] = static_cast<float>(base[static_cast<size_t>(i)]);
  return t;
}

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
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
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
  }
}
}  // namespace

void rope_rotate_half(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim) {
  rope_apply<false>(x, positions, table, rot_dim);
}
void rope_interleaved(Tensor& x, std::span<const int32_t> positions, const RopeTable& table, int rot_dim) {
  rope_apply<true>(x, positions, table, rot_dim);
}

}  // namespace graft::cpu
