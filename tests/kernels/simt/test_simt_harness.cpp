// The SIMT harness (kernels/cuda/simt) on purpose-built kernels: what it must catch (an
// out-of-bounds __shared__ index, a missing __syncthreads, a missing cp.async wait, a shuffle that
// names a returned lane, launch limits). The warp-matrix emulation is checked by test_fragments.cu,
// which runs the same cases on a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "launch.cuh"

namespace {

std::string launch_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string("no error") : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

__global__ void oob_shared_kernel(float* out, int shift) {
  __shared__ float tile[32];
  tile[threadIdx.x + shift] = 1.0f;  // shift 1: thread 31 writes tile[32]
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

TEST(SimtHarness, OutOfBoundsSharedIndexFaults) {
  std::vector<float> out(32);
  GRAFT_LAUNCH(1, 32, 0, nullptr, oob_shared_kernel)(out.data(), 0);
  EXPECT_EQ(launch_error(), "no error");
  GRAFT_LAUNCH(1, 32, 0, nullptr, oob_shared_kernel)(out.data(), 1);
  const std::string e = launch_error();
  EXPECT_NE(e.find("cudaErrorLaunchFailure"), std::string::npos) << e;
  EXPECT_NE(e.find("index 32 out of bounds for type 'float [32]'"), std::string::npos) << e;
  EXPECT_NE(e.find("thread (31,0,0)"), std::string::npos) << e;
}

template <bool kSync>
__global__ void reverse_kernel(const int* in, int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = in[threadIdx.x];
  if (kSync) __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

TEST(SimtHarness, MissingSyncthreadsReadsStaleSharedMemory) {
  std::vector<int> in(64), out(64, -1);
  for (int i = 0; i < 64; ++i) in[static_cast<size_t>(i)] = 1000 + i;
  GRAFT_LAUNCH(1, 64, 0, nullptr, reverse_kernel<true>)(in.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int i = 0; i < 64; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], 1063 - i);
  for (int& v : in) v += 5000;  // new data: the unsynchronised kernel sees the previous launch's tile
  GRAFT_LAUNCH(1, 64, 0, nullptr, reverse_kernel<false>)(in.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  int wrong = 0;
  for (int i = 0; i < 64; ++i) wrong += out[static_cast<size_t>(i)] != 6063 - i;
  EXPECT_GE(wrong, 32) << "threads that run before their partner must read stale values";
}

template <bool kWait>
__global__ void cp_async_kernel(const float4* in, float* out) {
  __shared__ __align__(16) float4 s[32];
  s[threadIdx.x] = make_float4(-1, -1, -1, -1);
  ::graft::simt::cp_async(&s[threadIdx.x], &in[threadIdx.x], 16, 16);
  ::graft::simt::cp_async_commit();
  if (kWait) ::graft::simt::cp_async_wait(0);
  out[threadIdx.x] = s[threadIdx.x].y;
}

TEST(SimtHarness, CpAsyncLandsOnlyAtTheWait) {
  std::vector<float4> in(32);
  for (int i = 0; i < 32; ++i) in[static_cast<size_t>(i)] = make_float4(0, static_cast<float>(i), 0, 0);
  std::vector<float> out(32);
  GRAFT_LAUNCH(1, 32, 0, nullptr, cp_async_kernel<true>)(in.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], static_cast<float>(i));
  GRAFT_LAUNCH(1, 32, 0, nullptr, cp_async_kernel<false>)(in.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], -1.0f) << "read before cp.async.wait_group";
}

__global__ void shfl_exited_kernel(float* out) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;
  out[lane] = __shfl_xor_sync(0xffffffffu, static_cast<float>(lane), 1);
}

TEST(SimtHarness, ShuffleNamingAReturnedLaneFaults) {
  std::vector<float> out(32);
  GRAFT_LAUNCH(1, 32, 0, nullptr, shfl_exited_kernel)(out.data());
  const std::string e = launch_error();
  EXPECT_NE(e.find("cudaErrorLaunchFailure"), std::string::npos) << e;
  EXPECT_NE(e.find("returned"), std::string::npos) << e;
}

__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const unsigned odd = __ballot_sync(0xffffffffu, threadIdx.x & 1);
  if ((threadIdx.x & 31) == 0) out[threadIdx.x / 32] = v + static_cast<float>(__popc(odd));
}

TEST(SimtHarness, WarpShuffleAndBallot) {
  std::vector<float> in(64), out(2);
  for (int i = 0; i < 64; ++i) in[static_cast<size_t>(i)] = static_cast<float>(i);
  GRAFT_LAUNCH(1, 64, 0, nullptr, warp_sum_kernel)(in.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  EXPECT_EQ(out[0], 496.0f + 16.0f);         // Σ 0..31 + 16 odd lanes
  EXPECT_EQ(out[1], 496.0f + 1024.0f + 16.0f);
}

__global__ void noop_kernel(int) {}

TEST(SimtHarness, LaunchLimitsAreChecked) {
  GRAFT_LAUNCH(1, 2048, 0, nullptr, noop_kernel)(0);
  EXPECT_NE(launch_error().find("cudaErrorInvalidConfiguration"), std::string::npos);
  GRAFT_LAUNCH(dim3(1, 70000), 32, 0, nullptr, noop_kernel)(0);
  EXPECT_NE(launch_error().find("grid"), std::string::npos);
  GRAFT_LAUNCH(1, 32, 64 * 1024, nullptr, noop_kernel)(0);
  EXPECT_NE(launch_error().find("cudaFuncSetAttribute"), std::string::npos);
  ASSERT_EQ(cudaFuncSetAttribute(noop_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024), cudaSuccess);
  GRAFT_LAUNCH(1, 32, 64 * 1024, nullptr, noop_kernel)(0);
  EXPECT_EQ(launch_error(), "no error");
}

}  // namespace
