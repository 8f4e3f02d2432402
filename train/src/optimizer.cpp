#include "graft/train/optimizer.hpp"

#include <cmath>
#include <numbers>

#include "graft/error.hpp"

namespace graft::train {

void AdamW::add(ParamRef p) {
  GRAFT_CHECK(p.value && p.grad && p.value->shape() == p.grad->shape() && p.value->dtype() == DType::F32 &&
                  p.grad->dtype() == DType::F32,
              "AdamW: parameter and gradient must be f32 of the same shape");
  params_.push_back(p);
  m_.push_back(Tensor::zeros(p.value->shape(), DType::F32));
  v_.push_back(Tensor::zeros(p.value->shape(), DType::F32));
}

void AdamW::step(double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(c_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(c_.beta2, static_cast<double>(t_));
  const float b1 = static_cast<float>(c_.beta1), b2 = static_cast<float>(c_.beta2);
  const float step_size = static_cast<float>(lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - lr * c_.weight_decay);
  const float eps = static_cast<float>(c_.eps);
  for (size_t i = 0; i < params_.size(); ++i) {
    float* p = params_[i].value->data<float>();
    const float* g = params_[i].grad->data<float>();
    float* m = m_[i].data<float>();
    float* v = v_[i].data<float>();
    const int64_t n = params_[i].value->numel();
    for (int64_t j = 0; j < n; ++j) {
      p[j] *= decay;
      m[j] = b1 * m[j] + (1.0f - b1) * g[j];
      v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
      // torch (single-tensor, non-capturable): denom = sqrt(v)/sqrt(bc2) + eps; p -= step_size·m/denom
      const float denom = std::sqrt(v[j]) / bc2_sqrt + eps;
      p[j] -= step_size * m[j] / denom;
    }
  }
}

double grad_sq_sum(const Tensor& grad) {
  double ss = 0;
  const float* g = grad.data<float>();
  for (int64_t j = 0; j < grad.numel(); ++j) ss += double(g[j]) * g[j];
  return ss;
}

double clip_grad_norm_given(const std::vector<ParamRef>& params, double max_norm, double total_sq) {
  const double norm = std::sqrt(total_sq);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1.0)
      for (const auto& p : params) {
        float* g = p.grad->data<float>();
        for (int64_t j = 0; j < p.grad->numel(); ++j) g[j] = static_cast<float>(g[j] * coef);
      }
  }
  return norm;
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
  double ss = 0;  // per tensor, then summed in order (grad_sq_sum)
  for (const auto& p : params) ss += grad_sq_sum(*p.grad);
  return clip_grad_norm_given(params, max_norm, ss);
}

Schedule parse_schedule(const std::string& n) {
  if (n == "constant") return Schedule::Constant;
  if (n == "linear") return Schedule::Linear;
  if (n == "cosine") return Schedule::Cosine;
  GRAFT_FAIL("use lr_scheduler: constant, linear or cosine", "unknown lr_scheduler '{}'", n);
}

double lr_at(Schedule s, double base, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return base * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  switch (s) {
    case Schedule::Constant:
      return base;
    case Schedule::Linear:
      return base * std::max(0.0, static_cast<double>(total - step) / static_cast<double>(std::max<int64_t>(1, total - warmup)));
    case Schedule::Cosine: {
      const double progress = static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, total - warmup));
      return base * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress)));
    }
  }
  return base;
}

}  // namespace graft::train
