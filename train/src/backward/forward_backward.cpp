// forward_backward (lora_train.hpp): embeddings -> decoder layers -> final norm -> lm_head ->
// cross-entropy, then the backward layer by layer. With gradient checkpointing only each layer's
// input is kept during the forward; the backward recomputes the layer (same code, same inputs, same
// dropout masks: bit-identical activations) right before its backward.
#include <algorithm>
#include <numeric>

#include "backward_internal.hpp"
#include "modules_to_save.hpp"
#include "graft/backend/make_backend.hpp"

namespace graft::train {

double forward_backward(const model::Model& m, std::span<const int32_t> ids, std::span<const int32_t> labels,
                        TrainableAdapter& ad, std::span<const int32_t> positions, std::span<const int32_t> segments,
                        const StepOptions& opt, StepStats* stats) {
  using namespace detail;
  const auto& cfg = m.config();
  const int64_t T = static_cast<int64_t>(ids.size()), H = cfg.hidden_size, V = cfg.vocab_size;
  GRAFT_CHECK(static_cast<int64_t>(labels.size()) == T, "{} labels for {} tokens", labels.size(), T);
  GRAFT_CHECK(positions.empty() || static_cast<int64_t>(positions.size()) == T, "{} positions for {} tokens",
              positions.size(), T);
  GRAFT_CHECK(segments.empty() || static_cast<int64_t>(segments.size()) == T, "{} segment ids for {} tokens",
              segments.size(), T);
  GRAFT_CHECK_FIX(opt.lora_dropout >= 0.0 && opt.lora_dropout < 1.0, "set lora_dropout in [0, 1)",
                  "lora_dropout {} is outside [0, 1)", opt.lora_dropout);
  std::vector<int32_t> pos(positions.begin(), positions.end());
  if (pos.empty()) {
    pos.resize(static_cast<size_t>(T));
    std::iota(pos.begin(), pos.end(), 0);
  }
  // Dynamic NTK RoPE depends on the batch's length exactly as in Model::forward.
  const ops::RopeTable* rt = &m.rope_table();
  ops::RopeTable dyn;
  const auto& rs = cfg.rope_scaling;
  if (rs.type == "dynamic") {
    ops::RopeParams p;
    p.kind = ops::RopeKind::Dynamic;
    p.theta = cfg.rope_theta;
    p.rot_dim = static_cast<int>(cfg.is_mla ? cfg.mla.qk_rope_head_dim : cfg.head_dim);
    p.factor = rs.factor;
    p.original_max_position = rs.original_max_position_embeddings > 0 ? static_cast<double>(rs.original_max_position_embeddings)
                                                                      : static_cast<double>(cfg.max_position_embeddings);
    int64_t seq_len = 0;
    for (int32_t q : pos) seq_len = std::max<int64_t>(seq_len, q + 1);
    if (static_cast<double>(seq_len) > p.original_max_position) {
      dyn = ops::rope_table_dynamic(p, seq_len);
      rt = &dyn;
    }
  }
  // The step's ops run on options.backend; without one, on a CPU backend made here.
  std::unique_ptr<Backend> own;
  Backend* be = opt.backend;
  if (!be) {
    own = make_backend("cpu");
    be = own.get();
  }
  const Ctx c{m, cfg, model::family_spec(cfg), ad, pos, segments, *rt, T, static_cast<float>(cfg.rms_norm_eps), opt, *be};
  const bool ckpt = opt.gradient_checkpointing;
  const int L = static_cast<int>(m.layers().size());

  // ---------------- forward
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  size_t held = 0, peak = 0;  // bytes of saved activations
  Tensor h = act(c.be, T, H);
  c.be.embedding(ids, step_embedding(m, ad), h);  // modules_to_save: the adapter's copy
  for (int l = 0; l < L; ++l) {
    LayerActs& A = acts[static_cast<size_t>(l)];
    Tensor out = layer_fwd(c, l, h, A);
    held += bytes_of(A.h_in);
    peak = std::max(peak, held + A.bytes());
    if (ckpt) {
      Tensor keep = A.h_in;
      A = LayerActs{};
      A.h_in = keep;
    } else {
      held += A.bytes();
    }
    h = out;
  }
  Tensor xf = act(c.be, T, H);
  c.be.rmsnorm(h, m.final_norm(), c.eps, xf);
  const Lin head{&step_lm_head(m, ad)};  // modules_to_save: the adapter's copy
  Tensor logits = lin_fwd(c.be, xf, head);
  Tensor dlogits = act(c.be, T, V);
  const double loss = c.be.cross_entropy(logits, labels, &dlogits);

  // ---------------- backward
  Tensor dxf = lin_bwd(c.be, xf, dlogits, head);
  lm_head_grad(ad, xf, dlogits);
  if (opt.on_gradients_ready) opt.on_gradients_ready(L);
  Tensor dh = act(c.be, T, H);
  c.be.rmsnorm_bwd(h, m.final_norm(), dxf, c.eps, dh);
  for (int l = L - 1; l >= 0; --l) {
    LayerActs& A = acts[static_cast<size_t>(l)];
    if (ckpt) {
      const Tensor h_in = A.h_in;
      layer_fwd(c, l, h_in, A);  // recompute this layer's activations
      peak = std::max(peak, held + A.bytes());
    }
    dh = layer_bwd(c, l, dh, A);
    if (opt.on_gradients_ready) opt.on_gradients_ready(l);
    held -= bytes_of(A.h_in) + (ckpt ? 0 : A.bytes());
    A = LayerActs{};
  }
  embedding_grad(ad, ids, dh);  // dh = d(embedding output)
  if (opt.on_gradients_ready) opt.on_gradients_ready(-1);
  if (stats) stats->peak_saved_activation_bytes = peak;
  return loss;
}

}  // namespace graft::train
