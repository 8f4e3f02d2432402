// runtime.cpp — the host side of the SIMT target: device memory is host memory, every stream runs
// its work in order on the calling thread (so a launch has finished when it returns, like
// CUDA_LAUNCH_BLOCKING=1), stream capture records the work into a graph that cudaGraphLaunch
// replays in order, and launches are checked against the limits of the emulated device (an sm_90
// H100 SXM: 1024 threads per block, 48 KiB dynamic shared memory by default, 227 KiB opt-in).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "graft/dtype.hpp"
#include "include/cublas_v2.h"
#include "internal.hpp"
#include "launch.hpp"

struct CUgraph_st {
  std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> nodes;
};
struct CUstream_st {
  CUgraph_st* capture = nullptr;  // non-null while capturing
};
struct CUevent_st {
  std::chrono::steady_clock::time_point t{};
  bool recorded = false;
};

namespace graft::simt {
namespace {

constexpr size_t kSmemDefault = 48 * 1024, kSmemOptin = 232448;  // sm_90: 227 KiB opt-in per block
constexpr int kMaxThreads = 1024;

std::mutex g_mu;
std::set<const void*> g_allocs;
std::map<const void*, int> g_max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
CUstream_st g_default_stream;

thread_local cudaError_t t_error = cudaSuccess;
thread_local std::string t_error_text;

cudaError_t set_error(cudaError_t e, std::string text) {
  t_error = e;
  t_error_text = std::move(text);
  std::fprintf(stderr, "graft SIMT: %s\n", t_error_text.c_str());
  return e;
}

CUstream_st* stream_of(cudaStream_t s) { return s ? s : &g_default_stream; }

// Runs `work` now, or appends it to the graph being captured on `s`.
void enqueue(cudaStream_t s, std::function<void()> work) {
  CUstream_st* st = stream_of(s);
  if (st->capture) st->capture->nodes.push_back(std::move(work));
  else work();
}

}  // namespace

cudaError_t set_max_dynamic_smem(const void* func, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kSmemOptin)
    return set_error(cudaErrorInvalidValue, fmt::format("cudaFuncSetAttribute: {} bytes of dynamic shared memory exceed "
                                                        "the device's opt-in limit of {}", bytes, kSmemOptin));
  std::lock_guard<std::mutex> lock(g_mu);
  g_max_dyn_smem[func] = bytes;
  return cudaSuccess;
}

void enqueue_launch(const char* name, const void* func, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    std::function<void()> body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  std::string bad;
  if (threads == 0 || threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64)
    bad = fmt::format("block ({},{},{}) outside the limits (1..1024 threads; x, y <= 1024, z <= 64)", block.x, block.y, block.z);
  else if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    bad = fmt::format("grid ({},{},{}) outside the limits (x in 1..2^31-1, y and z in 1..65535)", grid.x, grid.y, grid.z);
  else {
    size_t allowed = kSmemDefault;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      auto it = g_max_dyn_smem.find(func);
      if (it != g_max_dyn_smem.end()) allowed = static_cast<size_t>(it->second);
    }
    if (smem > allowed)
      bad = fmt::format("{} bytes of dynamic shared memory, but the kernel may use {} (raise it with cudaFuncSetAttribute("
                        "cudaFuncAttributeMaxDynamicSharedMemorySize), at most {})", smem, allowed, kSmemOptin);
  }
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, fmt::format("launch of {}: {}", name, bad));
    return;
  }
  enqueue(stream, [name, grid, block, smem, body = std::move(body)] {
    const std::string f = detail::run_grid(name, grid, block, smem, body);
    if (!f.empty()) set_error(cudaErrorLaunchFailure, f);
  });
}

}  // namespace graft::simt

using namespace graft::simt;

cudaError_t cudaMalloc(void** p, size_t bytes) {
  const size_t n = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  *p = std::aligned_alloc(256, n);
  if (!*p) return set_error(cudaErrorMemoryAllocation, fmt::format("cudaMalloc: out of host memory for {} bytes", bytes));
  std::lock_guard<std::mutex> lock(g_mu);
  g_allocs.insert(*p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_allocs.erase(p)) return set_error(cudaErrorInvalidDevicePointer, fmt::format("cudaFree({}): not from cudaMalloc", p));
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  enqueue(s, [=] {
    if (bytes) std::memmove(dst, src, bytes);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s) {
  enqueue(s, [=] {
    if (bytes) std::memset(dst, value, bytes);
  });
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) {
  return dev == 0 ? cudaSuccess : set_error(cudaErrorInvalidValue, fmt::format("cudaSetDevice({}): the SIMT target has one device", dev));
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (dev != 0) return set_error(cudaErrorInvalidValue, fmt::format("cudaGetDeviceProperties({}): one SIMT device", dev));
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "graft SIMT (CPU emulation of an sm_90 H100)");
  p->totalGlobalMem = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  p->sharedMemPerBlock = kSmemDefault;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreads;
  p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = p->maxGridSize[2] = 65535;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->l2CacheSize = 50 * 1024 * 1024;
  p->sharedMemPerMultiprocessor = 233472;
  p->sharedMemPerBlockOptin = kSmemOptin;
  p->memoryBusWidth = 5120;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int dev) {
  cudaDeviceProp p;
  if (cudaError_t e = cudaGetDeviceProperties(&p, dev)) return e;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(p.sharedMemPerBlock); break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrMemoryClockRate: *v = 2619000; break;  // kHz (H100 SXM HBM3)
    case cudaDevAttrGlobalMemoryBusWidth: *v = p.memoryBusWidth; break;
    case cudaDevAttrL2CacheSize: *v = p.l2CacheSize; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(p.sharedMemPerBlockOptin); break;
    default: return set_error(cudaErrorInvalidValue, fmt::format("cudaDeviceGetAttribute({}): not emulated", static_cast<int>(attr)));
  }
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  const cudaError_t e = t_error;
  t_error = cudaSuccess;
  return e;
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = t_error;
  t_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
  }
  return "cudaErrorUnknown";
}
// The detailed text of the last failure on this thread (kernel, block, thread, what went wrong).
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaSuccess) return "no error";
  if (!t_error_text.empty()) return t_error_text.c_str();
  return cudaGetErrorName(e);
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaDeviceSynchronize(); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }  // in order already
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  enqueue(s, [e] {
    e->t = std::chrono::steady_clock::now();
    e->recorded = true;
  });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a->recorded || !b->recorded) return set_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: event not recorded");
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  CUstream_st* st = stream_of(s);
  if (st->capture) return set_error(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture: already capturing");
  st->capture = new CUgraph_st;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  CUstream_st* st = stream_of(s);
  if (!st->capture) return set_error(cudaErrorStreamCaptureUnsupported, "cudaStreamEndCapture: not capturing");
  *g = st->capture;
  st->capture = nullptr;
  return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t g, cudaGraphNode_t* nodes, size_t* count) {
  if (nodes) return set_error(cudaErrorInvalidValue, "cudaGraphGetNodes: the SIMT graph reports only the node count");
  *count = g->nodes.size();
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long) {
  *e = new CUgraphExec_st{g->nodes};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
  for (const auto& n : e->nodes) enqueue(s, n);
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

// ---------------------------------------------------------------- cuBLAS (host GEMM)
struct cublasContext {
  cudaStream_t stream = nullptr;
};
cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext{};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}
namespace {
float load_elem(const void* p, cudaDataType t, size_t i) {
  return t == CUDA_R_32F ? static_cast<const float*>(p)[i] : ::graft::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
void store_elem(void* p, cudaDataType t, size_t i, float v) {
  if (t == CUDA_R_32F) static_cast<float*>(p)[i] = v;
  else static_cast<uint16_t*>(p)[i] = ::graft::f32_to_bf16(v);
}
}  // namespace
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  auto ok_type = [](cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF; };
  if (m < 0 || n < 0 || k < 0 || !ok_type(Atype) || !ok_type(Btype) || !ok_type(Ctype) ||
      (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_FAST_TF32) || !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  // Leading dimensions as cuBLAS checks them: rows of the stored (column-major) matrix.
  const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  enqueue(handle->stream, [=] {
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) {
        float acc = 0.0f;
        for (int p = 0; p < k; ++p) {
          const size_t ia = transa == CUBLAS_OP_N ? size_t(p) * lda + i : size_t(i) * lda + p;
          const size_t ib = transb == CUBLAS_OP_N ? size_t(j) * ldb + p : size_t(p) * ldb + j;
          acc += load_elem(A, Atype, ia) * load_elem(B, Btype, ib);
        }
        const size_t ic = size_t(j) * ldc + i;
        const float prev = be == 0.0f ? 0.0f : load_elem(C, Ctype, ic);  // beta 0: C is not read (may be NaN)
        store_elem(C, Ctype, ic, al * acc + be * prev);
      }
  });
  return CUBLAS_STATUS_SUCCESS;
}
