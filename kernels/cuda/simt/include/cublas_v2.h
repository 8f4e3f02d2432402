// SIMT build only: the cuBLAS names graft's CUDA code refers to. graft's kernels call no cuBLAS
// routine; cuBLAS work in the SIMT build goes to the CPU reference GEMM (graft/cpu/ops.hpp).
#pragma once

#include "cuda_runtime.h"

enum cublasStatus_t : int {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15
};
const char* cublasGetStatusName(cublasStatus_t s);
