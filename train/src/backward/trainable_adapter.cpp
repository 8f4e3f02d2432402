// TrainableAdapter (lora_train.hpp): LoRA factors with PEFT's init and their gradient buffers.
#include <algorithm>
#include <cmath>

#include "graft/error.hpp"
#include "graft/train/lora_train.hpp"

namespace graft::train {

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
  for (FullParam* f : {&embed_, &lm_head_})
    if (f->grad.defined()) std::fill_n(f->grad.data<float>(), f->grad.numel(), 0.0f);
}

}  // namespace graft::train
