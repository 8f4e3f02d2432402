#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

using namespace graft;
using graft::testing::randn;

namespace {
// Runs tools/ref/rope_ref.py (PyTorch transcription of transformers' RoPE init); empty if unavailable.
std::vector<double> torch_rope(const std::string& args) {
  std::string cmd = std::string(GRAFT_REF_PYTHON) + " " + std::string(GRAFT_SOURCE_DIR) + "/tools/ref/rope_ref.py " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  std::vector<double> v;
  if (!p) return v;
  char buf[128];
  while (fgets(buf, sizeof buf, p)) v.push_back(std::strtod(buf, nullptr));
  if (pclose(p) != 0) v.clear();
  return v;
}
void expect_table(const cpu::RopeTable& t, const std::vector<double>& ref) {
  ASSERT_EQ(ref.size(), t.inv_freq.size() + 1);
  EXPECT_NEAR(t.attention_scaling, ref[0], 1e-6);
  for (size_t i = 0; i < t.inv_freq.size(); ++i)
    EXPECT_NEAR(t.inv_freq[i], ref[i + 1], 2e-6 * std::fabs(ref[i + 1]) + 1e-12) << i;
}
}  // namespace

TEST(CpuRope, TablesMatchTransformersFormulas) {
  auto d = torch_rope("default 128 1000000");
  if (d.empty()) GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with torch is unavailable";
  cpu::RopeParams p;
  p.rot_dim = 128;
  p.theta = 1e6;
  expect_table(cpu::rope_table(p), d);

  p.kind = cpu::RopeKind::Llama3;  // Llama 3.1: factor 8, low 1, high 4, original 8192, theta 500000
  p.theta = 500000;
  p.factor = 8;
  p.low_freq_factor = 1;
  p.high_freq_factor = 4;
  p.original_max_position = 8192;
  expect_table(cpu::rope_table(p), torch_rope("llama3 128 500000 8 1 4 8192"));

  p = {};
  p.kind = cpu::RopeKind::Yarn;  // DeepSeek-V3: rope dim 64, theta 10000, factor 40, orig 4096, mscale 1/1
  p.rot_dim = 64;
  p.theta = 10000;
  p.factor = 40;
  p.original_max_position = 4096;
  p.mscale = 1;
  p.mscale_all_dim = 1;
  expect_table(cpu::rope_table(p), torch_rope("yarn 64 10000 40 1 4 4096 32 1 1 1"));
  p.mscale = 0;  // plain yarn: attention factor 0.1 ln(s) + 1
  expect_table(cpu::rope_table(p), torch_rope("yarn 64 10000 40 1 4 4096 32 1 0 0"));

  p = {};
  p.kind = cpu::RopeKind::Dynamic;  // dynamic NTK: default below original_max, scaled base beyond
  p.rot_dim = 64;
  p.factor = 2;
  p.original_max_position = 2048;
  expect_table(cpu::rope_table_dynamic(p, 1000), torch_rope("dynamic 64 10000 2 1000 4 2048"));
  expect_table(cpu::rope_table_dynamic(p, 5000), torch_rope("dynamic 64 10000 2 5000 4 2048"));

  p = {};
  p.kind = cpu::RopeKind::Linear;
  p.rot_dim = 32;
  p.factor = 4;
  expect_table(cpu::rope_table(p), torch_rope("linear 32 10000 4"));
}

TEST(CpuRope, RotateHalfIsAComplexRotationAndInterleavedIsItsPermutation) {
  const int64_t T = 5, Hn = 3, D = 16;
  const int rot = 12;  // partial rotary: last 4 dims untouched
  cpu::RopeParams p;
  p.rot_dim = rot;
  auto table = cpu::rope_table(p);
  std::vector<int32_t> pos = {0, 1, 7, 100, 4095};
  Tensor x = randn({T, Hn, D}, 11);
  Tensor y = x.clone();
  cpu::rope_rotate_half(y, pos, table, rot);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hn; ++h) {
      const float* a = x.data<float>() + (t * Hn + h) * D;
      const float* b = y.data<float>() + (t * Hn + h) * D;
      for (int i = 0; i < rot / 2; ++i) {
        double ang = double(table.inv_freq[static_cast<size_t>(i)]) * pos[static_cast<size_t>(t)];
        EXPECT_NEAR(b[i], a[i] * std::cos(ang) - a[i + rot / 2] * std::sin(ang), 2e-4);
        EXPECT_NEAR(b[i + rot / 2], a[i + rot / 2] * std::cos(ang) + a[i] * std::sin(ang), 2e-4);
      }
      for (int i = rot; i < D; ++i) EXPECT_EQ(b[i], a[i]);
    }
  // Interleaved on the permuted layout equals rotate-half on the original.
  Tensor xi = x.clone();
  for (int64_t r = 0; r < T * Hn; ++r)
    for (int i = 0; i < rot / 2; ++i) {
      xi.data<float>()[r * D + 2 * i] = x.data<float>()[r * D + i];
      xi.data<float>()[r * D + 2 * i + 1] = x.data<float>()[r * D + i + rot / 2];
    }
  cpu::rope_interleaved(xi, pos, table, rot);
  for (int64_t r = 0; r < T * Hn; ++r)
    for (int i = 0; i < rot / 2; ++i) {
      // Same math; FMA contraction may differ between the two loops: allow fp32 rounding.
      EXPECT_NEAR(xi.data<float>()[r * D + 2 * i], y.data<float>()[r * D + i], 1e-6);
      EXPECT_NEAR(xi.data<float>()[r * D + 2 * i + 1], y.data<float>()[r * D + i + rot / 2], 1e-6);
    }
  EXPECT_THROW(cpu::rope_rotate_half(y, std::vector<int32_t>{1, 2}, table, rot), Error);
  p.rot_dim = 7;
  EXPECT_THROW(cpu::rope_table(p), Error);
}
