// nf4_gemv (codes decoded in registers) == dequantize-then-matmul, on every ISA path this CPU has (AVX2: the vpshufb
// kernel for blocksize % 64 == 0, the vpermps one for blocksize 32).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "graft/cpu/nf4_gemv.hpp"
#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

namespace graft::cpu {
namespace {

// y_ref[T, N] in double from the dequantized weight.
std::vector<double> reference(const Tensor& x, const nf4::QuantizedWeight& q) { return graft::testing::matmul_ref(x, nf4::dequantize(q)); }

struct Shape {
  int64_t T, N, K, blocksize;
  bool double_quant;
};

TEST(CpuNf4Gemv, EqualsDequantizeThenMatmulOnEveryIsa) {
  const Shape shapes[] = {{1, 37, 128, 64, true},   {16, 65, 256, 64, true},  {3, 300, 512, 64, false},
                          {1, 19, 100, 64, true},   {5, 7, 33, 64, true},      {2, 40, 192, 32, true},
                          {16, 9, 128, 128, true},  {4, 513, 64, 64, true},
                          {1, 64, 172, 64, true},   {3, 21, 172, 64, false},   {1, 6, 384, 64, false},
                          {1, 1, 128, 64, true},    {7, 9, 64, 64, false},     {11, 23, 128, 64, true},
                          {13, 5, 256, 64, true}};
  int paths = 0;
  for (Nf4Isa isa : {Nf4Isa::Portable, Nf4Isa::Avx2, Nf4Isa::Avx512}) {
    if (!nf4_isa_supported(isa)) continue;
    ++paths;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K
                                      << " bs " << s.blocksize);
      const Tensor wf = graft::testing::randn({s.N, s.K}, 11u + uint32_t(s.K), 0.05f);
      const nf4::QuantizedWeight q = nf4::quantize(std::span<const float>(wf.data<float>(), size_t(wf.numel())), wf.shape(), s.double_quant, s.blocksize);
      const Tensor x = graft::testing::randn({s.T, s.K}, 7u + uint32_t(s.T));
      Tensor y = graft::testing::poisoned({s.T, s.N});
      nf4_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa);
      const std::vector<double> ref = reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), s.T * s.N), 1e-5);
    }
  }
  EXPECT_GE(paths, 1);
}

TEST(CpuNf4Gemv, LinearNf4AgreesAcrossTheDecodeAndPanelPaths) {
  // T <= 16 takes nf4_gemv, T >= 17 the dequantized-panel GEMM; both must match the reference.
  const Tensor wf = graft::testing::randn({70, 192}, 3u, 0.05f);
  const nf4::QuantizedWeight q = nf4::quantize(wf, true, 64);
  for (int64_t T : {1, 16, 17, 64, 130}) {
    SCOPED_TRACE(T);
    const Tensor x = graft::testing::randn({T, 192}, 5u);
    Tensor y = graft::testing::poisoned({T, 70});
    linear_nf4(x, q, y);
    const std::vector<double> ref = reference(x, q);
    EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), T * 70), 1e-5);
  }
}

TEST(CpuNf4Gemv, AbsmaxDecodedInTheKernelIsBitExact) {
  // The kernels decode each block's double-quantized absmax where they use it; a fused multiply-add there
  // would change the last bit of whole blocks, which the 1e-5 matmul tolerance above would not notice.
  for (bool dq : {true, false}) {
    const Tensor wf = graft::testing::randn({300, 256}, 21u, 0.05f);
    const nf4::QuantizedWeight q = nf4::quantize(wf, dq, 64);
    const std::vector<float> ref = nf4::block_absmax(q);
    ASSERT_EQ(static_cast<int64_t>(ref.size()), q.num_blocks());
    int64_t differ = 0;
    for (int64_t b = 0; b < q.num_blocks(); ++b) differ += nf4_absmax_at(q, b) != ref[static_cast<size_t>(b)];
    EXPECT_EQ(differ, 0) << "double_quant " << dq;
  }
}

TEST(CpuNf4Gemv, DequantRowsEqualsDequantizeOnEveryIsa) {
  const Shape shapes[] = {{0, 37, 128, 64, true}, {0, 65, 256, 64, false}, {0, 19, 100, 64, true},
                          {0, 40, 192, 32, true}, {0, 9, 128, 128, true},  {0, 33, 64, 64, true},
                          {0, 20, 172, 64, true}, {0, 11, 33, 64, false},  {0, 7, 300, 96, true}};
  for (Nf4Isa isa : {Nf4Isa::Portable, Nf4Isa::Avx2, Nf4Isa::Avx512}) {
    if (!nf4_isa_supported(isa)) continue;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " N " << s.N << " K " << s.K << " bs " << s.blocksize);
      const Tensor wf = graft::testing::randn({s.N, s.K}, 5u + uint32_t(s.N), 0.05f);
      const nf4::QuantizedWeight q = nf4::quantize(std::span<const float>(wf.data<float>(), size_t(wf.numel())), wf.shape(), s.double_quant, s.blocksize);
      const Tensor ref = nf4::dequantize(q);
      const int64_t n0 = 3, n1 = s.N - 1;  // an interior row range
      std::vector<float> out(static_cast<size_t>((n1 - n0) * s.K), -1.0f);
      nf4_dequant_rows(q, n0, n1, out.data(), isa);
      int64_t differ = 0;
      for (int64_t i = 0; i < (n1 - n0) * s.K; ++i) differ += out[static_cast<size_t>(i)] != ref.data<float>()[n0 * s.K + i];
      EXPECT_EQ(differ, 0);
    }
  }
}

TEST(CpuNf4Gemv, RejectsTooManyRowsWrongKAndBadRowRanges) {
  const Tensor wf = graft::testing::randn({8, 64}, 1u);
  const nf4::QuantizedWeight q = nf4::quantize(wf, true, 64);
  std::vector<float> x(17 * 64), y(17 * 8);
  EXPECT_THROW(nf4_gemv(x.data(), 17, 64, q, y.data()), Error);
  EXPECT_THROW(nf4_gemv(x.data(), 1, 32, q, y.data()), Error);
  EXPECT_THROW(nf4_dequant_rows(q, 4, 9, y.data()), Error);
  EXPECT_THROW(nf4_absmax_at(q, 8), Error);
}

}  // namespace
}  // namespace graft::cpu
