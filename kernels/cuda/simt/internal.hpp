// internal.hpp — the SIMT scheduler's state, shared by fiber.cpp (blocks, barriers, warp exchange,
// cp.async), mma.cpp (warp-matrix emulation) and runtime.cpp (launches). Not for kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"
#include "simt.hpp"

namespace graft::simt::detail {

struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
};

struct Fiber {
  enum State { Ready, AtBlockBarrier, AtWarpBarrier, Done, Faulted };
  ThreadState ts;
  void* sp = nullptr;
  void* stack_top = nullptr;
  State state = Ready;
  uint64_t wait_gen = 0;
  std::vector<AsyncCopy> open;                  // cp.async not yet committed
  std::vector<std::vector<AsyncCopy>> groups;   // committed groups, oldest first
  int waits = 0;                                // cp.async.wait_group calls so far
};

struct Warp {
  unsigned exists = 0, exited = 0;  // lanes present in the block / lanes that returned
  unsigned arrived = 0, mask = 0;
  uint64_t gen = 0;
  uint64_t slot[32][24];            // per-lane publication area of the collectives
};

// Fault / bug injection for the SIMT self-tests (tests/kernels/simt): read from the environment
// variable GRAFT_SIMT_INJECT at the first launch, e.g. "skip_syncthreads=file.cu:123",
// "skip_cp_async_wait=1", "fragment_lane_xor=1", "shrink_dynamic_smem=64".
struct Injection {
  std::string skip_syncthreads;  // "file:line" (suffix match on the file name)
  int skip_cp_async_wait = 0;    // every thread skips its n-th cp.async.wait_group (1-based)
  int fragment_lane_xor = 0;     // mma / wmma read A, ldmatrix its rows, from lane ^ this
  int shrink_dynamic_smem = 0;   // blocks get this many bytes less dynamic shared memory than launched
};
const Injection& injection();

struct Block {
  BlockState bs;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<Warp>* warps = nullptr;
  int nthreads = 0, arrived = 0, exited = 0;
  uint64_t gen = 0;
  unsigned char* dyn_smem = nullptr;
};

Fiber& cur_fiber();
Warp& cur_warp();
// Runs every block of a launch on this host thread; returns "" or the fault message.
std::string run_grid(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

}  // namespace graft::simt::detail
