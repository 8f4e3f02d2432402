// Trainable LoRA parameters and the loss/gradient of a model with them (CPU, fp32).
//
// The base model is frozen: only the LoRA factors A [r, in] and B [out, r] of each adapted module
// get gradients. forward_backward() runs the decoder with saved activations, the token-level
// cross-entropy (labels -100 are ignored), and the hand-written backward of every layer, accumulating
// (`+=`) dA and dB so that gradient accumulation over micro-batches is a loop. It computes what
// Model::forward computes (same FamilySpec), for every supported family:
//  * attention: GQA with bias / q-k RMSNorm (qwen2, qwen3), rotate-half or interleaved RoPE, sliding
//    and chunked masks, Llama 4 NoPE layers with attention temperature and the weightless L2 q/k norm;
//    DeepSeek MLA (q_a/q_a_norm/q_b or plain q, kv_a_proj_with_mqa, kv_a_norm, kv_b, RoPE on the
//    rope dims, yarn softmax scale) in the naive (expanded) form;
//  * MLPs: dense SwiGLU; MoE with every router kind (softmax top-k ± renorm, DeepSeek-V2 greedy /
//    group-limited greedy, DeepSeek-V3 sigmoid + correction bias + group-limited + routed scaling,
//    Llama 4 top-k sigmoid scaling the expert input), per-expert LoRA, the router's gradient path
//    into dX, shared experts (Qwen2-MoE's sigmoid-gated one, DeepSeek's and Llama 4's ungated ones).
// Options: LoRA dropout (lora_dropout.hpp) and per-layer activation checkpointing (only each layer's
// input is kept; the layer is recomputed in the backward, bit-identically).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <tuple>
#include <functional>
#include <span>
#include <utility>

#include "graft/model/model.hpp"

namespace graft::train {

struct LoraParam {
  LoraFactors f;   // a [r, in], b [out, r], scale
  Tensor da, db;   // gradients, same shapes (+=)
};

// A fully trained weight (PEFT modules_to_save: embed_tokens, lm_head): an fp32 master copy of the
// base's weight and its gradient (modules_to_save.cpp).
struct FullParam {
  LinearWeight w;  // w.dense [vocab, hidden] f32 (the embedding table, or lm_head's weight)
  Tensor grad;     // [vocab, hidden] (+=)
};

class TrainableAdapter final : public model::LoraSource {
 public:
  // modules_to_save: trainable fp32 copies of the base's embedding table [vocab, hidden] / lm_head
  // (dequantized when NF4). With tied embeddings the two copies start equal and train separately,
  // as PEFT's ModulesToSaveWrapper does.
  FullParam& add_embed_tokens(const Tensor& base_embedding);
  FullParam& add_lm_head(const LinearWeight& base_lm_head);
  FullParam* embed_param() { return embed_.w.defined() ? &embed_ : nullptr; }
  FullParam* lm_head_param() { return lm_head_.w.defined() ? &lm_head_ : nullptr; }
  const Tensor* embed_tokens() const override { return embed_.w.defined() ? &embed_.w.dense : nullptr; }
  const LinearWeight* lm_head() const override { return lm_head_.w.defined() ? &lm_head_.w : nullptr; }
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
  FullParam embed_, lm_head_;
};

struct StepOptions {
  // Keep only each layer's input during the forward and recompute the layer's activations in the
  // backward. Gradients are bit-identical either way; the saved-activation memory is lower.
  bool gradient_checkpointing = false;
  // LoRA dropout probability in [0, 1) and the mask stream: masks depend on (seed, draw, layer,
  // module, token, column) only (lora_dropout.hpp); the trainer passes draw = the micro-batch's
  // global index, so --resume and checkpoint recomputation see the same masks.
  double lora_dropout = 0.0;
  uint64_t dropout_seed = 0, dropout_draw = 0;
  // The device the step's ops run on (forward and backward go through it); null = the CPU backend.
  Backend* backend = nullptr;
  // Expert parallel: this rank's experts get gradients from every group member's rows, one group of
  // rows (one sequence of one rank) at a time. Called after each group with the expert's LoRA
  // parameter; the trainer moves its gradient into the step's double-precision sum and zeroes it, so
  // the sum is the single-process one. Null: the gradients accumulate in the parameter.
  std::function<void(LoraParam&)> flush_expert_grads;
  // Called during the backward when gradients become final in this call, so that their reduction can
  // start while the backward goes on (GradientAccumulator::ready): `stage` = num_layers after the lm_head
  // (modules_to_save lm_head), then each layer's index after its backward, then -1 after the embedding.
  std::function<void(int stage)> on_gradients_ready;
};
struct StepStats {
  // Peak bytes held in saved activations (per-layer tensors kept for the backward, including the
  // layer inputs kept by checkpointing and the one layer recomputed at a time), measured by the code.
  size_t peak_saved_activation_bytes = 0;
};

// Loss (mean CE over labelled tokens) of `ids` with next-token `labels` (same length; -100 = ignore),
// and its gradient accumulated into `adapter`. `segments`/`positions` may describe packed samples.
double forward_backward(const model::Model& m, std::span<const int32_t> ids, std::span<const int32_t> labels,
                        TrainableAdapter& adapter, std::span<const int32_t> positions = {},
                        std::span<const int32_t> segments = {}, const StepOptions& options = {},
                        StepStats* stats = nullptr);

}  // namespace graft::train
