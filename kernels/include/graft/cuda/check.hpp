// Check macros for CUDA runtime, cuBLAS and NCCL calls: each throws graft::Error naming the
// call, the library's error string, file and line. Include only from CUDA-enabled code.
#pragma once

#include <cuda_runtime.h>

#include "graft/error.hpp"

namespace graft::cuda::detail {
[[noreturn]] void throw_cuda_error(const char* expr, const char* file, int line, int code, const char* name,
                                   const char* text);
const char* cublas_status_name(int status);
}  // namespace graft::cuda::detail

#define GRAFT_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                  \
    cudaError_t graft_err_ = (expr);                                                                    \
    if (graft_err_ != cudaSuccess) [[unlikely]]                                                          \
      ::graft::cuda::detail::throw_cuda_error(#expr, __FILE__, __LINE__, static_cast<int>(graft_err_),   \
                                              cudaGetErrorName(graft_err_), cudaGetErrorString(graft_err_)); \
  } while (0)

// Checks the last kernel launch (configuration errors) without synchronising.
#define GRAFT_CUDA_CHECK_LAUNCH() GRAFT_CUDA_CHECK(cudaGetLastError())

#define GRAFT_CUBLAS_CHECK(expr)                                                                      \
  do {                                                                                                \
    int graft_st_ = static_cast<int>(expr);                                                           \
    if (graft_st_ != 0) [[unlikely]]                                                                  \
      ::graft::cuda::detail::throw_cuda_error(#expr, __FILE__, __LINE__, graft_st_,                    \
                                              ::graft::cuda::detail::cublas_status_name(graft_st_), "cuBLAS call failed"); \
  } while (0)

// NCCL: include <nccl.h> before this header's use; ncclGetErrorString names the failure.
#define GRAFT_NCCL_CHECK(expr)                                                                        \
  do {                                                                                                \
    auto graft_nr_ = (expr);                                                                          \
    if (graft_nr_ != 0) [[unlikely]]                                                                  \
      ::graft::cuda::detail::throw_cuda_error(#expr, __FILE__, __LINE__, static_cast<int>(graft_nr_),  \
                                              "ncclResult", ncclGetErrorString(graft_nr_));           \
  } while (0)
