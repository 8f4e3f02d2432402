// AdamW (decoupled weight decay, fp32 moments), global-norm gradient clipping and learning-rate
// schedules (constant / linear / cosine with warmup), matching torch.optim.AdamW and transformers'
// get_{constant,linear,cosine}_schedule_with_warmup.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graft/tensor.hpp"

namespace graft::train {

struct AdamWConfig {
  double lr = 2e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// One parameter tensor with its gradient and moments (all f32, same shape).
struct ParamRef {
  Tensor* value;
  Tensor* grad;
};

class AdamW {
 public:
  explicit AdamW(AdamWConfig c) : c_(c) {}
  // Registers parameters (in a fixed order: the order is part of checkpoints).
  void add(ParamRef p);
  // One step with learning rate `lr` (the schedule's value): for each parameter
  //   p -= lr·wd·p;  m = β1 m + (1−β1) g;  v = β2 v + (1−β2) g²;
  //   p -= lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + eps)
  void step(double lr);
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  std::vector<Tensor>& m() { return m_; }
  std::vector<Tensor>& v() { return v_; }
  const std::vector<ParamRef>& params() const { return params_; }

 private:
  AdamWConfig c_;
  std::vector<ParamRef> params_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// Scales all gradients so their global L2 norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
// coef = max_norm / (norm + 1e-6), applied when < 1). Returns the norm before clipping.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm);
// Σ g² of one gradient tensor, in double, element order. The global norm is the sum of these per
// tensor in optimizer order, so ranks that hold different tensors (expert parallel) can add the same
// per-tensor values in the same order and clip exactly like one process.
double grad_sq_sum(const Tensor& grad);
// clip_grad_norm with the global Σ g² given (expert parallel: over every rank's tensors); scales
// `params` (this rank's) and returns the norm.
double clip_grad_norm_given(const std::vector<ParamRef>& params, double max_norm, double total_sq);

enum class Schedule { Constant, Linear, Cosine };
Schedule parse_schedule(const std::string& name);  // throws naming the valid choices
// Learning rate at `step` (0-based, the step about to be taken) of `total` steps with `warmup` steps.
double lr_at(Schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total);

}  // namespace graft::train
