// The Backend interface: the ops model code calls, implemented by kernels/cpu (the Eigen reference)
// and kernels/cuda. Model code is backend-neutral: it owns weights and activations as Tensors and
// calls these ops; it never touches a device API itself.
//
// Conventions: activations are contiguous row-major; token-major 2-d [T, features] unless stated.
// Outputs are overwritten (`=`) unless the op name ends in `_acc` (`+=`).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graft/backend/ops_desc.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"
#include "graft/tensor.hpp"

namespace graft {

// A frozen base projection y = x·Wᵀ (+ b), stored dense or NF4.
struct LinearWeight {
  int64_t out = 0, in = 0;
  Tensor dense;                                      // [out, in] (backend compute dtype) or undefined
  std::shared_ptr<const nf4::QuantizedWeight> nf4;   // [out, in] NF4 or null
  Tensor bias;                                       // [out] or undefined
  // [out, in] 8-bit or null: only the inference-only lm_head (LmHeadDtype::Q8); CPU backend only, never trained.
  std::shared_ptr<const q8::QuantizedWeight> q8;
  // [out, in] 6-bit or null: likewise, for LmHeadDtype::Q6.
  std::shared_ptr<const q6::QuantizedWeight> q6;
  bool defined() const {
    return dense.defined() && dense.numel() > 0 ? true : nf4 != nullptr || q8 != nullptr || q6 != nullptr;
  }
  bool quantized() const { return nf4 != nullptr; }
  size_t bytes() const;
};

// One adapter's factors for one module: y += scale · (x·Aᵀ)·Bᵀ.
struct LoraFactors {
  Tensor a;  // [r, in]
  Tensor b;  // [out, r]
  float scale = 1.0f;
  int64_t rank() const { return a.defined() && a.ndim() == 2 ? a.size(0) : 0; }
};

// Which adapter each row uses, for one module: slots[row_slot[t]] (row_slot[t] < 0: base only).
// Adapters of different ranks share a batch; nothing is padded.
struct LoraBatch {
  std::span<const LoraFactors* const> slots;
  std::span<const int32_t> row_slot;  // [T]
  bool empty() const { return slots.empty(); }
};

// The experts of one MoE layer. Expert e: out = down(silu(gate(x)) · up(x)).
struct ExpertWeights {
  std::vector<LinearWeight> gate, up, down;  // [E] each; gate/up [I, H], down [H, I]
  int64_t num_experts() const { return static_cast<int64_t>(gate.size()); }
};
// Per-expert LoRA for one layer: expert e of the adapter in slot s is at [s][e] (null = none).
struct ExpertLora {
  std::vector<std::vector<const LoraFactors*>> gate, up, down;  // [slots][E]
  // Expert e's factors in every slot (null where that slot's adapter has none): the LoraBatch slot lists
  // of the rows routed to e.
  struct Slots {
    std::vector<const LoraFactors*> gate, up, down;  // [slots]
  };
  Slots of_expert(int64_t e) const {
    Slots r;
    const auto at = [e](const std::vector<const LoraFactors*>& v) { return v.empty() ? nullptr : v[static_cast<size_t>(e)]; };
    for (size_t s = 0; s < gate.size(); ++s) {
      r.gate.push_back(at(gate[s]));
      r.up.push_back(at(up[s]));
      r.down.push_back(at(down[s]));
    }
    return r;
  }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual Tensor empty(const Dims& shape, DType dtype) = 0;

  // ---------------------------------------------------------------- memory and transfers
  // The dtype activations are computed in: F32 on the CPU, BF16 on CUDA. Model code allocates its
  // activations with it; weights stay in their file/quant formats and the backend caches device copies.
  virtual DType activation_dtype() const = 0;
  // A contiguous copy of `t` (host or this backend's device, any float dtype or I32) on this
  // backend's device, converted to `dtype`. May share storage when `t` is already contiguous there in `dtype`.
  virtual Tensor to_device(const Tensor& t, DType dtype) = 0;
  // A contiguous host copy: float dtypes become F32, integer dtypes keep theirs. Waits for the
  // work that produces `t`.
  virtual Tensor to_host(const Tensor& t) = 0;
  // Waits until every op queued on this backend has finished (no-op on the CPU).
  virtual void synchronize() = 0;

  // y = x·Wᵀ (+b) + Σ LoRA per row.  x [T, in] -> y [T, out] (=)
  virtual void linear(const Tensor& x, const LinearWeight& w, const LoraBatch& lora, Tensor& y) = 0;
  // y = x / rms(x) · w over the last dim.  x [..., H], w [H] -> y like x (=); y may alias x
  virtual void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) = 0;
  // out = silu(gate) · up.  [T, I] (=)
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // out[t] = table[ids[t]].  table [V, H] -> out [T, H] (=)
  virtual void embedding(std::span<const int32_t> ids, const Tensor& table, Tensor& out) = 0;
  // In-place RoPE on the first rot_dim dims of each head.  x [T, heads, head_dim]
  virtual void rope(Tensor& x, std::span<const int32_t> positions, const ops::RopeTable& table, int rot_dim,
                    bool interleaved) = 0;
  // q [T, Hq, D], k [S, Hkv, D], v [S, Hkv, Dv] -> out [T, Hq, Dv] (=)
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
                         std::span<const int32_t> k_pos, const ops::AttentionMask& mask, float scale, Tensor& out) = 0;
  // DeepSeek MLA in the absorbed form over the latent cache: q_nope [T, H, dn], q_pe [T, H, dr],
  // c [S, kv_lora_rank], k_pe [S, dr], kv_b [H·(dn+dv), kv_lora_rank] -> out [T, H, dv] (=)
  virtual void mla_attention(const Tensor& q_nope, const Tensor& q_pe, const Tensor& c, const Tensor& k_pe,
                             const LinearWeight& kv_b, int64_t v_head_dim, std::span<const int32_t> q_pos,
                             std::span<const int32_t> k_pos, const ops::AttentionMask& mask, float scale,
                             Tensor& out) = 0;
  // logits [T, E] -> ids [T, k] i32, weights [T, k] f32 (=)
  virtual void moe_route(const Tensor& logits, const ops::RouterParams& p, Tensor& ids, Tensor& weights) = 0;
  // Routed experts with SwiGLU: out[t] = Σ_j w[t,j] · expert_{ids[t,j]}(x_in[t, j]) where x_in is x,
  // or x · w[t,j] when `scale_input` (Llama 4 scales the expert input, not its output).
  // x [T, H], ids/weights [T, k] -> out [T, H] (=). lora may be null; row_slot [T] picks its slot.
  virtual void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const ExpertWeights& experts,
                           const ExpertLora* lora, std::span<const int32_t> row_slot, bool scale_input,
                           Tensor& out) = 0;
  // ---------------------------------------------------------------- backward (training step)
  // Gradients of the forward ops above, in activation_dtype() (LoRA dA/dB: fp32). Inputs are the
  // forward's inputs (saved activations).
  // Backward of y = x·Wᵀ (+b) + s·((x⊙m)·Aᵀ)·Bᵀ with W frozen (dense or NF4: dx uses dequantized W) and
  // one optional LoRA. x [T, in], dy [T, out] -> dx [T, in] (=); with lora: da [r, in], db [out, r] (+=).
  // lora_mask [T, in]: the LoRA input's dropout scales (0 or 1/(1-p)), undefined = no dropout.
  virtual void linear_bwd(const Tensor& x, const Tensor& dy, const LinearWeight& w, const LoraFactors* lora,
                          const Tensor& lora_mask, Tensor& dx, Tensor* da, Tensor* db) = 0;
  // dx of y = rmsnorm(x, w).  x, dy [..., H], w [H] -> dx like x (=). dw is not produced (frozen).
  virtual void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& dy, float eps, Tensor& dx) = 0;
  // dg, du of out = silu(gate)·up.  gate, up, dout, dg, du [T, I] (=)
  virtual void swiglu_bwd(const Tensor& gate, const Tensor& up, const Tensor& dout, Tensor& dgate, Tensor& dup) = 0;
  // In-place transpose of `rope` (scaling·Rᵀ) on the first rot_dim dims.  dx [T, heads, head_dim]
  virtual void rope_bwd(Tensor& dx, std::span<const int32_t> positions, const ops::RopeTable& table, int rot_dim,
                        bool interleaved) = 0;
  // Backward of `attention` (P recomputed, no saved lse). q, k, v, dout as in the forward ->
  // dq [T, Hq, D], dk [S, Hkv, D], dv [S, Hkv, Dv] (=). Rows with no visible key get zero gradients.
  virtual void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                             std::span<const int32_t> q_pos, std::span<const int32_t> k_pos,
                             const ops::AttentionMask& mask, float scale, Tensor& dq, Tensor& dk, Tensor& dv) = 0;
  // Fused cross-entropy: returns mean over rows with label != -100 of −log softmax(logits)[label];
  // dlogits (=) = (softmax − onehot)/n_valid (zeros for ignored rows), or skipped when null.
  // logits [T, V], labels [T] -> dlogits [T, V]
  virtual double cross_entropy(const Tensor& logits, std::span<const int32_t> labels, Tensor* dlogits) = 0;

  // y += x (same shape)
  virtual void add_acc(const Tensor& x, Tensor& y) = 0;
  // y *= s (scalar) or, with a [T] or [T,1] tensor, row-wise
  virtual void scale_rows(Tensor& y, const Tensor& row_scale) = 0;

  // ---------------------------------------------------------------- training step (fp32)
  // What the training step (train/src/backward) needs beyond the ops above, so that it never reads
  // activation data itself. Row lists (`rows`) are host metadata, like embedding's ids: a device
  // backend uploads them. Empty `rows` means the identity 0..n−1. An undefined `row_scale` means 1.
  // Defaults throw "backend '<name>' has no <op>" (core/src/backend/train_step_defaults.cpp), so a
  // backend can gain them one at a time; the CPU backend implements all of them.
  // y[:] = v.   y any shape, f32
  virtual void fill(Tensor& y, float v);
  // y = x ⊙ m elementwise (same numel); y may alias x.
  virtual void mul(const Tensor& x, const Tensor& m, Tensor& y);
  // y += f.scale · (x·Aᵀ)·Bᵀ: one LoRA on every row (the training step's trainable adapter).
  // x [T, in], A [r, in], B [out, r] -> y [T, out] (+=)
  virtual void lora_acc(const Tensor& x, const LoraFactors& f, Tensor& y);
  // Dropout scales out[i, c] = keep(key, rows[i], c) ? 1/(1−p) : 0 from the counter-based generator of
  // graft/backend/dropout_hash.hpp (bit-identical on every device).   rows [n] -> out [n, cols] f32 (=)
  virtual void dropout_mask(uint64_t key, std::span<const int32_t> rows, double p, Tensor& out);
  // out[i] = x[rows[i]] · row_scale[i].   x [R, H], rows [n], row_scale [n] (or [n, 1]) -> out [n, H] (=)
  virtual void gather_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale, Tensor& out);
  // out[rows[i]] += x[i] · row_scale[i], for i = 0, 1, .. in order (rows may repeat; per output row
  // the sum is taken in increasing i).   x [n, H], rows [n], row_scale [n] (or [n, 1]) -> out [R, H] (+=)
  virtual void scatter_add_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& row_scale,
                                Tensor& out);
  // out[i] = Σ_h x[rows[i], h] · y[i, h] (accumulated in double on the CPU).   x [R, H], y [n, H] -> out [n] (=)
  virtual void rows_dot(const Tensor& x, std::span<const int32_t> rows, const Tensor& y, Tensor& out);
  // dst[r, dst_col + j] = src[r, src_col + j] for j < width, every row r (rows = numel / last dim;
  // both tensors viewed as 2-d [R, C] over their last dim).   src [R, Cs], dst [R, Cd]
  virtual void copy_cols(const Tensor& src, int64_t src_col, int64_t width, Tensor& dst, int64_t dst_col);
  // out[rows[i]] = x[i] (=), rows distinct (KV-cache writes, per-row overrides).   x [n, C], rows [n] -> out [R, C]
  virtual void set_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out);
  // y = 1 / (1 + exp(−x)) elementwise; y may alias x.
  virtual void sigmoid(const Tensor& x, Tensor& y);
  // dx = dy · y · (1 − y), y the sigmoid's output (same numel); dx may alias dy.
  virtual void sigmoid_bwd(const Tensor& y, const Tensor& dy, Tensor& dx);
  // The router's backward for a fixed selection: dlogits from the combine weights' gradient, for every
  // RouterKind (the selection-only correction bias gets no gradient).
  // logits [T, E], ids [T, k] i32, dweights [T, k] -> dlogits [T, E] (=)
  virtual void moe_route_bwd(const Tensor& logits, const ops::RouterParams& p, const Tensor& ids,
                             const Tensor& dweights, Tensor& dlogits);
  // Expert-major plan of a routing: rows sorted by (expert, token, slot). Host metadata (the step sizes
  // its per-expert tensors from the counts): a device backend copies ids [T, k] i32 back to build it.
  virtual ops::MoePermutation moe_permute_plan(const Tensor& ids, int num_experts);

 protected:
  // Throws graft::Error: this backend does not implement `op` (a training-step op) yet.
  [[noreturn]] void missing(const char* op) const;
};

// `t` as a contiguous host F32 tensor: `t` itself (made contiguous) when it already is host F32, else a
// host copy (Backend::to_host; float dtypes become F32). For host-side exchanges (expert parallel).
Tensor host_f32(Backend& be, const Tensor& t);

}  // namespace graft
