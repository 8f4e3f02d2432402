// make_backend(device): parses the device name and builds the CPU or CUDA backend.
#include "graft/backend/make_backend.hpp"

#include <fmt/format.h>

#include <charconv>
#include <thread>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"

#ifdef GRAFT_BACKEND_WITH_CUDA
#include "graft/cuda/cuda_backend.hpp"
#include "graft/cuda/device_info.hpp"
#endif

namespace graft {
namespace {

// "cuda" -> 0, "cuda:3" -> 3; -1 when `d` is not a cuda name.
int cuda_index(const std::string& d) {
  if (d == "cuda") return 0;
  if (d.rfind("cuda:", 0) != 0) return -1;
  int idx = -1;
  const char* b = d.data() + 5;
  const char* e = d.data() + d.size();
  auto [p, ec] = std::from_chars(b, e, idx);
  GRAFT_CHECK_FIX(ec == std::errc() && p == e && idx >= 0 && b != e, "write it as cuda:0, cuda:1, ...",
                  "device '{}' has no valid device index after 'cuda:'", d);
  return idx;
}

int usable_cuda_devices() {
#ifdef GRAFT_BACKEND_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

}  // namespace

bool build_has_cuda() {
#ifdef GRAFT_BACKEND_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string default_device() { return usable_cuda_devices() > 0 ? "cuda:0" : "cpu"; }

std::unique_ptr<Backend> make_backend(const std::string& device) {
  const std::string d = device.empty() || device == "auto" ? default_device() : device;
  if (d == "cpu") return cpu::make_backend();
  const int idx = cuda_index(d);
  GRAFT_CHECK_FIX(idx >= 0, "use cpu, cuda, cuda:N or auto", "unknown device '{}'", device);
#ifdef GRAFT_BACKEND_WITH_CUDA
  return cuda::make_cuda_backend(idx);
#else
  GRAFT_FAIL("use --device cpu, or rebuild graft with the CUDA toolkit installed (cmake -DGRAFT_CUDA=ON)",
             "device '{}' was requested but this graft build has no CUDA backend", device);
#endif
}

std::string devices_report() {
  std::string r;
#ifdef GRAFT_BACKEND_WITH_CUDA
  const int n = cuda::device_count();
  if (n == 0) r += fmt::format("cuda: none usable ({})\n", cuda::no_device_reason());
  for (int i = 0; i < n; ++i) {
    const cuda::DeviceInfo info = cuda::device_info(i);
    r += fmt::format("cuda:{}  {}  sm_{}{}  {} SMs  {:.1f} GiB  {:.0f} GB/s peak  {} KiB smem/block\n", i, info.name,
                     info.cc_major, info.cc_minor, info.sm_count,
                     static_cast<double>(info.total_mem_bytes) / (1024.0 * 1024 * 1024), info.peak_dram_gbps(),
                     info.smem_per_block_optin / 1024);
  }
#else
  r += "cuda: not in this build (rebuild with the CUDA toolkit: cmake -DGRAFT_CUDA=ON)\n";
#endif
  r += fmt::format("cpu     {} hardware threads\n", std::thread::hardware_concurrency());
  r += fmt::format("default (--device auto): {}\n", default_device());
  return r;
}

}  // namespace graft
