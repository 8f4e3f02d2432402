// Internal to the training forward/backward (train/src/backward/): the LoRA-aware linear with its
// backward, the per-step context every layer piece reads, and the saved activations of one decoder
// layer. One file per piece: lora_linear.cpp, attention_backward.cpp (GQA, Llama 4),
// mla_backward.cpp (DeepSeek), router_backward.cpp, moe_backward.cpp, layer_backward.cpp
// (one decoder layer) and forward_backward.cpp (the model, loss, activation checkpointing).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "graft/train/lora_train.hpp"
#include "model/family_spec.hpp"

namespace graft::train::detail {

// Activations are tensors the step's backend allocates in its compute dtype (be.activation_dtype(): f32
// on the CPU, bf16 on CUDA); the step never reads their data on the host. Quantities that are fp32 on
// every backend (dropout masks, router combine weights and their gradients) use f32/zeros. Host-side
// values are metadata only: token ids, labels, positions, segment ids, the MoE plan (row lists per
// expert) and small constants uploaded with be.to_device.
Tensor act(Backend& be, int64_t rows, int64_t cols);       // [rows, cols] activation, uninitialised
Tensor act_zeros(Backend& be, int64_t rows, int64_t cols); // [rows, cols] activation = 0
Tensor f32(Backend& be, int64_t rows, int64_t cols);       // [rows, cols] fp32, uninitialised
Tensor zeros(Backend& be, int64_t rows, int64_t cols);     // [rows, cols] fp32 = 0
inline size_t bytes_of(const Tensor& t) { return t.defined() ? static_cast<size_t>(t.numel()) * 4 : 0; }

// One projection as the trainer sees it: the frozen base weight, the trainable LoRA (or none), and
// dropout on the LoRA branch input (rows = the token index of each input row, for the mask).
struct Lin {
  const LinearWeight* w = nullptr;
  LoraParam* p = nullptr;  // null: base only
  double dropout = 0.0;
  uint64_t key = 0;                     // dropout stream (lora_dropout.hpp)
  std::span<const int32_t> rows;        // [n] or empty (= 0..n-1)
};
// y = x·Wᵀ (+ bias) + s·(dropout(x)·Aᵀ)·Bᵀ on Backend::linear + lora_acc (mask: Backend::dropout_mask).
//   x [n, in]  ->  y [n, out]
Tensor lin_fwd(Backend& be, const Tensor& x, const Lin& l);
// dx [n, in] (=); with LoRA, dA / dB (+=), on Backend::linear_bwd. The dropout mask is redrawn from its key.
//   x [n, in], dy [n, out]
Tensor lin_bwd(Backend& be, const Tensor& x, const Tensor& dy, const Lin& l);

// A frozen dense projection without bias as a LinearWeight.   w [out, in]
LinearWeight dense_weight(const Tensor& w);

// What every piece of one forward/backward reads.
struct Ctx {
  const model::Model& m;
  const config::ModelConfig& cfg;
  model::FamilySpec spec;
  TrainableAdapter& ad;
  std::span<const int32_t> pos;  // [T]
  std::span<const int32_t> seg;  // [T] or empty
  const ops::RopeTable& rt;
  int64_t T;
  float eps;
  StepOptions opt;
  Backend& be;  // every op of the step runs here

  Lin lin(int layer, const LinearWeight& w, model::Module mod) const;
  Lin expert_lin(int layer, const LinearWeight& w, model::ExpertProj pj, int expert, std::span<const int32_t> rows) const;
  // The same for rows of another rank's sequence (expert parallel): that sequence's dropout draw.
  Lin expert_lin(int layer, const LinearWeight& w, model::ExpertProj pj, int expert, std::span<const int32_t> rows,
                 uint64_t draw) const;
  ops::AttentionMask mask(const config::LayerKind& k) const;
  // RoPE on the first rot_dim dims of each head, in the family's layout.   x [T, heads, D]
  void rope(Tensor& x, int rot_dim) const;
  void rope_bwd(Tensor& dx, int rot_dim) const;
};

// ---------------------------------------------------------------- saved activations
struct AttnActs {  // standard (GQA) attention
  Tensor q0, k0;   // projections before the q/k RMSNorm (Qwen3) [T, h, D]
  Tensor qr, kr;   // after RoPE, before the L2 norm (Llama 4 RoPE layers) [T, h, D]
  Tensor q, k, v;  // attention inputs [T, nh, D], [T, nkv, D] x2
  Tensor out;      // attention output [T, nh, D]
  size_t bytes() const;
};
struct MlaActs {   // DeepSeek MLA
  Tensor qa, qa_n;   // q_a output and its RMSNorm [T, q_lora_rank] (q_lora models)
  Tensor c, c_n;     // latent before / after kv_a_norm [T, kv_lora_rank]
  Tensor q, k, v;    // expanded attention inputs [T, nh, dq], [T, nh, dq], [T, nh, dv]
  Tensor out;        // attention output [T, nh, dv]
  size_t bytes() const;
};
struct ExpertActs {  // one routed expert; rows = the (token, slot) pairs routed to it
  std::vector<int32_t> flat;  // token·k + slot of each row (host metadata from the MoE plan)
  std::vector<int32_t> tok;   // token of each row (host metadata)
  Tensor w;                   // the combine weight of each row [n]
  Tensor x, g, u, a, y;       // input (scaled for Llama 4) [n, H], gate/up/act [n, I], output [n, H]
};
// Expert parallel, owner side: the rows one rank sent for one of this rank's experts.
struct RemoteExpertActs {
  int expert = 0, origin = 0;  // expert id, the rank whose sequence the rows belong to
  uint64_t draw = 0;           // that sequence's dropout draw
  ExpertActs acts;             // tok = the origin's token of each row; flat unused
};
struct MoeActs {
  Tensor logits, ids, w;  // [T, E], [T, k] i32, [T, k]
  std::vector<ExpertActs> experts;
  // Expert parallel (moe_sharded.cpp): `experts` holds, per expert, this rank's rows (flat, tok, w) and
  // the outputs that came back (y); x/g/u/a stay on the owner. Owner side: the groups of rows this rank
  // computed for the group, in arrival order.
  std::vector<RemoteExpertActs> remote;
  Tensor sg, su, sa, sy, sgate;  // shared expert: [T, SI] x3, [T, H], Qwen2-MoE gate sigmoid [T, 1]
  size_t bytes() const;
};
struct LayerActs {
  Tensor h_in, x1, h_mid, x2;  // layer input, input norm, after attention, post-attention norm [T, H]
  AttnActs attn;
  MlaActs mla;
  Tensor g, u, a;  // dense MLP [T, I] x3
  MoeActs moe;
  size_t bytes() const;  // everything but h_in
};

// ---------------------------------------------------------------- pieces (forward saves, backward reads)
// Attention sublayer output [T, H] from the input-normed x1 [T, H]; backward returns dx1 (=).
Tensor attention_fwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x1, AttnActs& A);
Tensor attention_bwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x1, const Tensor& dout, AttnActs& A);
Tensor mla_fwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x1, MlaActs& A);
Tensor mla_bwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x1, const Tensor& dout, MlaActs& A);
// MoE block output [T, H] from x2 [T, H]; backward returns dx2 (=).
Tensor moe_fwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x2, MoeActs& A);
Tensor moe_bwd(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x2, const Tensor& dout, MoeActs& A);
// The rows of expert e in a routing plan, as the MoE forward gathers them: X.flat (token·k + slot) and
// X.tok of each row, X.w [n, 1] their combine weights (fp32) from w_flat [T·k, 1]; returns the expert's
// input rows [n, H] from x [T, H] (scaled by w for Llama 4's input-side weighting).
Tensor expert_rows(const Ctx& c, const ops::MoePermutation& plan, int64_t e, int k, const Tensor& x, const Tensor& w_flat,
                   ExpertActs& X);
// The routed experts of a MoE block sharded over the model's expert group (expert parallel): rows go to
// their expert's rank and come back (model::ExpertParallel::exchange). Forward: out [T, H] (=) =
// Σ (w or 1)·expert(x or w·x) over the routing in A (router_fwd already ran). Backward: dx [T, H] (=) of
// the routed part and dw [T·k, 1] (=, fp32) for router_bwd; this rank's experts' LoRA gradients (+=) get
// every group member's rows. Collective over the group, once per call.
Tensor moe_routed_fwd_sharded(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x2, MoeActs& A);
Tensor moe_routed_bwd_sharded(const Ctx& c, int layer, const model::LayerWeights& L, const Tensor& x2, const Tensor& dout,
                              MoeActs& A, Tensor& dw);
// Router: selection and combine weights exactly as Model::forward (Backend::moe_route: logits, ids, w);
// backward: dx2 [T, H] (=) through the frozen router from dw [T, k], for that fixed selection.
ops::RouterParams router_params(const Ctx& c, const model::LayerWeights& L);
void router_fwd(const Ctx& c, const model::LayerWeights& L, const Tensor& x2, MoeActs& A);
Tensor router_bwd(const Ctx& c, const model::LayerWeights& L, const Tensor& x2, const MoeActs& A, const Tensor& dw);
// One decoder layer: h_out = h_in + attn(norm(h_in)) + mlp(norm(·)); backward maps dh_out to dh_in.
Tensor layer_fwd(const Ctx& c, int layer, const Tensor& h_in, LayerActs& A);
// dh is updated in place and returned (the caller replaces its dh with the result).
Tensor layer_bwd(const Ctx& c, int layer, Tensor dh, LayerActs& A);

}  // namespace graft::train::detail
