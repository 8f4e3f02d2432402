// simt.hpp — the device side of the SIMT target: CUDA kernels compiled by the host C++ compiler and
// executed on the CPU, one fiber per CUDA thread (see docs/testing.md, "SIMT").
//
// Execution model. A launch runs its blocks one after another on the calling host thread. Inside a
// block every CUDA thread is a fiber with its own stack; a fiber runs until it reaches a barrier
// (__syncthreads, a warp collective) or exits, then the next runnable fiber runs, in thread-index
// order. So a thread that reads shared memory without the __syncthreads that orders it after the
// writes of other threads reads what was there before (a failing test), as on hardware.
// Faults (out-of-bounds array index, a warp collective whose mask names an exited lane, deadlock,
// misaligned ldmatrix rows, ...) stop the launch; the message comes back through cudaGetLastError /
// cudaGetErrorString and graft::simt::last_fault().
//
// Nothing here is seen by nvcc: kernels/cuda/simt/include shadows the CUDA headers only in the SIMT
// build (kernels/CMakeLists.txt, GRAFT_SIMT).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

namespace graft::simt {

inline constexpr int kWarpSize = 32;

// Where the running CUDA thread is (valid inside a kernel only).
struct ThreadState {
  uint3 tid{0, 0, 0};
  int linear = 0;  // x + y·bx + z·bx·by
  int lane = 0, warp = 0;
};
struct BlockState {
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
};
inline thread_local ThreadState* t_cur = nullptr;   // the fiber running now (null on the host)
inline thread_local const BlockState* t_block = nullptr;

// Stops the running CUDA thread (and its launch) with a message; never returns. Outside a kernel it
// prints the message and aborts.
[[noreturn]] void fault(const std::string& what);
// The message of the last fault on this host thread ("" if none since the last clear_fault()).
const std::string& last_fault();
void clear_fault();

// ---- block / warp synchronisation (collectives.cpp / fiber.cpp)
// __syncthreads at file:line (the location lets the self-tests drop one barrier).
void syncthreads_at(const char* file, unsigned line);
// Every lane of `mask` (that exists in the block) arrives before any leaves; faults when the caller
// is not in `mask` or a lane of `mask` has exited.
void syncwarp(unsigned mask);
// Warp exchange: every lane of `mask` publishes `v`; returns the value published by lane `src`
// (own value when src is outside [0, 32)).
uint64_t warp_exchange(unsigned mask, uint64_t v, int src);
// Mask of the lanes of `mask` whose predicate is true.
unsigned warp_ballot(unsigned mask, bool pred);
unsigned warp_match_any(unsigned mask, uint64_t v);

// ---- cp.async: queued per thread, applied at the matching wait_group (collectives.cpp)
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);

// ---- warp-matrix instructions with the PTX ISA's fragment layouts (mma.cpp)
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: d = a·b + d (warp-collective).
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lane l gives the row address of matrix l/8, row l%8.
void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr);

// Dynamic shared memory of the running block (launch's smem bytes; poisoned with 0xff per block).
void* dynamic_shared_base();
template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_base());
}

template <class T>
T shfl(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 64 bits");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

}  // namespace graft::simt
