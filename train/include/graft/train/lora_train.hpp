// Trainable LoRA parameters and the loss/gradient of a model with them (CPU, fp32).
//
// The base model is frozen: only the LoRA factors A [r, in] and B [out, r] of each adapted module
// get gradients. forward_backward() runs the decoder with saved activations, the token-level
// cross-entropy (labels -100 are ignored), and the hand-written backward of every layer
// (final norm, attention with q/k-norm and RoPE, dense SwiGLU MLP, RMSNorms, residuals), accumulating
// (`+=`) dA and dB so that gradient accumulation over micro-batches is a loop.
// Supported: dense decoder layers with standard attention (llama, qwen2, qwen3, and the attention of
// qwen2_moe, qwen3_moe, mixtral) and MoE layers with softmax top-k routers (± renormalisation), routed
// experts with per-expert LoRA, the router's gradient path into dX, and Qwen2-MoE's gated shared
// expert. MLA (DeepSeek), Llama 4 and the sigmoid/group-limited routers throw a clear error.
#pragma once

#include <map>
#include <random>
#include <tuple>
#include <span>
#include <utility>

#include "graft/model/model.hpp"

namespace graft::train {

struct LoraParam {
  LoraFactors f;   // a [r, in], b [out, r], scale
  Tensor da, db;   // gradients, same shapes (+=)
};

class TrainableAdapter final : public model::LoraSource {
 public:
  // Adds a module with PEFT's init: A kaiming-uniform(a=√5) (bound 1/sqrt(in)), B = 0, scale alpha/r.
  LoraParam& add(int layer, model::Module m, int64_t in, int64_t out, int64_t rank, float alpha, std::mt19937_64& rng);
  const LoraFactors* find(int layer, model::Module m) const override;
  LoraParam& add_expert(int layer, model::ExpertProj p, int expert, int64_t in, int64_t out, int64_t rank, float alpha,
                        std::mt19937_64& rng);
  const LoraFactors* find_expert(int layer, model::ExpertProj p, int expert) const override;
  LoraParam* param(int layer, model::Module m);
  LoraParam* expert_param(int layer, model::ExpertProj p, int expert);
  std::map<std::pair<int, model::Module>, LoraParam>& params() { return params_; }
  std::map<std::tuple<int, model::ExpertProj, int>, LoraParam>& expert_params() { return experts_; }
  void zero_grad();

 private:
  std::map<std::pair<int, model::Module>, LoraParam> params_;
  std::map<std::tuple<int, model::ExpertProj, int>, LoraParam> experts_;
};

// Loss (mean CE over labelled tokens) of `ids` with next-token `labels` (same length; -100 = ignore),
// and its gradient accumulated into `adapter`. `segments`/`positions` may describe packed samples.
double forward_backward(const model::Model& m, std::span<const int32_t> ids, std::span<const int32_t> labels,
                        TrainableAdapter& adapter, std::span<const int32_t> positions = {},
                        std::span<const int32_t> segments = {});

}  // namespace graft::train
