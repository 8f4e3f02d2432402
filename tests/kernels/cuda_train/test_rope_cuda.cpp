// cuda::rope_fwd / rope_bwd (kernels/cuda/rope.cu) against the CPU references: cpu::ref::rope /
// rope_bwd in double and cpu::rope_rotate_half / rope_interleaved (kernels/cpu/rope.cpp, f32) on
// the same bf16-rounded inputs, with tables from ops::rope_table (default and yarn, whose
// attention_scaling != 1). Both layouts; rot_dim == head_dim and rot_dim < head_dim; T = 0;
// odd head counts; positions out of order and up to 8191 (packed samples, long contexts).
// Built into test_cuda_train_ops (label cuda) and test_simt_train_ops (label simt).
// Tolerance: each output is the fp32 rotation rounded once to bf16 (relative error <= 2^-9 ≈
// 2.0e-3), and the angle f = inv_freq·pos is an fp32 product like transformers' (|δf| <= |f|·2^-24
// <= 8192·2^-24 ≈ 4.9e-4 rad with inv_freq <= 1, i.e. <= 4.9e-4 relative on the output), so
// ‖gpu − ref‖/‖ref‖ < 2.5e-3 + fp32 cos/sin noise: held to 4e-3 (2^-8) like the other bf16 outputs.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "../cuda_common/cuda_test_util.hpp"
#include "graft/backend/ops_desc.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/train_ops.hpp"
#include "graft/error.hpp"
#include "graft/tensor.hpp"

namespace graft {
namespace {

using namespace testing::cudatest;
using bf16 = __nv_bfloat16;

constexpr double kBf16Rel = 4e-3;

#define GRAFT_NEED_GPU() \
  if (!kSimt && cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::no_device_reason()

Dev<bf16> up_bf16(const std::vector<uint16_t>& bits) {
  Dev<bf16> d(bits.size());
  if (!bits.empty()) cuda_ok(cudaMemcpy(d.p, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), "upload bf16");
  return d;
}
std::vector<uint16_t> down_bits(const Dev<bf16>& d) {
  std::vector<uint16_t> bits(d.n);
  if (d.n) cuda_ok(cudaMemcpy(bits.data(), d.p, d.n * 2, cudaMemcpyDeviceToHost), "download bf16");
  return bits;
}
void sync() { cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

struct RopeShape {
  int64_t T, heads, D;
  int rot;
  bool yarn;  // yarn table: attention_scaling = 0.1·ln(4) + 1 ≈ 1.139
};
void PrintTo(const RopeShape& s, std::ostream* os) {
  *os << "T" << s.T << "_H" << s.heads << "_D" << s.D << "_rot" << s.rot << (s.yarn ? "_yarn" : "");
}
class CudaRope : public ::testing::TestWithParam<std::tuple<RopeShape, bool>> {};

// Runs the double reference on a copy of v (bf16-rounded floats); inverse = the backward.
std::vector<float> ref_rope(const std::vector<float>& v, const RopeShape& s, const ops::RopeTable& tab,
                            const std::vector<int32_t>& pos, bool interleaved, bool inverse) {
  std::vector<double> d(v.begin(), v.end());
  if (inverse)
    cpu::ref::rope_bwd<double>(d.data(), s.T, s.heads, s.D, s.rot, tab.inv_freq, tab.attention_scaling, pos,
                               interleaved);
  else
    cpu::ref::rope<double>(d.data(), s.T, s.heads, s.D, s.rot, tab.inv_freq, tab.attention_scaling, pos, interleaved,
                           /*inverse=*/false);
  return {d.begin(), d.end()};
}

TEST_P(CudaRope, ForwardAndBackwardMatchCpu) {
  GRAFT_NEED_GPU();
  const auto [s, interleaved] = GetParam();
  ops::RopeParams rp{.kind = s.yarn ? ops::RopeKind::Yarn : ops::RopeKind::Default, .theta = 10000.0, .rot_dim = s.rot};
  if (s.yarn) rp.factor = 4.0;
  const ops::RopeTable tab = ops::rope_table(rp);
  ASSERT_EQ(tab.inv_freq.size(), static_cast<size_t>(s.rot / 2));
  if (s.yarn) {
    ASSERT_GT(tab.attention_scaling, 1.1f);
  }
  const size_t n = static_cast<size_t>(s.T * s.heads * s.D);
  std::vector<int32_t> pos(static_cast<size_t>(s.T));
  for (int64_t t = 0; t < s.T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>((t * 2741 + 17) % 8192);
  if (s.T > 1) pos[1] = 8191;
  auto x = randn(n, 21), dy = randn(n, 22);
  const auto xb = to_bf16(x), dyb = to_bf16(dy);
  auto dx_ = up_bf16(xb), ddy = up_bf16(dyb);
  Dev<int32_t> dpos(pos);
  Dev<float> dfreq(tab.inv_freq);
  Dev<bf16> y(n), dx(n);
  y.poison();
  dx.poison();
  cuda::rope_fwd(dx_.p, dpos.p, dfreq.p, tab.attention_scaling, s.T, s.heads, s.D, s.rot, interleaved, y.p, nullptr);
  cuda::rope_bwd(ddy.p, dpos.p, dfreq.p, tab.attention_scaling, s.T, s.heads, s.D, s.rot, interleaved, dx.p, nullptr);
  sync();
  if (s.T == 0) return;  // nothing to compare; the calls above must simply not fail
  const auto yb = down_bits(y), dxb = down_bits(dx);
  const auto yf = from_bf16(yb), dxf = from_bf16(dxb);

  EXPECT_LT(rel(yf, ref_rope(x, s, tab, pos, interleaved, false)), kBf16Rel) << "forward vs cpu::ref::rope";
  EXPECT_LT(rel(dxf, ref_rope(dy, s, tab, pos, interleaved, true)), kBf16Rel) << "backward vs cpu::ref::rope_bwd";
  Tensor xt = Tensor::from_f32({s.T, s.heads, s.D}, x);
  if (interleaved) cpu::rope_interleaved(xt, pos, tab, s.rot);
  else cpu::rope_rotate_half(xt, pos, tab, s.rot);
  EXPECT_LT(rel(yf, std::vector<float>(xt.data<float>(), xt.data<float>() + n)), kBf16Rel) << "forward vs cpu::rope";

  // Dims [rot, D) are copied bit for bit (the output was poisoned), forward and backward.
  for (size_t r = 0; r < n / static_cast<size_t>(s.D); ++r)
    for (int64_t i = s.rot; i < s.D; ++i) {
      const size_t e = r * static_cast<size_t>(s.D) + static_cast<size_t>(i);
      ASSERT_EQ(yb[e], xb[e]) << "forward tail, row " << r << " dim " << i;
      ASSERT_EQ(dxb[e], dyb[e]) << "backward tail, row " << r << " dim " << i;
    }

  // In place (y == x) gives the same bits as out of place.
  cuda::rope_fwd(dx_.p, dpos.p, dfreq.p, tab.attention_scaling, s.T, s.heads, s.D, s.rot, interleaved, dx_.p, nullptr);
  cuda::rope_bwd(ddy.p, dpos.p, dfreq.p, tab.attention_scaling, s.T, s.heads, s.D, s.rot, interleaved, ddy.p, nullptr);
  sync();
  EXPECT_EQ(down_bits(dx_), yb) << "in-place forward";
  EXPECT_EQ(down_bits(ddy), dxb) << "in-place backward";
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaRope,
                         ::testing::Combine(::testing::Values(RopeShape{0, 3, 64, 64, false},   // empty
                                                              RopeShape{1, 1, 2, 2, false},     // one pair
                                                              RopeShape{5, 3, 64, 64, false},   // full rotary
                                                              RopeShape{7, 5, 80, 32, false},   // partial, odd heads
                                                              RopeShape{3, 7, 96, 48, true},    // partial, yarn scale
                                                              RopeShape{4, 1, 64, 64, true}),  // yarn, full
                                            ::testing::Bool()));  // interleaved

TEST(CudaRopeArgs, BadRotDimThrowsNamingIt) {
  GRAFT_NEED_GPU();
  Dev<bf16> x(16);
  Dev<int32_t> p(std::vector<int32_t>{0, 1});
  Dev<float> f(std::vector<float>{1.0f, 0.1f});
  for (int rot : {0, 3, 10}) {  // zero, odd, > head_dim = 8
    try {
      cuda::rope_fwd(x.p, p.p, f.p, 1.0f, 2, 1, 8, rot, false, x.p, nullptr);
      ADD_FAILURE() << "rot_dim " << rot << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("rot_dim"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace graft
