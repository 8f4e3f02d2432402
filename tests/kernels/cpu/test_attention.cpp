#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "test_util.hpp"

using namespace graft;
using graft::testing::poisoned;
using graft::testing::randn;
using graft::testing::rel_err;

namespace {
std::vector<double> naive(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int32_t>& qp,
                          const std::vector<int32_t>& kp, const cpu::AttentionMask& m, double scale) {
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2), S = k.size(0), Hkv = k.size(1), Dv = v.size(2);
  std::vector<double> out(static_cast<size_t>(T * Hq * Dv), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      int64_t kh = h / (Hq / Hkv);
      std::vector<double> s(static_cast<size_t>(S), -INFINITY);
      double mx = -INFINITY;
      for (int64_t j = 0; j < S; ++j) {
        int64_t a = qp[static_cast<size_t>(t)], b = kp[static_cast<size_t>(j)];
        if (m.causal && b > a) continue;
        if (m.sliding_window && a - b >= m.sliding_window) continue;
        if (m.chunk_size && a / m.chunk_size != b / m.chunk_size) continue;
        if (!m.q_segments.empty() && m.q_segments[static_cast<size_t>(t)] != m.k_segments[static_cast<size_t>(j)]) continue;
        double d = 0;
        for (int64_t i = 0; i < D; ++i) d += double(q.data<float>()[(t * Hq + h) * D + i]) * k.data<float>()[(j * Hkv + kh) * D + i];
        s[static_cast<size_t>(j)] = d * scale;
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      if (mx == -INFINITY) continue;
      double z = 0;
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int64_t j = 0; j < S; ++j)
        for (int64_t i = 0; i < Dv; ++i)
          out[static_cast<size_t>((t * Hq + h) * Dv + i)] += s[static_cast<size_t>(j)] / z * v.data<float>()[(j * Hkv + kh) * Dv + i];
    }
  return out;
}
}  // namespace

TEST(CpuAttention, CausalGqaSlidingChunkedPacked) {
  const int64_t T = 13, Hq = 6, Hkv = 2, D = 16, Dv = 12;
  Tensor q = randn({T, Hq, D}, 1), k = randn({T, Hkv, D}, 2), v = randn({T, Hkv, Dv}, 3);
  std::vector<int32_t> pos(T);
  for (int i = 0; i < T; ++i) pos[static_cast<size_t>(i)] = i;
  std::vector<int32_t> seg = {0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2};
  std::vector<int32_t> spos = {0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 3};  // positions restart per sample
  std::vector<cpu::AttentionMask> masks(5);
  masks[1].sliding_window = 4;
  masks[2].chunk_size = 5;
  masks[3].q_segments = seg;
  masks[3].k_segments = seg;
  masks[4].causal = false;
  for (size_t mi = 0; mi < masks.size(); ++mi) {
    const auto& qp = mi == 3 ? spos : pos;
    Tensor out = poisoned({T, Hq, Dv}), lse = poisoned({T, Hq});
    cpu::attention(q, k, v, qp, qp, masks[mi], 0.25f, out, &lse);
    auto ref = naive(q, k, v, qp, qp, masks[mi], 0.25);
    EXPECT_LT(rel_err(out.data<float>(), ref.data(), T * Hq * Dv), 1e-5) << "mask " << mi;
    for (int64_t i = 0; i < T * Hq; ++i) EXPECT_TRUE(std::isfinite(lse.data<float>()[i]));
  }
}

TEST(CpuAttention, DecodeAgainstCacheAndFullyMaskedRows) {
  // One query at position 9 against 10 cached keys == last row of full causal attention.
  const int64_t S = 10, H = 4, D = 8;
  Tensor q = randn({S, H, D}, 4), k = randn({S, H, D}, 5), v = randn({S, H, D}, 6);
  std::vector<int32_t> pos(S);
  for (int i = 0; i < S; ++i) pos[static_cast<size_t>(i)] = i;
  Tensor full = poisoned({S, H, D});
  cpu::attention(q, k, v, pos, pos, {}, 0.3f, full);
  Tensor q1 = q.slice(0, S - 1, S).contiguous(), one = poisoned({1, H, D});
  std::vector<int32_t> p1 = {9};
  cpu::attention(q1, k, v, p1, pos, {}, 0.3f, one);
  for (int64_t i = 0; i < H * D; ++i) EXPECT_NEAR(one.data<float>()[i], full.data<float>()[(S - 1) * H * D + i], 1e-6);  // fp32 rounding (GEMM blocking differs)
  // A query that sees nothing (key positions all in its future) yields zeros and lse = -inf.
  std::vector<int32_t> future(S, 100);
  Tensor z = poisoned({1, H, D}), lse = poisoned({1, H});
  cpu::attention(q1, k, v, p1, future, {}, 0.3f, z, &lse);
  for (int64_t i = 0; i < H * D; ++i) EXPECT_EQ(z.data<float>()[i], 0.0f);
  EXPECT_EQ(lse.data<float>()[0], -std::numeric_limits<float>::infinity());
  Tensor bad = Tensor::empty({1, 3, D}, DType::F32);
  EXPECT_THROW(cpu::attention(q1, k, v, p1, pos, {}, 0.3f, bad), Error);
}

// masked_exp_row exponentiates only the span from the first to the last visible key: rows whose visible keys have
// holes (interleaved segments), long hidden heads (a sliding window) and hidden tails longer than its 8-key skip
// (causal rows of T = 37) against the naive reference.
TEST(CpuAttention, VisibleSpansWithHolesHeadsAndLongTails) {
  const int64_t T = 37, Hq = 2, Hkv = 1, D = 8, Dv = 8;
  Tensor q = randn({T, Hq, D}, 7), k = randn({T, Hkv, D}, 8), v = randn({T, Hkv, Dv}, 9);
  std::vector<int32_t> pos(T), seg(T);
  for (int i = 0; i < T; ++i) {
    pos[static_cast<size_t>(i)] = i;
    seg[static_cast<size_t>(i)] = i % 3;  // each query sees every third earlier key
  }
  std::vector<cpu::AttentionMask> masks(3);
  masks[0].q_segments = seg;
  masks[0].k_segments = seg;
  masks[1].sliding_window = 5;
  masks[2].q_segments = seg;  // non-causal, holes on both sides of the query
  masks[2].k_segments = seg;
  masks[2].causal = false;
  for (size_t mi = 0; mi < masks.size(); ++mi) {
    Tensor out = poisoned({T, Hq, Dv});
    cpu::attention(q, k, v, pos, pos, masks[mi], 0.35f, out);
    const auto ref = naive(q, k, v, pos, pos, masks[mi], 0.35);
    EXPECT_LT(rel_err(out.data<float>(), ref.data(), T * Hq * Dv), 1e-5) << "mask " << mi;
  }
}
