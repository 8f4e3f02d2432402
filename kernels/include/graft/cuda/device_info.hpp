// Facts about the CUDA devices present, read from the driver (never hard-coded).
#pragma once

#include <string>
#include <vector>

namespace graft::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;      // compute capability
  int sm_count = 0;                    // multiprocessors
  size_t total_mem_bytes = 0;
  size_t smem_per_block_optin = 0;     // max dynamic shared memory per block (opt-in)
  size_t smem_per_sm = 0;
  int l2_bytes = 0;
  int mem_bus_width_bits = 0;
  int mem_clock_khz = 0;
  double peak_dram_gbps() const;       // 2 * clock * bus width (theoretical)
};

// Number of usable CUDA devices; 0 (never throws) when there is no driver or no GPU.
int device_count() noexcept;
// Why device_count() is 0, for skip messages ("no CUDA driver", "no device" ...).
std::string no_device_reason();
DeviceInfo device_info(int index);

}  // namespace graft::cuda
