// device_allocator.cu — graft::cuda::DeviceAllocator (graft/cuda/device_allocator.hpp). Host code only.
// Contract: tensor() returns 256-byte aligned device memory of at least shape.numel()·dtype_size bytes;
// the block returns to the free list (not to the driver) when the tensor's last view dies. When
// cudaMalloc fails the cache is released and the allocation retried once; a second failure throws
// graft::Error naming the size, the bytes in use and cached, and what to reduce.
#include "graft/cuda/check.hpp"
#include "graft/cuda/device_allocator.hpp"

namespace graft::cuda {

std::shared_ptr<DeviceAllocator> DeviceAllocator::create(int device) {
  return std::shared_ptr<DeviceAllocator>(new DeviceAllocator(device));
}

DeviceAllocator::~DeviceAllocator() { release_cached(); }

size_t DeviceAllocator::round_size(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20, kSplit = size_t{1} << 20;
  if (bytes == 0) bytes = 1;
  return bytes <= kSplit ? (bytes + kSmall - 1) / kSmall * kSmall : (bytes + kLarge - 1) / kLarge * kLarge;
}

void* DeviceAllocator::acquire(size_t rounded) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(rounded);
    if (it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      stats_.cached -= rounded;
      stats_.in_use += rounded;
      stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
      ++stats_.reuses;
      return p;
    }
  }
  int prev = 0;
  GRAFT_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != device_) GRAFT_CUDA_CHECK(cudaSetDevice(device_));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, rounded);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    release_cached();
    e = cudaMalloc(&p, rounded);
  }
  if (prev != device_) (void)cudaSetDevice(prev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    const AllocatorStats s = stats();
    GRAFT_FAIL("use a smaller micro_batch_size / sequence_len / max_batch_tokens, or a larger GPU",
               "out of device memory on cuda:{}: allocating {} bytes with {} bytes in use ({})", device_, rounded,
               s.in_use, cudaGetErrorString(e));
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.in_use += rounded;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  ++stats_.device_mallocs;
  return p;
}

void DeviceAllocator::give_back(void* p, size_t rounded) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.emplace(rounded, p);
  stats_.in_use -= rounded;
  stats_.cached += rounded;
}

Tensor DeviceAllocator::tensor(const Dims& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  const size_t rounded = round_size(bytes);
  void* p = acquire(rounded);
  std::weak_ptr<DeviceAllocator> owner = weak_from_this();
  std::shared_ptr<void> keep(p, [owner, rounded](void* q) {
    if (auto a = owner.lock()) a->give_back(q, rounded);
    else (void)cudaFree(q);  // the allocator is gone: return the block to the driver
  });
  return Tensor::wrap(p, shape, dtype, Device{DeviceKind::CUDA, device_}, std::move(keep));
}

void DeviceAllocator::release_cached() {
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    blocks.swap(free_);
    stats_.cached = 0;
  }
  for (auto& [size, p] : blocks) (void)cudaFree(p);
}

AllocatorStats DeviceAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace graft::cuda
