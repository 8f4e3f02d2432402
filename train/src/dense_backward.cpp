// Forward with saved activations and hand-written backward of the dense decoder (see lora_train.hpp).
#include <Eigen/Core>

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

struct LayerActs {
  Tensor h_in, x1, q0, k0, q, k, v, attn, h_mid, x2, g, u, a;
};
}  // namespace

LoraParam& TrainableAdapter::add(int layer, model::Module m, int64_t in, int64_t out, int64_t rank, float alpha,
                                 std::mt19937_64& rng) {
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
  return params_[{layer, m}] = std::move(p);
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
  for (auto& [k, p] : params_) {
    std::fill_n(p.da.data<float>(), p.da.numel(), 0.0f);
    std::fill_n(p.db.data<float>(), p.db.numel(), 0.0f);
  }
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
    GRAFT_CHECK_FIX(!LW.kind.moe, "train dense layers for now", "training backward for MoE layer {} is not implemented yet", l);
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
    // MLP
    Tensor da = lin_bwd(A.a, dh, lin(l, LW.mlp.down, Module::Down));
    Tensor dg = f32(T, A.g.size(1)), du = f32(T, A.g.size(1));
    cpu::ref::swiglu_bwd<float>(A.g.data<float>(), A.u.data<float>(), da.data<float>(), A.g.numel(), dg.data<float>(),
                                du.data<float>());
    Tensor dx2 = lin_bwd(A.x2, dg, lin(l, LW.mlp.gate, Module::Gate));
    add(dx2, lin_bwd(A.x2, du, lin(l, LW.mlp.up, Module::Up)));
    Tensor t = f32(T, H);
    cpu::ref::rmsnorm_bwd<float>(A.h_mid.data<float>(), LW.post_norm.data<float>(), dx2.data<float>(), eps, T, H, t.data<float>());
    add(dh, t);
    // attention
    Tensor dattn = lin_bwd(A.attn.reshape({T, nh * D}), dh, lin(l, LW.attn.o, Module::O));
    Tensor dq = Tensor::empty({T, nh, D}, DType::F32), dk = Tensor::empty({T, nkv, D}, DType::F32),
           dv = Tensor::empty({T, nkv, D}, DType::F32);
    cpu::ref::attention_bwd<float>(A.q.data<float>(), A.k.data<float>(), A.v.data<float>(), dattn.data<float>(), T, nh, D,
                                   T, nkv, D, pos, pos, mask_for(LW.kind), scale, dq.data<float>(), dk.data<float>(),
                                   dv.data<float>());
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
