// Host-side error reporting for GRAFT_CUDA_CHECK / GRAFT_CUBLAS_CHECK / GRAFT_NCCL_CHECK.
#include <cublas_v2.h>
#include <fmt/format.h>

#include "graft/cuda/check.hpp"

namespace graft::cuda::detail {

[[noreturn]] void throw_cuda_error(const char* expr, const char* file, int line, int code, const char* name,
                                   const char* text) {
  ::graft::detail::throw_check_failed(expr, file, line, fmt::format("CUDA error {} ({}): {}", code, name, text),
                                      "check that the GPU is healthy (nvidia-smi) and the inputs are valid; "
                                      "rerun with CUDA_LAUNCH_BLOCKING=1 to locate asynchronous errors");
}

const char* cublas_status_name(int status) { return cublasGetStatusName(static_cast<cublasStatus_t>(status)); }

}  // namespace graft::cuda::detail
