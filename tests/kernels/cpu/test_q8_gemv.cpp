// q8_gemv (int8 codes widened in registers) and linear_q8 == dequantize-then-matmul, on every ISA path this CPU has,
// including layouts the SIMD paths hand to the portable one (K or blocksize not a multiple of 16).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/q8_gemv.hpp"
#include "graft/error.hpp"
#include "test_util.hpp"

namespace graft::cpu {
namespace {

q8::QuantizedWeight quantize(const Tensor& w, int64_t blocksize) {
  return q8::quantize(std::span<const float>(w.data<float>(), size_t(w.numel())), w.shape(), blocksize);
}

// y_ref[T, N] in double from the dequantized weight.
std::vector<double> reference(const Tensor& x, const q8::QuantizedWeight& q) { return graft::testing::matmul_ref(x, q8::dequantize(q)); }

TEST(CpuQ8Gemv, EqualsDequantizeThenMatmulOnEveryIsa) {
  struct Shape {
    int64_t T, N, K, blocksize;
  };
  // N not a multiple of the 4-row (T = 1) or 16-row groups; K with a short last block (K % bs != 0); K = 64 (one
  // block a row, stories260K); K not a multiple of 16 and blocksize 24 (portable on every ISA); every T in 1..16.
  const Shape shapes[] = {{1, 37, 128, 64}, {1, 3, 512, 64},  {1, 1, 64, 64},   {1, 41, 208, 64}, {2, 19, 96, 64},
                          {3, 300, 512, 64}, {4, 9, 80, 32},  {5, 7, 48, 16},    {6, 17, 100, 64}, {7, 5, 72, 24},
                          {8, 33, 512, 64},  {9, 6, 256, 128}, {10, 13, 64, 64}, {11, 23, 128, 64}, {12, 4, 192, 64},
                          {13, 5, 256, 64},  {14, 8, 64, 32}, {15, 11, 144, 64}, {16, 65, 256, 64}};
  int paths = 0;
  for (Nf4Isa isa : {Nf4Isa::Portable, Nf4Isa::Avx2, Nf4Isa::Avx512}) {
    if (!nf4_isa_supported(isa)) continue;
    ++paths;
    for (const Shape& s : shapes) {
      SCOPED_TRACE(::testing::Message() << "isa " << int(isa) << " T " << s.T << " N " << s.N << " K " << s.K
                                      << " bs " << s.blocksize);
      const Tensor wf = graft::testing::randn({s.N, s.K}, 11u + uint32_t(s.K), 0.05f);
      const q8::QuantizedWeight q = quantize(wf, s.blocksize);
      const Tensor x = graft::testing::randn({s.T, s.K}, 7u + uint32_t(s.T));
      Tensor y = graft::testing::poisoned({s.T, s.N});
      q8_gemv(x.data<float>(), s.T, s.K, q, y.data<float>(), isa);
      const std::vector<double> ref = reference(x, q);
      EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), s.T * s.N), 1e-5);
      // The panels of the T > 16 path: exactly q8::dequantize's values.
      std::vector<float> rows(size_t(s.N * s.K));
      q8_dequant_rows(q, 0, s.N, rows.data(), isa);
      const Tensor wd = q8::dequantize(q);
      EXPECT_EQ(0, std::memcmp(rows.data(), wd.raw(), rows.size() * sizeof(float)));
    }
  }
  EXPECT_GE(paths, 1);
}

TEST(CpuQ8Gemv, LinearQ8AgreesAcrossTheDecodeAndPanelPaths) {
  const Tensor wf = graft::testing::randn({70, 192}, 3u, 0.05f);
  const q8::QuantizedWeight q = quantize(wf, 64);
  for (int64_t T : {0, 1, 16, 17, 64, 130}) {
    SCOPED_TRACE(T);
    const Tensor x = graft::testing::randn({T, 192}, 5u);
    Tensor y = graft::testing::poisoned({T, 70});
    linear_q8(x, q, y);
    if (T == 0) continue;
    const std::vector<double> ref = reference(x, q);
    EXPECT_LT(graft::testing::rel_err(y.data<float>(), ref.data(), T * 70), 1e-5);
  }
}

TEST(CpuQ8Gemv, RefusesMismatchedShapesAndDamagedWeights) {
  const Tensor wf = graft::testing::randn({8, 64}, 3u, 0.05f);
  q8::QuantizedWeight q = quantize(wf, 32);
  const Tensor x = graft::testing::randn({2, 48}, 5u);
  Tensor y = graft::testing::poisoned({2, 8});
  EXPECT_THROW(linear_q8(x, q, y), Error);  // K 48 vs 64
  std::vector<float> out(16 * 64);
  EXPECT_THROW(q8_dequant_rows(q, 4, 9, out.data()), Error);  // rows past the end
  q.scale.pop_back();  // a truncated scale table
  const Tensor x64 = graft::testing::randn({2, 64}, 5u);
  try {
    linear_q8(x64, q, y);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("re-quantize"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft::cpu
