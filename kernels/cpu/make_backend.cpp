// make_backend(device): the CPU backend; other devices are not linked into graft_kernels_cpu.
#include "graft/backend/make_backend.hpp"

#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"

namespace graft {

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return cpu::make_backend();
  GRAFT_FAIL("use device 'cpu'", "device '{}' is not available in this build: it has only the 'cpu' backend", device);
}

}  // namespace graft
