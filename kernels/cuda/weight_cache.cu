// weight_cache.cu — graft::cuda::WeightCache and upload() (graft/cuda/weight_cache.hpp). Host code only.
// Contract: see the header. Conversions happen on the host (f32 -> bf16 round-to-nearest-even, the
// same as cpu::to_bf16), then one cudaMemcpyAsync on the given stream (pageable source: the call
// returns once the source has been staged, so temporaries may die).
#include <cstring>

#include "graft/cuda/check.hpp"
#include "graft/cuda/weight_cache.hpp"

namespace graft::cuda {

Tensor upload(DeviceAllocator& alloc, const Tensor& t, DType dtype, cudaStream_t stream) {
  GRAFT_CHECK(t.device().is_cpu(), "upload: {} is not a host tensor", t.describe());
  const bool int_ok = t.dtype() == DType::I32 && dtype == DType::I32;
  GRAFT_CHECK(int_ok || dtype == DType::BF16 || dtype == DType::F32,
              "upload: {} to {} is not supported (float tensors go to bf16 or f32, i32 stays i32)", t.describe(),
              dtype_name(dtype));
  const Tensor host = t.dtype() == dtype ? (t.is_contiguous() ? t : t.contiguous()) : t.to(dtype);
  Tensor d = alloc.tensor(t.shape(), dtype);
  if (host.nbytes())
    GRAFT_CUDA_CHECK(cudaMemcpyAsync(d.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice, stream));
  return d;
}

Tensor WeightCache::dense(const Tensor& t, DType dtype, cudaStream_t stream) {
  if (!t.device().is_cpu()) {
    GRAFT_CHECK(t.device().index == alloc_->device() && t.dtype() == dtype && t.is_contiguous(),
                "weight {} must be a contiguous {} tensor on cuda:{} or a host tensor", t.describe(),
                dtype_name(dtype), alloc_->device());
    return t;
  }
  if (!t.storage()) return upload(*alloc_, t, dtype, stream);
  const auto key = std::make_tuple(static_cast<const void*>(t.raw()), t.numel(), dtype);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = dense_.find(key);
  if (it != dense_.end()) {
    const auto& o = it->second.owner;
    const bool same_owner = !o.owner_before(t.storage()) && !t.storage().owner_before(o) && !o.expired();
    if (same_owner && it->second.device.shape() == t.shape()) return it->second.device;
    dense_.erase(it);
  }
  Tensor d = upload(*alloc_, t, dtype, stream);
  dense_[key] = DenseEntry{t.storage(), d};
  if (++inserts_since_sweep_ >= 256) sweep_expired();
  return d;
}

const Nf4Weight& WeightCache::nf4(const std::shared_ptr<const nf4::QuantizedWeight>& q) {
  GRAFT_CHECK(q != nullptr, "WeightCache::nf4: null NF4 weight");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = nf4_.find(q.get());
  if (it != nf4_.end()) {
    const auto& o = it->second.owner;
    if (!o.owner_before(q) && !q.owner_before(o) && !o.expired()) return it->second.buf->view();
    nf4_.erase(it);
  }
  auto buf = std::make_unique<Nf4WeightBuffer>(*q);
  const Nf4Weight& v = buf->view();
  nf4_[q.get()] = Nf4Entry{q, std::move(buf)};
  if (++inserts_since_sweep_ >= 256) sweep_expired();
  return v;
}

void WeightCache::sweep_expired() {
  inserts_since_sweep_ = 0;
  for (auto it = dense_.begin(); it != dense_.end();) it = it->second.owner.expired() ? dense_.erase(it) : std::next(it);
  for (auto it = nf4_.begin(); it != nf4_.end();) it = it->second.owner.expired() ? nf4_.erase(it) : std::next(it);
}

size_t WeightCache::device_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t b = 0;
  for (const auto& [k, e] : dense_) b += e.device.nbytes();
  for (const auto& [k, e] : nf4_) b += e.buf->device_bytes();
  return b;
}
size_t WeightCache::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dense_.size() + nf4_.size();
}

}  // namespace graft::cuda
