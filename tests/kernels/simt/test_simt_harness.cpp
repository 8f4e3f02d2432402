// The SIMT harness (kernels/cuda/simt) on purpose-built kernels: what it must catch (an
// out-of-bounds __shared__ index, a missing __syncthreads, a missing cp.async wait, a shuffle that
// names a returned lane, launch limits) and what it must compute (mma.sync m16n8k16, ldmatrix .x4
// and wmma m16n16k16 against a plain GEMM through the documented fragment layouts).
#include <gtest/gtest.h>
#include <mma.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "graft/dtype.hpp"
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

// ---------------------------------------------------------------- fragments vs a plain GEMM
std::vector<uint16_t> rand_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-8, 8);  // small integers: every product and sum is exact
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = graft::f32_to_bf16(static_cast<float>(d(rng)));
  return v;
}
float f(uint16_t b) { return graft::bf16_to_f32(b); }

// A [16, 16] row-major, B [16, 8] given as Bt [8, 16] (n-major), D [16, 8]; fragments built by the
// PTX ISA layout from global memory, the product through mma.sync.
__global__ void mma_kernel(const uint16_t* A, const uint16_t* Bt, float* D) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  auto pack = [](uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16); };
  uint32_t a[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
    a[r] = pack(A[row * 16 + col], A[row * 16 + col + 1]);
  }
  const uint32_t b0 = pack(Bt[g * 16 + 2 * t], Bt[g * 16 + 2 * t + 1]);
  const uint32_t b1 = pack(Bt[g * 16 + 2 * t + 8], Bt[g * 16 + 2 * t + 9]);
  float d[4] = {0, 0, 0, 0};
  ::graft::simt::mma_m16n8k16_bf16(d, a, b0, b1);
  for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}

TEST(SimtHarness, MmaSyncMatchesGemm) {
  auto A = rand_bf16(256, 1), Bt = rand_bf16(128, 2);
  std::vector<float> D(128);
  GRAFT_LAUNCH(1, 32, 0, nullptr, mma_kernel)(A.data(), Bt.data(), D.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float s = 0;
      for (int k = 0; k < 16; ++k) s += f(A[static_cast<size_t>(m * 16 + k)]) * f(Bt[static_cast<size_t>(n * 16 + k)]);
      EXPECT_EQ(D[static_cast<size_t>(m * 8 + n)], s) << m << "," << n;
    }
}

// ldmatrix .x4 of a 16x16 tile (matrices: rows 0-7/cols 0-7, rows 8-15/cols 0-7, rows 0-7/cols 8-15,
// rows 8-15/cols 8-15) gives exactly the mma A fragment.
__global__ void ldmatrix_kernel(const uint16_t* A, uint32_t* out) {
  __shared__ __align__(16) uint16_t s[16][24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[i / 16][i % 16] = A[i];
  __syncwarp();
  uint32_t r[4];
  const int m = lane >> 3, row = (lane & 7) + ((m & 1) ? 8 : 0), col = (m & 2) ? 8 : 0;
  ::graft::simt::ldmatrix_x4(r, &s[row][col]);
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

TEST(SimtHarness, LdmatrixGivesTheMmaAFragment) {
  auto A = rand_bf16(256, 3);
  std::vector<uint32_t> out(128);
  GRAFT_LAUNCH(1, 32, 0, nullptr, ldmatrix_kernel)(A.data(), out.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      const int g = lane >> 2, t = lane & 3, row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
      const uint32_t want = static_cast<uint32_t>(A[static_cast<size_t>(row * 16 + col)]) |
                            (static_cast<uint32_t>(A[static_cast<size_t>(row * 16 + col + 1)]) << 16);
      EXPECT_EQ(out[static_cast<size_t>(lane * 4 + r)], want) << "lane " << lane << " reg " << r;
    }
}

__global__ void wmma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::fill_fragment(c, 1.0f);
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);  // col_major: B[n * 16 + k]
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}

TEST(SimtHarness, WmmaMatchesGemm) {
  auto A = rand_bf16(256, 4), B = rand_bf16(256, 5);
  std::vector<float> C(256);
  GRAFT_LAUNCH(1, 32, 0, nullptr, wmma_kernel)(reinterpret_cast<const __nv_bfloat16*>(A.data()),
                                                reinterpret_cast<const __nv_bfloat16*>(B.data()), C.data());
  ASSERT_EQ(launch_error(), "no error");
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = 1.0f;
      for (int k = 0; k < 16; ++k) s += f(A[static_cast<size_t>(m * 16 + k)]) * f(B[static_cast<size_t>(n * 16 + k)]);
      EXPECT_EQ(C[static_cast<size_t>(m * 16 + n)], s) << m << "," << n;
    }
}

}  // namespace
