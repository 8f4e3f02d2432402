// RoPE frequency tables (default, linear, llama3, yarn), transcribing transformers' ROPE_INIT_FUNCTIONS.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <vector>

#include "graft/backend/ops_desc.hpp"
#include "graft/error.hpp"

namespace graft::ops {

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
    case RopeKind::Dynamic:
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

RopeTable rope_table_dynamic(const RopeParams& p, int64_t seq_len) {
  RopeParams q = p;
  q.kind = RopeKind::Default;
  if (static_cast<double>(seq_len) > p.original_max_position) {
    const double dim = p.rot_dim;
    q.theta = p.theta * std::pow((p.factor * static_cast<double>(seq_len) / p.original_max_position) - (p.factor - 1.0),
                                 dim / (dim - 2.0));
  }
  return rope_table(q);
}

}  // namespace graft::ops
