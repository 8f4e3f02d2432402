// Device copies of frozen host weights (dense tensors converted to the compute dtype, NF4 weights in
// their packed layout), made on first use and reused while the host weight lives. An entry is keyed by
// the host data pointer and remembers the host storage through a weak pointer, so a weight freed on the
// host (and its address reused) is never served stale, and the cache never keeps host memory alive.
// Contract: a cached host weight is not modified in place while cached (graft's base weights are frozen;
// trainable LoRA factors are never cached). Serving and fine-tuning jobs that share one in-memory base
// share its device copy.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "graft/cuda/device_allocator.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/tensor.hpp"

namespace graft::cuda {

class WeightCache {
 public:
  explicit WeightCache(std::shared_ptr<DeviceAllocator> alloc) : alloc_(std::move(alloc)) {}
  // The device copy of host tensor `t` in `dtype` (BF16 or F32), uploaded on `stream` on first use.
  // A tensor already on the device in `dtype` is returned as is; host tensors without storage
  // ownership (borrowed views) are uploaded every call, uncached.
  Tensor dense(const Tensor& t, DType dtype, cudaStream_t stream);
  // The device copy of an NF4 weight (2-d [n, k]).
  const Nf4Weight& nf4(const std::shared_ptr<const nf4::QuantizedWeight>& q);
  size_t device_bytes() const;
  size_t entries() const;

 private:
  void sweep_expired();  // drops entries whose host weight died

  struct DenseEntry {
    std::weak_ptr<void> owner;
    Tensor device;
  };
  struct Nf4Entry {
    std::weak_ptr<const nf4::QuantizedWeight> owner;
    std::unique_ptr<Nf4WeightBuffer> buf;
  };
  std::shared_ptr<DeviceAllocator> alloc_;
  mutable std::mutex mu_;
  std::map<std::tuple<const void*, int64_t, DType>, DenseEntry> dense_;
  std::map<const void*, Nf4Entry> nf4_;
  size_t inserts_since_sweep_ = 0;
};

// Uploads host tensor `t` (any float dtype, or I32) as a contiguous device tensor in `dtype` on `stream`
// (asynchronous; the host source may be freed when this returns).
Tensor upload(DeviceAllocator& alloc, const Tensor& t, DType dtype, cudaStream_t stream);

}  // namespace graft::cuda
