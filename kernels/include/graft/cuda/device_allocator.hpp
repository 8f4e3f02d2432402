// A caching device allocator: blocks freed by tensors go back to a per-size free list and are reused
// by later allocations of the same rounded size, so a training or decode step makes no cudaMalloc
// once warm. Single-stream use: a block freed on the host may still be read by work queued earlier on
// the backend's stream; reusing it for work queued later on the same stream is ordered by the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "graft/tensor.hpp"

namespace graft::cuda {

struct AllocatorStats {
  size_t in_use = 0, cached = 0, peak_in_use = 0;  // bytes (rounded sizes)
  uint64_t device_mallocs = 0, reuses = 0;
};

class DeviceAllocator : public std::enable_shared_from_this<DeviceAllocator> {
 public:
  static std::shared_ptr<DeviceAllocator> create(int device);
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  // A contiguous device tensor (uninitialised) whose storage returns to this cache when the last view dies.
  Tensor tensor(const Dims& shape, DType dtype);
  // Frees every cached (unused) block back to the driver.
  void release_cached();
  AllocatorStats stats() const;
  int device() const { return device_; }
  // The size class of a request: multiples of 512 B up to 1 MiB, then of 2 MiB.
  static size_t round_size(size_t bytes);

 private:
  explicit DeviceAllocator(int device) : device_(device) {}
  void* acquire(size_t rounded);
  void give_back(void* p, size_t rounded);

  int device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;
  AllocatorStats stats_;
};

}  // namespace graft::cuda
