// modules_to_save (modules_to_save.hpp, lora_train.hpp): trainable fp32 copies of embed_tokens and
// lm_head, and their gradients.
#include "modules_to_save.hpp"

#include <Eigen/Core>

#include <algorithm>

#include "graft/error.hpp"
#include "graft/parallel.hpp"
#include "graft/quant/nf4.hpp"

namespace graft::train {

namespace {
FullParam make_full(const Tensor& w) {
  GRAFT_CHECK(w.ndim() == 2 && w.dtype() == DType::F32, "modules_to_save: expected an f32 [vocab, hidden] weight");
  FullParam p;
  p.w.out = w.size(0);
  p.w.in = w.size(1);
  p.w.dense = w.clone();
  p.grad = Tensor::zeros({w.size(0), w.size(1)}, DType::F32);
  return p;
}
}  // namespace

FullParam& TrainableAdapter::add_embed_tokens(const Tensor& base_embedding) {
  return embed_ = make_full(base_embedding);
}

FullParam& TrainableAdapter::add_lm_head(const LinearWeight& base) {
  GRAFT_CHECK_FIX(!base.bias.defined(), "remove lm_head from lora_modules_to_save", "lm_head with a bias is not supported");
  return lm_head_ = make_full(base.quantized() ? nf4::dequantize(*base.nf4) : base.dense);
}

namespace detail {

using MatR = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

const Tensor& step_embedding(const model::Model& m, const TrainableAdapter& ad) {
  const Tensor* e = ad.embed_tokens();
  return e ? *e : m.embedding();
}

const LinearWeight& step_lm_head(const model::Model& m, const TrainableAdapter& ad) {
  const LinearWeight* h = ad.lm_head();
  return h ? *h : m.lm_head();
}

namespace {
// The copies and their gradients are host fp32 tensors; the step's activations must be host tensors too.
void check_host(const Tensor& t, const char* what) {
  GRAFT_CHECK_FIX(t.device().is_cpu() && t.dtype() == DType::F32,
                  "train with lora_modules_to_save on the CPU backend, or remove lora_modules_to_save",
                  "lora_modules_to_save: the embed_tokens / lm_head gradients are computed on the host, but the step's {} "
                  "is {} on {}", what, dtype_name(t.dtype()), t.device().str());
}
}  // namespace

void lm_head_grad(TrainableAdapter& ad, const Tensor& xf, const Tensor& dlogits) {
  FullParam* p = ad.lm_head_param();
  if (!p) return;
  check_host(xf, "final-norm output");
  check_host(dlogits, "logits gradient");
  const int64_t T = xf.size(0), H = xf.size(1), V = dlogits.size(1);
  Eigen::Map<const MatR> x(xf.data<float>(), T, H), dy(dlogits.data<float>(), T, V);
  Eigen::Map<MatR> g(p->grad.data<float>(), V, H);
  // [V, H] += dyᵀ · x: a large product (V = vocabulary), rows of g split over OpenMP threads (Eigen itself runs on one
  // thread in graft: kernels/cpu/thread_pool.cpp).
  constexpr int64_t kRows = 1024;
#pragma omp parallel for schedule(static) if (graft::parallel_worth(V * T * H))
  for (int64_t v0 = 0; v0 < V; v0 += kRows) {
    const int64_t n = std::min(kRows, V - v0);
    g.middleRows(v0, n).noalias() += dy.middleCols(v0, n).transpose() * x;
  }
}

void embedding_grad(TrainableAdapter& ad, std::span<const int32_t> ids, const Tensor& dh) {
  FullParam* p = ad.embed_param();
  if (!p) return;
  check_host(dh, "embedding-output gradient");
  const int64_t H = dh.size(1);
  for (size_t t = 0; t < ids.size(); ++t) {
    const float* src = dh.data<float>() + static_cast<int64_t>(t) * H;
    float* dst = p->grad.data<float>() + int64_t{ids[t]} * H;
    for (int64_t j = 0; j < H; ++j) dst[j] += src[j];
  }
}

}  // namespace detail
}  // namespace graft::train
