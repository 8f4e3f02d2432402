// Warp-matrix fragments: mma.sync m16n8k16 (bf16 -> f32), ldmatrix .x4 and wmma m16n16k16, through
// the same named device functions the kernels use (nf4_common.cuh, <mma.h>). This one source is
// compiled twice: by nvcc into test_cuda_fragments (label cuda: the hardware, run by
// bench/gpu/run-all.sh when a GPU is lent) and by the host compiler into test_simt_fragments (label
// simt: the CPU emulation of kernels/cuda/simt). Both must give the PTX ISA's documented fragment
// layouts and the exact GEMM (small integer inputs: every product and sum is exact in fp32), so the
// emulation and the hardware are checked against the same expectations.
#include <gtest/gtest.h>
#include <mma.h>

#include <random>
#include <string>
#include <vector>

#include "graft/cuda/device_info.hpp"
#include "graft/dtype.hpp"
#include "launch.cuh"
#include "nf4_common.cuh"

namespace {
namespace nk = graft::cuda::nf4k;

// Suite name: CudaFragments on the GPU, SimtFragments in the SIMT build (distinct CTest names).
#ifndef GRAFT_FRAGMENTS_SUITE
#define GRAFT_FRAGMENTS_SUITE CudaFragments
#endif

#define REQUIRE_DEVICE() \
  if (graft::cuda::device_count() == 0) GTEST_SKIP() << "no GPU: " << graft::cuda::no_device_reason()

template <class T>
struct Buf {
  T* p = nullptr;
  size_t n;
  explicit Buf(const std::vector<T>& v) : n(v.size()) {
    EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p, v.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  explicit Buf(size_t count) : Buf(std::vector<T>(count)) {}
  ~Buf() { cudaFree(p); }
  std::vector<T> get() const {
    std::vector<T> v(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
};

std::vector<uint16_t> rand_bf16(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-8, 8);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = graft::f32_to_bf16(static_cast<float>(d(rng)));
  return v;
}
float f(uint16_t b) { return graft::bf16_to_f32(b); }
__host__ __device__ inline uint32_t pack(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// A [16, 16] row-major, Bt [8, 16] (B's columns), D [16, 8]: fragments built from the PTX layout.
__global__ void mma_kernel(const uint16_t* A, const uint16_t* Bt, float* D) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  uint32_t a[4];
  for (int r = 0; r < 4; ++r) {
    const int row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
    a[r] = pack(A[row * 16 + col], A[row * 16 + col + 1]);
  }
  const uint32_t b0 = pack(Bt[g * 16 + 2 * t], Bt[g * 16 + 2 * t + 1]);
  const uint32_t b1 = pack(Bt[g * 16 + 2 * t + 8], Bt[g * 16 + 2 * t + 9]);
  float d[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  nk::mma_bf16_16816(d, a, b0, b1);
  for (int i = 0; i < 4; ++i) D[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = d[i];
}

TEST(GRAFT_FRAGMENTS_SUITE, MmaSyncM16n8k16MatchesGemm) {
  REQUIRE_DEVICE();
  const auto A = rand_bf16(256, 1), Bt = rand_bf16(128, 2);
  Buf<uint16_t> a(A), b(Bt);
  Buf<float> d(128);
  GRAFT_LAUNCH(1, 32, 0, nullptr, mma_kernel)(a.p, b.p, d.p);
  const auto D = d.get();
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float s = 0.5f;
      for (int k = 0; k < 16; ++k) s += f(A[static_cast<size_t>(m * 16 + k)]) * f(Bt[static_cast<size_t>(n * 16 + k)]);
      EXPECT_EQ(D[static_cast<size_t>(m * 8 + n)], s) << "D(" << m << ", " << n << ")";
    }
}

// ldmatrix .x4 of a 16x16 shared tile (matrix m: rows 8·(m&1).., cols 8·(m>>1)..) = the mma A fragment.
__global__ void ldmatrix_kernel(const uint16_t* A, uint32_t* out) {
  __shared__ __align__(16) uint16_t s[16][24];
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[i / 16][i % 16] = A[i];
  __syncwarp();
  uint32_t r[4];
  const int m = lane >> 3, row = (lane & 7) + ((m & 1) ? 8 : 0), col = (m & 2) ? 8 : 0;
  nk::ldmatrix_x4(r, &s[row][col]);
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

TEST(GRAFT_FRAGMENTS_SUITE, LdmatrixX4GivesTheMmaAFragment) {
  REQUIRE_DEVICE();
  const auto A = rand_bf16(256, 3);
  Buf<uint16_t> a(A);
  Buf<uint32_t> o(128);
  GRAFT_LAUNCH(1, 32, 0, nullptr, ldmatrix_kernel)(a.p, o.p);
  const auto out = o.get();
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      const int g = lane >> 2, t = lane & 3, row = g + ((r & 1) ? 8 : 0), col = 2 * t + ((r & 2) ? 8 : 0);
      EXPECT_EQ(out[static_cast<size_t>(lane * 4 + r)],
                pack(A[static_cast<size_t>(row * 16 + col)], A[static_cast<size_t>(row * 16 + col + 1)]))
          << "lane " << lane << " register " << r;
    }
}

// wmma m16n16k16 bf16: each lane's fragment elements (the mapping the SIMT build keeps, documented
// in kernels/cuda/simt/include/mma.h) and the product C = A·B + C0.
__global__ void wmma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, const float* C0, float* C,
                            float* frag_a, float* frag_b, float* frag_c) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);  // col_major: element (k, n) at B[n * 16 + k]
  wmma::load_matrix_sync(c, C0, 16, wmma::mem_row_major);
  const int lane = threadIdx.x;
  for (int i = 0; i < 8; ++i) {
    frag_a[lane * 8 + i] = __bfloat162float(a.x[i]);
    frag_b[lane * 8 + i] = __bfloat162float(b.x[i]);
    frag_c[lane * 8 + i] = c.x[i];
  }
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}

TEST(GRAFT_FRAGMENTS_SUITE, WmmaLayoutAndProduct) {
  REQUIRE_DEVICE();
  const auto A = rand_bf16(256, 4), B = rand_bf16(256, 5);
  std::vector<float> C0(256);
  for (int i = 0; i < 256; ++i) C0[static_cast<size_t>(i)] = static_cast<float>(i % 7);
  Buf<uint16_t> a(A), b(B);
  Buf<float> c0(C0), c(256), fa(256), fb(256), fc(256);
  GRAFT_LAUNCH(1, 32, 0, nullptr, wmma_kernel)(reinterpret_cast<const __nv_bfloat16*>(a.p),
                                                reinterpret_cast<const __nv_bfloat16*>(b.p), c0.p, c.p, fa.p, fb.p, fc.p);
  const auto C = c.get(), FA = fa.get(), FB = fb.get(), FC = fc.get();
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 8; ++i) {
      const int g = lane >> 2, t = lane & 3, p = i >> 1, e = i & 1;
      const int am = g + ((p & 1) ? 8 : 0), ak = 2 * t + e + ((p & 2) ? 8 : 0);  // A (m, k), C (m, n)
      const int bk = 2 * t + e + ((p & 1) ? 8 : 0), bn = g + ((p & 2) ? 8 : 0);  // B (k, n)
      const size_t li = static_cast<size_t>(lane * 8 + i);
      EXPECT_EQ(FA[li], f(A[static_cast<size_t>(am * 16 + ak)])) << "matrix_a lane " << lane << " x[" << i << "]";
      EXPECT_EQ(FB[li], f(B[static_cast<size_t>(bn * 16 + bk)])) << "matrix_b lane " << lane << " x[" << i << "]";
      EXPECT_EQ(FC[li], C0[static_cast<size_t>(am * 16 + ak)]) << "accumulator lane " << lane << " x[" << i << "]";
    }
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = C0[static_cast<size_t>(m * 16 + n)];
      for (int k = 0; k < 16; ++k) s += f(A[static_cast<size_t>(m * 16 + k)]) * f(B[static_cast<size_t>(n * 16 + k)]);
      EXPECT_EQ(C[static_cast<size_t>(m * 16 + n)], s) << "C(" << m << ", " << n << ")";
    }
}

}  // namespace
