// Forward with saved activations and hand-written backward of the dense decoder (see lora_train.hpp).
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/error.hpp"
#include "graft/train/lora_train.hpp"

namespace graft::train {
namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMat>;
using Map = Eigen::Map<RowMat>;
using model::Module;

Tensor f32(int64_t r, int64_t c) { return Tensor::empty({r, c}, DType::F32); }

struct Lin {
  const LinearWeight* w;
  LoraParam* p;  // null: base only
};

Tensor lin_fwd(const Tensor& x, const Lin& l) {
  Tensor y = f32(x.size(0), l.w->out);
  if (l.w->quantized()) cpu::linear_nf4(x, *l.w->nf4, y);
  else cpu::linear(x, l.w->dense, Tensor(), y);
  if (l.w->bias.defined()) {
    Map Y(y.data<float>(), y.size(0), y.size(1));
    Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(l.w->bias.data<float>(), l.w->out);
  }
  if (l.p) cpu::lora_acc(x, l.p->f.a, l.p->f.b, l.p->f.scale, y);
  return y;
}

// dx (=) and, with LoRA, dA/dB (+=).   x [T, in], dy [T, out]
Tensor lin_bwd(const Tensor& x, const Tensor& dy, const Lin& l) {
  const int64_t T = x.size(0), in = l.w->in, out = l.w->out;
  Tensor dx = f32(T, in);
  Map DX(dx.data<float>(), T, in);
  MapC DY(dy.data<float>(), T, out);
  if (l.w->quantized()) {
    Tensor w = nf4::dequantize(*l.w->nf4);
    DX.noalias() = DY * MapC(w.data<float>(), out, in);
  } else {
    DX.noalias() = DY * MapC(l.w->dense.data<float>(), out, in);
  }
  if (l.p) {
    const int64_t r = l.p->f.rank();
    const float s = l.p->f.scale;
    MapC A(l.p->f.a.data<float>(), r, in), B(l.p->f.b.data<float>(), out, r), X(x.data<float>(), T, in);
    RowMat dyb = DY * B;          // [T, r]
    RowMat xa = X * A.transpose();  // [T, r]
    DX.noalias() += s * dyb * A;
    Map(l.p->da.data<float>(), r, in).noalias() += s * dyb.transpose() * X;
    Map(l.p->db.data<float>(), out, r).noalias() += s * DY.transpose() * xa;
  }
  return dx;
}

void add(Tensor& y, const Tensor& x) {
  for (int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] += x.data<float>()[i];
}

// Saved activations of one routed expert (rows = the tokens routed to it).
struct ExpertActs {
  std::vector<int64_t> flat;  // token·k + slot of each row
  Tensor x, g, u, a, y;       // [n, H], [n, I] x3, [n, H]
};
struct MoeActs {
  Tensor logits, probs, ids, w;  // [T, E], [T, E], [T, k] i32, [T, k]
  std::vector<ExpertActs> experts;
  Tensor sg, su, sa, sy, sgate;  // shared expert: [T, SI] x3, [T, H], gate sigmoid [T]
};
struct LayerActs {
  Tensor h_in, x1, q0, k0, q, k, v, attn, h_mid, x2, g, u, a;
  MoeActs moe;
};

Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows, const float* scale = nullptr) {
  const int64_t H = x.size(1);
  Tensor o = f32(static_cast<int64_t>(rows.size()), H);
  for (size_t i = 0; i < rows.size(); ++i)
    for (int64_t h = 0; h < H; ++h) o.data<float>()[static_cast<int64_t>(i) * H + h] = x.data<float>()[rows[i] * H + h] * (scale ? scale[i] : 1.0f);
  return o;
}

// MoE forward with saved activations (softmax top-k routers).
Tensor moe_fwd(const model::LayerWeights& LW, const config::ModelConfig& cfg, const Tensor& x, MoeActs& A,
               TrainableAdapter& ad, int l) {
  const int64_t T = x.size(0), H = x.size(1), E = LW.moe.experts.num_experts();
  const int k = static_cast<int>(cfg.moe.num_experts_per_tok);
  using config::Family;
  const bool renorm = cfg.family == Family::Mixtral || cfg.moe.norm_topk_prob;
  GRAFT_CHECK_FIX(cfg.family == Family::Qwen2Moe || cfg.family == Family::Qwen3Moe || cfg.family == Family::Mixtral,
                  "train qwen2_moe, qwen3_moe or mixtral models for now",
                  "training backward for the {} router is not implemented yet", cfg.model_type);
  A.logits = f32(T, E);
  cpu::linear(x, LW.moe.router, Tensor(), A.logits);
  A.probs = f32(T, E);
  for (int64_t t = 0; t < T; ++t) {
    const float* lg = A.logits.data<float>() + t * E;
    float mx = *std::max_element(lg, lg + E), z = 0;
    for (int64_t e = 0; e < E; ++e) z += (A.probs.data<float>()[t * E + e] = std::exp(lg[e] - mx));
    for (int64_t e = 0; e < E; ++e) A.probs.data<float>()[t * E + e] /= z;
  }
  A.ids = Tensor::empty({T, k}, DType::I32);
  A.w = f32(T, k);
  ops::RouterParams rp;
  rp.top_k = k;
  rp.renormalize = renorm;
  cpu::moe_route(A.logits, rp, A.ids, A.w);
  const auto plan = cpu::moe_permute_plan(A.ids, static_cast<int>(E));
  A.experts.assign(static_cast<size_t>(E), {});
  Tensor out = Tensor::zeros({T, H}, DType::F32);
  for (int64_t e = 0; e < E; ++e) {
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    std::vector<int64_t> tok;
    for (int32_t i = 0; i < n; ++i) {
      X.flat.push_back(plan.order[static_cast<size_t>(plan.offsets[static_cast<size_t>(e)] + i)]);
      tok.push_back(X.flat.back() / k);
    }
    X.x = gather_rows(x, tok);
    const int ei = static_cast<int>(e);
    X.g = lin_fwd(X.x, Lin{&LW.moe.experts.gate[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Gate, ei)});
    X.u = lin_fwd(X.x, Lin{&LW.moe.experts.up[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Up, ei)});
    X.a = f32(n, X.g.size(1));
    cpu::swiglu(X.g, X.u, X.a);
    X.y = lin_fwd(X.a, Lin{&LW.moe.experts.down[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Down, ei)});
    for (int32_t i = 0; i < n; ++i) {
      const int64_t t = X.flat[static_cast<size_t>(i)] / k;
      const float wt = A.w.data<float>()[X.flat[static_cast<size_t>(i)]];
      for (int64_t h = 0; h < H; ++h) out.data<float>()[t * H + h] += wt * X.y.data<float>()[i * H + h];
    }
  }
  if (LW.moe.shared.defined()) {
    A.sg = lin_fwd(x, Lin{&LW.moe.shared.gate, ad.param(l, Module::SharedGate)});
    A.su = lin_fwd(x, Lin{&LW.moe.shared.up, ad.param(l, Module::SharedUp)});
    A.sa = f32(T, A.sg.size(1));
    cpu::swiglu(A.sg, A.su, A.sa);
    A.sy = lin_fwd(A.sa, Lin{&LW.moe.shared.down, ad.param(l, Module::SharedDown)});
    Tensor sy = A.sy.clone();
    if (LW.moe.shared_gate.defined()) {
      A.sgate = f32(T, 1);
      cpu::linear(x, LW.moe.shared_gate, Tensor(), A.sgate);
      for (int64_t t = 0; t < T; ++t) {
        float& gt = A.sgate.data<float>()[t];
        gt = 1.0f / (1.0f + std::exp(-gt));
        for (int64_t h = 0; h < H; ++h) sy.data<float>()[t * H + h] *= gt;
      }
    }
    add(out, sy);
  }
  return out;
}

// Backward of moe_fwd: returns dx [T, H] (=), accumulating expert/shared LoRA gradients.
Tensor moe_bwd(const model::LayerWeights& LW, const config::ModelConfig& cfg, const Tensor& x, const Tensor& dout,
               MoeActs& A, TrainableAdapter& ad, int l) {
  const int64_t T = x.size(0), H = x.size(1), E = LW.moe.experts.num_experts();
  const int k = static_cast<int>(cfg.moe.num_experts_per_tok);
  const bool renorm = cfg.family == config::Family::Mixtral || cfg.moe.norm_topk_prob;
  Tensor dx = Tensor::zeros({T, H}, DType::F32);
  Tensor dw = Tensor::zeros({T, k}, DType::F32);
  for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(X.flat.size());
    if (n == 0) continue;
    Tensor dy = f32(n, H);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t f = X.flat[static_cast<size_t>(i)], t = f / k;
      const float wt = A.w.data<float>()[f];
      double d = 0;
      for (int64_t h = 0; h < H; ++h) {
        dy.data<float>()[i * H + h] = wt * dout.data<float>()[t * H + h];
        d += double(dout.data<float>()[t * H + h]) * X.y.data<float>()[i * H + h];
      }
      dw.data<float>()[f] = static_cast<float>(d);
    }
    const int ei = static_cast<int>(e);
    Tensor da = lin_bwd(X.a, dy, Lin{&LW.moe.experts.down[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Down, ei)});
    Tensor dg = f32(n, X.g.size(1)), du = f32(n, X.g.size(1));
    cpu::ref::swiglu_bwd<float>(X.g.data<float>(), X.u.data<float>(), da.data<float>(), X.g.numel(), dg.data<float>(), du.data<float>());
    Tensor dxe = lin_bwd(X.x, dg, Lin{&LW.moe.experts.gate[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Gate, ei)});
    add(dxe, lin_bwd(X.x, du, Lin{&LW.moe.experts.up[static_cast<size_t>(e)], ad.expert_param(l, model::ExpertProj::Up, ei)}));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = X.flat[static_cast<size_t>(i)] / k;
      for (int64_t h = 0; h < H; ++h) dx.data<float>()[t * H + h] += dxe.data<float>()[i * H + h];
    }
  }
  // Router: weights w = p_sel (/ S with renorm, S = Σ p_sel), p = softmax(logits). The selection is
  // piecewise constant; gradients flow through the selected probabilities.
  Tensor dlogits = f32(T, E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> dp(static_cast<size_t>(E), 0.0);
    const float* p = A.probs.data<float>() + t * E;
    const int32_t* id = A.ids.data<int32_t>() + t * k;
    const float* w = A.w.data<float>() + t * k;
    const float* g = dw.data<float>() + t * k;
    if (renorm) {
      double S = 0, gw = 0;
      for (int j = 0; j < k; ++j) S += p[id[j]], gw += double(g[j]) * w[j];
      for (int j = 0; j < k; ++j) dp[static_cast<size_t>(id[j])] = (g[j] - gw) / S;
    } else {
      for (int j = 0; j < k; ++j) dp[static_cast<size_t>(id[j])] = g[j];
    }
    double pdp = 0;
    for (int64_t e = 0; e < E; ++e) pdp += p[e] * dp[static_cast<size_t>(e)];
    for (int64_t e = 0; e < E; ++e) dlogits.data<float>()[t * E + e] = static_cast<float>(p[e] * (dp[static_cast<size_t>(e)] - pdp));
  }
  LinearWeight router;
  router.out = E;
  router.in = H;
  router.dense = LW.moe.router;
  add(dx, lin_bwd(x, dlogits, Lin{&router, nullptr}));
  if (LW.moe.shared.defined()) {
    Tensor dsy = dout.clone();
    if (LW.moe.shared_gate.defined()) {
      Tensor dgl = f32(T, 1);
      for (int64_t t = 0; t < T; ++t) {
        const float gt = A.sgate.data<float>()[t];
        double d = 0;
        for (int64_t h = 0; h < H; ++h) {
          d += double(dout.data<float>()[t * H + h]) * A.sy.data<float>()[t * H + h];
          dsy.data<float>()[t * H + h] *= gt;
        }
        dgl.data<float>()[t] = static_cast<float>(d * gt * (1.0f - gt));
      }
      LinearWeight gw;
      gw.out = 1;
      gw.in = H;
      gw.dense = LW.moe.shared_gate;
      add(dx, lin_bwd(x, dgl, Lin{&gw, nullptr}));
    }
    Tensor da = lin_bwd(A.sa, dsy, Lin{&LW.moe.shared.down, ad.param(l, Module::SharedDown)});
    Tensor dg = f32(T, A.sg.size(1)), du = f32(T, A.sg.size(1));
    cpu::ref::swiglu_bwd<float>(A.sg.data<float>(), A.su.data<float>(), da.data<float>(), A.sg.numel(), dg.data<float>(), du.data<float>());
    add(dx, lin_bwd(x, dg, Lin{&LW.moe.shared.gate, ad.param(l, Module::SharedGate)}));
    add(dx, lin_bwd(x, du, Lin{&LW.moe.shared.up, ad.param(l, Module::SharedUp)}));
  }
  return dx;
}
}  // namespace

namespace {
LoraParam make_param(int64_t in, int64_t out, int64_t rank, float alpha, std::mt19937_64& rng) {
  GRAFT_CHECK_FIX(rank > 0 && in > 0 && out > 0, "use lora_r >= 1", "LoRA rank {} for a [{} -> {}] module", rank, in, out);
  LoraParam p;
  p.f.a = Tensor::empty({rank, in}, DType::F32);
  p.f.b = Tensor::zeros({out, rank}, DType::F32);
  p.f.scale = alpha / static_cast<float>(rank);
  // kaiming_uniform_(a=sqrt(5)) on [rank, in]: bound = gain·sqrt(3/fan_in), gain = sqrt(2/(1+5)) -> 1/sqrt(in)
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  std::uniform_real_distribution<float> u(-bound, bound);
  for (int64_t i = 0; i < p.f.a.numel(); ++i) p.f.a.data<float>()[i] = u(rng);
  p.da = Tensor::zeros({rank, in}, DType::F32);
  p.db = Tensor::zeros({out, rank}, DType::F32);
  return p;
}
}  // namespace

LoraParam& TrainableAdapter::add(int layer, model::Module m, int64_t in, int64_t out, int64_t rank, float alpha,
                                 std::mt19937_64& rng) {
  return params_[{layer, m}] = make_param(in, out, rank, alpha, rng);
}
LoraParam& TrainableAdapter::add_expert(int layer, model::ExpertProj pj, int e, int64_t in, int64_t out, int64_t rank,
                                        float alpha, std::mt19937_64& rng) {
  return experts_[{layer, pj, e}] = make_param(in, out, rank, alpha, rng);
}
const LoraFactors* TrainableAdapter::find_expert(int layer, model::ExpertProj pj, int e) const {
  auto it = experts_.find({layer, pj, e});
  return it == experts_.end() ? nullptr : &it->second.f;
}
LoraParam* TrainableAdapter::expert_param(int layer, model::ExpertProj pj, int e) {
  auto it = experts_.find({layer, pj, e});
  return it == experts_.end() ? nullptr : &it->second;
}
const LoraFactors* TrainableAdapter::find(int layer, model::Module m) const {
  auto it = params_.find({layer, m});
  return it == params_.end() ? nullptr : &it->second.f;
}
LoraParam* TrainableAdapter::param(int layer, model::Module m) {
  auto it = params_.find({layer, m});
  return it == params_.end() ? nullptr : &it->second;
}
void TrainableAdapter::zero_grad() {
  auto zero = [](LoraParam& p) {
    std::fill_n(p.da.data<float>(), p.da.numel(), 0.0f);
    std::fill_n(p.db.data<float>(), p.db.numel(), 0.0f);
  };
  for (auto& [k, p] : params_) zero(p);
  for (auto& [k, p] : experts_) zero(p);
}

double forward_backward(const model::Model& m, std::span<const int32_t> ids, std::span<const int32_t> labels,
                        TrainableAdapter& ad, std::span<const int32_t> positions, std::span<const int32_t> segments) {
  const auto& cfg = m.config();
  using config::Family;
  GRAFT_CHECK_FIX(!cfg.is_mla && cfg.family != Family::Llama4, "train a llama, qwen2 or qwen3 model for now",
                  "training backward for model_type '{}' (MLA / Llama 4 attention) is not implemented yet", cfg.model_type);
  const int64_t T = static_cast<int64_t>(ids.size()), H = cfg.hidden_size, nh = cfg.num_attention_heads,
                nkv = cfg.num_key_value_heads, D = cfg.head_dim, V = cfg.vocab_size;
  GRAFT_CHECK(static_cast<int64_t>(labels.size()) == T, "{} labels for {} tokens", labels.size(), T);
  std::vector<int32_t> pos(positions.begin(), positions.end());
  if (pos.empty()) {
    pos.resize(static_cast<size_t>(T));
    std::iota(pos.begin(), pos.end(), 0);
  }
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const auto& rt = m.rope_table();
  const int L = static_cast<int>(m.layers().size());
  auto lin = [&](int l, const LinearWeight& w, Module mod) { return Lin{&w, ad.param(l, mod)}; };
  auto mask_for = [&](const config::LayerKind& k) {
    ops::AttentionMask mk;
    if (k.sliding && cfg.sliding_window) mk.sliding_window = *cfg.sliding_window;
    if (!segments.empty()) {
      mk.q_segments = segments;
      mk.k_segments = segments;
    }
    return mk;
  };

  // ---------------- forward with saved activations
  std::vector<LayerActs> acts(static_cast<size_t>(L));
  Tensor h = f32(T, H);
  cpu::embedding(ids, m.embedding(), h);
  for (int l = 0; l < L; ++l) {
    const auto& LW = m.layers()[static_cast<size_t>(l)];
    LayerActs& A = acts[static_cast<size_t>(l)];
    A.h_in = h.clone();
    A.x1 = f32(T, H);
    cpu::rmsnorm(h, LW.input_norm, eps, A.x1);
    A.q0 = lin_fwd(A.x1, lin(l, LW.attn.q, Module::Q)).reshape({T, nh, D});
    A.k0 = lin_fwd(A.x1, lin(l, LW.attn.k, Module::K)).reshape({T, nkv, D});
    A.v = lin_fwd(A.x1, lin(l, LW.attn.v, Module::V)).reshape({T, nkv, D});
    A.q = A.q0.clone();
    A.k = A.k0.clone();
    if (LW.attn.q_norm.defined()) {
      cpu::rmsnorm(A.q, LW.attn.q_norm, eps, A.q);
      cpu::rmsnorm(A.k, LW.attn.k_norm, eps, A.k);
    }
    cpu::rope_rotate_half(A.q, pos, rt, static_cast<int>(D));
    cpu::rope_rotate_half(A.k, pos, rt, static_cast<int>(D));
    A.attn = Tensor::empty({T, nh, D}, DType::F32);
    cpu::attention(A.q, A.k, A.v, pos, pos, mask_for(LW.kind), scale, A.attn);
    Tensor o = lin_fwd(A.attn.reshape({T, nh * D}), lin(l, LW.attn.o, Module::O));
    add(h, o);
    A.h_mid = h.clone();
    A.x2 = f32(T, H);
    cpu::rmsnorm(h, LW.post_norm, eps, A.x2);
    if (LW.kind.moe) {
      add(h, moe_fwd(LW, cfg, A.x2, A.moe, ad, l));
      continue;
    }
    A.g = lin_fwd(A.x2, lin(l, LW.mlp.gate, Module::Gate));
    A.u = lin_fwd(A.x2, lin(l, LW.mlp.up, Module::Up));
    A.a = f32(T, A.g.size(1));
    cpu::swiglu(A.g, A.u, A.a);
    add(h, lin_fwd(A.a, lin(l, LW.mlp.down, Module::Down)));
  }
  Tensor xf = f32(T, H);
  cpu::rmsnorm(h, m.final_norm(), eps, xf);
  Tensor logits = lin_fwd(xf, Lin{&m.lm_head(), nullptr});
  Tensor dlogits = f32(T, V);
  const double loss = cpu::ref::cross_entropy<float>(logits.data<float>(), labels, T, V, dlogits.data<float>());

  // ---------------- backward
  Tensor dxf = lin_bwd(xf, dlogits, Lin{&m.lm_head(), nullptr});
  Tensor dh = f32(T, H);
  cpu::ref::rmsnorm_bwd<float>(h.data<float>(), m.final_norm().data<float>(), dxf.data<float>(), eps, T, H, dh.data<float>());
  for (int l = L - 1; l >= 0; --l) {
    const auto& LW = m.layers()[static_cast<size_t>(l)];
    LayerActs& A = acts[static_cast<size_t>(l)];
    // MLP or MoE
    Tensor dx2;
    if (LW.kind.moe) {
      dx2 = moe_bwd(LW, cfg, A.x2, dh, A.moe, ad, l);
    } else {
      Tensor da = lin_bwd(A.a, dh, lin(l, LW.mlp.down, Module::Down));
      Tensor dg = f32(T, A.g.size(1)), du = f32(T, A.g.size(1));
      cpu::ref::swiglu_bwd<float>(A.g.data<float>(), A.u.data<float>(), da.data<float>(), A.g.numel(), dg.data<float>(),
                                  du.data<float>());
      dx2 = lin_bwd(A.x2, dg, lin(l, LW.mlp.gate, Module::Gate));
      add(dx2, lin_bwd(A.x2, du, lin(l, LW.mlp.up, Module::Up)));
    }
    Tensor t = f32(T, H);
    cpu::ref::rmsnorm_bwd<float>(A.h_mid.data<float>(), LW.post_norm.data<float>(), dx2.data<float>(), eps, T, H, t.data<float>());
    add(dh, t);
    // attention
    Tensor dattn = lin_bwd(A.attn.reshape({T, nh * D}), dh, lin(l, LW.attn.o, Module::O));
    Tensor dq = Tensor::empty({T, nh, D}, DType::F32), dk = Tensor::empty({T, nkv, D}, DType::F32),
           dv = Tensor::empty({T, nkv, D}, DType::F32);
    cpu::attention_bwd(A.q, A.k, A.v, dattn.reshape({T, nh, D}), pos, pos, mask_for(LW.kind), scale, dq, dk, dv);
    cpu::ref::rope_bwd<float>(dq.data<float>(), T, nh, D, static_cast<int>(D), rt.inv_freq, rt.attention_scaling, pos, false);
    cpu::ref::rope_bwd<float>(dk.data<float>(), T, nkv, D, static_cast<int>(D), rt.inv_freq, rt.attention_scaling, pos, false);
    if (LW.attn.q_norm.defined()) {
      Tensor dq0 = Tensor::empty({T, nh, D}, DType::F32), dk0 = Tensor::empty({T, nkv, D}, DType::F32);
      cpu::ref::rmsnorm_bwd<float>(A.q0.data<float>(), LW.attn.q_norm.data<float>(), dq.data<float>(), eps, T * nh, D,
                                   dq0.data<float>());
      cpu::ref::rmsnorm_bwd<float>(A.k0.data<float>(), LW.attn.k_norm.data<float>(), dk.data<float>(), eps, T * nkv, D,
                                   dk0.data<float>());
      dq = dq0;
      dk = dk0;
    }
    Tensor dx1 = lin_bwd(A.x1, dq.reshape({T, nh * D}), lin(l, LW.attn.q, Module::Q));
    add(dx1, lin_bwd(A.x1, dk.reshape({T, nkv * D}), lin(l, LW.attn.k, Module::K)));
    add(dx1, lin_bwd(A.x1, dv.reshape({T, nkv * D}), lin(l, LW.attn.v, Module::V)));
    cpu::ref::rmsnorm_bwd<float>(A.h_in.data<float>(), LW.input_norm.data<float>(), dx1.data<float>(), eps, T, H, t.data<float>());
    add(dh, t);
  }
  return loss;
}

}  // namespace graft::train
