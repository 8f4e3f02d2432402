// The CUDA backend: graft::Backend on one CUDA device (kernels/cuda/cuda_backend.cu).
// bf16 activations with fp32 accumulation; weights stay host-side in their formats and are copied to
// the device once (WeightCache: dense -> bf16, NF4 packed as is); LoRA factors are fp32 on the device.
// One stream per backend; every op is asynchronous except to_host, cross_entropy (returns the loss)
// and the MoE expert dispatch (reads the routing plan's counts). Docs: docs/kernels.md "CudaBackend".
#pragma once

#include <memory>

#include "graft/backend/backend.hpp"
#include "graft/cuda/device_allocator.hpp"

namespace graft::cuda {

// Throws graft::Error naming the reason when `device` is not a usable CUDA device.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Memory facts of a CUDA backend (for `graft devices`, benchmarks and tests): allocator statistics and
// the bytes of the device weight cache. Throws when `be` is not a CUDA backend.
struct CudaBackendMemory {
  AllocatorStats activations;
  size_t weight_bytes = 0;
  size_t weight_entries = 0;
};
CudaBackendMemory cuda_backend_memory(const Backend& be);

}  // namespace graft::cuda
