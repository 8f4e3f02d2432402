// Standard (GQA) attention sublayer, forward with saved activations and backward, as Model::forward
// runs it: q/k/v projections (biases), Qwen3's q/k RMSNorm, RoPE (rotate-half or interleaved) on RoPE
// layers followed by Llama 4's weightless L2 norm, Llama 4's attention temperature on NoPE layers,
// causal / sliding / chunked / packed masks, softmax scale, o projection.
#include <algorithm>
#include <cmath>

#include "backward_internal.hpp"

namespace graft::train::detail {
namespace {
using model::Module;

// The weight of Llama 4's weightless L2 norm (rmsnorm with w = 1): a host constant, passed like the
// model's norm weights (a device backend caches its copy).   -> [n] f32 on the host
Tensor ones(Backend&, int64_t n) {
  Tensor t = Tensor::empty({n}, DType::F32);
  std::fill_n(t.data<float>(), n, 1.0f);
  return t;
}
// Llama 4 NoPE-layer temperature per token, a function of the (host) positions only: computed on the
// host (a host constant, not an activation) as Model::forward does, and uploaded.   -> [T]
Tensor temperatures(const Ctx& c) {
  Tensor s = Tensor::empty({c.T}, DType::F32);
  for (int64_t t = 0; t < c.T; ++t)
    s.data<float>()[t] = static_cast<float>(  // as train::ref::attn_temperature and Model::forward
        std::log(std::floor((c.pos[static_cast<size_t>(t)] + 1.0) / c.cfg.floor_scale) + 1.0) * c.cfg.attn_scale + 1.0);
  return c.be.to_device(s, DType::F32);
}
float softmax_scale(const Ctx& c) {
  return c.spec.attn_scale != 0.0f ? c.spec.attn_scale : 1.0f / std::sqrt(static_cast<float>(c.cfg.head_dim));
}
Tensor normed(Backend& be, const Tensor& x, const Tensor& w, float eps) {
  Tensor y = be.empty(x.shape(), be.activation_dtype());
  be.rmsnorm(x, w, eps, y);
  return y;
}
// dx (=) of y = rmsnorm(x, w) over the last dim.   x, dy [.., D]
Tensor normed_bwd(Backend& be, const Tensor& x, const Tensor& w, const Tensor& dy, float eps) {
  Tensor dx = be.empty(x.shape(), be.activation_dtype());
  be.rmsnorm_bwd(x, w, dy, eps, dx);
  return dx;
}
}  // namespace

Tensor attention_fwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, AttnActs& A) {
  const auto& cfg = c.cfg;
  const int64_t T = c.T, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads, D = cfg.head_dim;
  Tensor q = lin_fwd(c.be, x1, c.lin(l, L.attn.q, Module::Q)).reshape({T, nh, D});
  Tensor k = lin_fwd(c.be, x1, c.lin(l, L.attn.k, Module::K)).reshape({T, nkv, D});
  A.v = lin_fwd(c.be, x1, c.lin(l, L.attn.v, Module::V)).reshape({T, nkv, D});
  if (c.spec.qk_norm) {
    A.q0 = q;
    A.k0 = k;
    q = normed(c.be, A.q0, L.attn.q_norm, c.eps);
    k = normed(c.be, A.k0, L.attn.k_norm, c.eps);
  }
  if (L.kind.rope) {
    c.rope(q, static_cast<int>(D));
    c.rope(k, static_cast<int>(D));
    if (c.spec.qk_l2_norm) {
      A.qr = q;
      A.kr = k;
      const Tensor one = ones(c.be, D);
      q = normed(c.be, A.qr, one, c.eps);
      k = normed(c.be, A.kr, one, c.eps);
    }
  } else if (c.spec.temperature_tuning) {
    Tensor q2 = q.reshape({T, nh * D});
    c.be.scale_rows(q2, temperatures(c));
  }
  A.q = q;
  A.k = k;
  A.out = c.be.empty({T, nh, D}, c.be.activation_dtype());
  c.be.attention(A.q, A.k, A.v, c.pos, c.pos, c.mask(L.kind), softmax_scale(c), A.out);
  return lin_fwd(c.be, A.out.reshape({T, nh * D}), c.lin(l, L.attn.o, Module::O));
}

Tensor attention_bwd(const Ctx& c, int l, const model::LayerWeights& L, const Tensor& x1, const Tensor& dout, AttnActs& A) {
  const auto& cfg = c.cfg;
  const int64_t T = c.T, nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads, D = cfg.head_dim;
  Tensor dattn = lin_bwd(c.be, A.out.reshape({T, nh * D}), dout, c.lin(l, L.attn.o, Module::O));
  Tensor dq = c.be.empty({T, nh, D}, c.be.activation_dtype()), dk = c.be.empty({T, nkv, D}, c.be.activation_dtype()),
         dv = c.be.empty({T, nkv, D}, c.be.activation_dtype());
  c.be.attention_bwd(A.q, A.k, A.v, dattn.reshape({T, nh, D}), c.pos, c.pos, c.mask(L.kind), softmax_scale(c), dq, dk, dv);
  if (L.kind.rope) {
    if (c.spec.qk_l2_norm) {
      const Tensor one = ones(c.be, D);
      dq = normed_bwd(c.be, A.qr, one, dq, c.eps);
      dk = normed_bwd(c.be, A.kr, one, dk, c.eps);
    }
    c.rope_bwd(dq, static_cast<int>(D));
    c.rope_bwd(dk, static_cast<int>(D));
  } else if (c.spec.temperature_tuning) {
    Tensor dq2 = dq.reshape({T, nh * D});
    c.be.scale_rows(dq2, temperatures(c));  // dq·s: its own transpose
  }
  if (c.spec.qk_norm) {
    dq = normed_bwd(c.be, A.q0, L.attn.q_norm, dq, c.eps);
    dk = normed_bwd(c.be, A.k0, L.attn.k_norm, dk, c.eps);
  }
  Tensor dx1 = lin_bwd(c.be, x1, dq.reshape({T, nh * D}), c.lin(l, L.attn.q, Module::Q));
  c.be.add_acc(lin_bwd(c.be, x1, dk.reshape({T, nkv * D}), c.lin(l, L.attn.k, Module::K)), dx1);
  c.be.add_acc(lin_bwd(c.be, x1, dv.reshape({T, nkv * D}), c.lin(l, L.attn.v, Module::V)), dx1);
  return dx1;
}

}  // namespace graft::train::detail
