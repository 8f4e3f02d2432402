// device_info.cu — reads device facts (SM count, shared memory, memory clock/bus) from the driver.
// Contract: host-only queries; device_count() never throws, device_info() throws graft::Error.
#include "graft/cuda/check.hpp"
#include "graft/cuda/device_info.hpp"

namespace graft::cuda {


int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string no_device_reason() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (e != cudaSuccess) return GRAFT_FORMAT_("no usable CUDA device ({}: {})", cudaGetErrorName(e), cudaGetErrorString(e));
  if (n == 0) return "no CUDA device present";
  return "";
}

double DeviceInfo::peak_dram_gbps() const {
  return 2.0 * mem_clock_khz * 1e3 * (mem_bus_width_bits / 8.0) / 1e9;
}

DeviceInfo device_info(int index) {
  DeviceInfo d;
  d.index = index;
  cudaDeviceProp p{};
  GRAFT_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  d.name = p.name;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.sm_count = p.multiProcessorCount;
  d.total_mem_bytes = p.totalGlobalMem;
  d.smem_per_block_optin = p.sharedMemPerBlockOptin;
  d.smem_per_sm = p.sharedMemPerMultiprocessor;
  d.l2_bytes = p.l2CacheSize;
  GRAFT_CUDA_CHECK(cudaDeviceGetAttribute(&d.mem_bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, index));
  GRAFT_CUDA_CHECK(cudaDeviceGetAttribute(&d.mem_clock_khz, cudaDevAttrMemoryClockRate, index));
  return d;
}

}  // namespace graft::cuda
