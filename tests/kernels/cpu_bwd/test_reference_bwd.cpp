// Backward references against central finite differences in double precision, and their float
// forward against the CPU ops the model runs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "../../common/finite_diff.hpp"

using namespace graft;
namespace ref = graft::cpu::ref;
using fdtest::Vec;

using fdtest::dot;
using fdtest::fd_check;
using fdtest::rnd;

TEST(ReferenceBwd, RmsNorm) {
  const int64_t T = 3, H = 7;
  Vec x = rnd(T * H, 1), w = rnd(H, 2), G = rnd(T * H, 3), y(T * H), dx(T * H);
  auto loss = [&] { ref::rmsnorm_fwd(x.data(), w.data(), 1e-6, T, H, y.data()); return dot(y, G); };
  ref::rmsnorm_bwd(x.data(), w.data(), G.data(), 1e-6, T, H, dx.data());
  EXPECT_LT(fd_check(x, dx, loss), 1e-7);
}

TEST(ReferenceBwd, SwiGlu) {
  const int64_t n = 11;
  Vec g = rnd(n, 4, 2.0), u = rnd(n, 5), G = rnd(n, 6), o(n), dg(n), du(n);
  auto loss = [&] { ref::swiglu_fwd(g.data(), u.data(), n, o.data()); return dot(o, G); };
  ref::swiglu_bwd(g.data(), u.data(), G.data(), n, dg.data(), du.data());
  EXPECT_LT(fd_check(g, dg, loss), 1e-7);
  EXPECT_LT(fd_check(u, du, loss), 1e-7);
}

TEST(ReferenceBwd, RopeBothLayoutsAndYarnScaling) {
  const int64_t T = 4, Hn = 2, D = 8;
  std::vector<int32_t> pos = {0, 3, 9, 200};
  for (bool inter : {false, true})
    for (float scaling : {1.0f, 1.3f}) {
      ops::RopeParams p;
      p.rot_dim = 6;  // partial rotary
      auto tab = ops::rope_table(p);
      Vec x = rnd(T * Hn * D, 7), G = rnd(T * Hn * D, 8), dx = G;
      auto loss = [&] {
        Vec y = x;
        ref::rope<double>(y.data(), T, Hn, D, 6, tab.inv_freq, scaling, pos, inter, false);
        return dot(y, G);
      };
      ref::rope_bwd<double>(dx.data(), T, Hn, D, 6, tab.inv_freq, scaling, pos, inter);
      EXPECT_LT(fd_check(x, dx, loss), 1e-7) << inter << " " << scaling;
    }
}

TEST(ReferenceBwd, AttentionGqaMasksAndPacking) {
  const int64_t T = 6, Hq = 4, Hkv = 2, D = 5, Dv = 3;
  std::vector<int32_t> pos = {0, 1, 2, 0, 1, 2}, seg = {0, 0, 0, 1, 1, 1};
  std::vector<ops::AttentionMask> masks(3);
  masks[1].sliding_window = 2;
  masks[2].q_segments = seg;
  masks[2].k_segments = seg;
  for (size_t mi = 0; mi < masks.size(); ++mi) {
    Vec q = rnd(T * Hq * D, 10), k = rnd(T * Hkv * D, 11), v = rnd(T * Hkv * Dv, 12), G = rnd(T * Hq * Dv, 13);
    Vec out(T * Hq * Dv), dq(q.size()), dk(k.size()), dv(v.size());
    const double scale = 0.4;
    auto loss = [&] {
      ref::attention_fwd<double>(q.data(), k.data(), v.data(), T, Hq, D, T, Hkv, Dv, pos, pos, masks[mi], scale, out.data());
      return dot(out, G);
    };
    ref::attention_bwd<double>(q.data(), k.data(), v.data(), G.data(), T, Hq, D, T, Hkv, Dv, pos, pos, masks[mi], scale,
                               dq.data(), dk.data(), dv.data());
    EXPECT_LT(fd_check(q, dq, loss), 1e-6) << "mask " << mi;
    EXPECT_LT(fd_check(k, dk, loss), 1e-6) << "mask " << mi;
    EXPECT_LT(fd_check(v, dv, loss), 1e-6) << "mask " << mi;
  }
}

TEST(ReferenceBwd, CrossEntropyIgnoresMaskedRows) {
  const int64_t T = 5, V = 9;
  std::vector<int32_t> labels = {3, -100, 0, 8, -100};
  Vec l = rnd(T * V, 14, 2.0), dl(T * V);
  ref::cross_entropy<double>(l.data(), labels, T, V, dl.data());
  auto loss = [&] { return ref::cross_entropy<double>(l.data(), labels, T, V, nullptr); };
  EXPECT_LT(fd_check(l, dl, loss), 1e-7);
  for (int64_t i = 0; i < V; ++i) EXPECT_EQ(dl[static_cast<size_t>(V + i)], 0.0);
  std::vector<int32_t> none(T, -100);
  EXPECT_EQ(ref::cross_entropy<double>(l.data(), none, T, V, dl.data()), 0.0);  // no valid label: zero loss
}

TEST(ReferenceBwd, LoraLinear) {
  const int64_t T = 3, K = 6, N = 5, r = 2;
  Vec x = rnd(T * K, 15), W = rnd(N * K, 16), A = rnd(r * K, 17), B = rnd(N * r, 18), G = rnd(T * N, 19), y(T * N);
  Vec dx(x.size()), dA(A.size()), dB(B.size());
  auto loss = [&] { ref::lora_linear_fwd(x.data(), W.data(), A.data(), B.data(), 1.7, T, K, N, r, y.data()); return dot(y, G); };
  ref::lora_linear_bwd(x.data(), W.data(), A.data(), B.data(), 1.7, G.data(), T, K, N, r, dx.data(), dA.data(), dB.data());
  EXPECT_LT(fd_check(x, dx, loss), 1e-7);
  EXPECT_LT(fd_check(A, dA, loss), 1e-7);
  EXPECT_LT(fd_check(B, dB, loss), 1e-7);
}

TEST(ReferenceBwd, FloatForwardMatchesTheModelOps) {
  const int64_t T = 5, Hq = 4, Hkv = 2, D = 8;
  std::mt19937 r(20);
  std::normal_distribution<float> g;
  auto fill = [&](Tensor t) { for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = g(r); return t; };
  Tensor q = fill(Tensor::empty({T, Hq, D}, DType::F32)), k = fill(Tensor::empty({T, Hkv, D}, DType::F32)),
         v = fill(Tensor::empty({T, Hkv, D}, DType::F32)), out = Tensor::empty({T, Hq, D}, DType::F32);
  std::vector<int32_t> pos = {0, 1, 2, 3, 4};
  cpu::attention(q, k, v, pos, pos, {}, 0.35f, out);
  std::vector<float> o2(static_cast<size_t>(T * Hq * D));
  ref::attention_fwd<float>(q.data<float>(), k.data<float>(), v.data<float>(), T, Hq, D, T, Hkv, D, pos, pos, {}, 0.35f,
                            o2.data());
  for (size_t i = 0; i < o2.size(); ++i) EXPECT_NEAR(out.data<float>()[i], o2[i], 1e-5);
  Tensor w = fill(Tensor::empty({D}, DType::F32)), x = q.reshape({T * Hq, D}), y = Tensor::empty({T * Hq, D}, DType::F32);
  cpu::rmsnorm(x, w, 1e-6f, y);
  std::vector<float> y2(static_cast<size_t>(T * Hq * D));
  ref::rmsnorm_fwd<float>(x.data<float>(), w.data<float>(), 1e-6f, T * Hq, D, y2.data());
  for (size_t i = 0; i < y2.size(); ++i) EXPECT_NEAR(y.data<float>()[i], y2[i], 1e-5);
}

TEST(ReferenceBwd, EigenAttentionBackwardMatchesReference) {
  const int64_t T = 9, Hq = 6, Hkv = 2, D = 8, Dv = 5;
  std::vector<int32_t> pos = {0, 1, 2, 3, 0, 1, 2, 3, 4}, seg = {0, 0, 0, 0, 1, 1, 1, 1, 1};
  ops::AttentionMask mk;
  mk.q_segments = seg;
  mk.k_segments = seg;
  std::mt19937 r(30);
  std::normal_distribution<float> g;
  auto fill = [&](Tensor t) { for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = g(r); return t; };
  Tensor q = fill(Tensor::empty({T, Hq, D}, DType::F32)), k = fill(Tensor::empty({T, Hkv, D}, DType::F32)),
         v = fill(Tensor::empty({T, Hkv, Dv}, DType::F32)), dO = fill(Tensor::empty({T, Hq, Dv}, DType::F32));
  Tensor dq = Tensor::empty({T, Hq, D}, DType::F32), dk = Tensor::empty({T, Hkv, D}, DType::F32), dv = Tensor::empty({T, Hkv, Dv}, DType::F32);
  cpu::attention_bwd(q, k, v, dO, pos, pos, mk, 0.3f, dq, dk, dv);
  std::vector<float> rq(static_cast<size_t>(dq.numel())), rk(static_cast<size_t>(dk.numel())), rv(static_cast<size_t>(dv.numel()));
  ref::attention_bwd<float>(q.data<float>(), k.data<float>(), v.data<float>(), dO.data<float>(), T, Hq, D, T, Hkv, Dv, pos, pos, mk,
                            0.3f, rq.data(), rk.data(), rv.data());
  for (size_t i = 0; i < rq.size(); ++i) EXPECT_NEAR(dq.data<float>()[i], rq[i], 1e-5);
  for (size_t i = 0; i < rk.size(); ++i) EXPECT_NEAR(dk.data<float>()[i], rk[i], 1e-5);
  for (size_t i = 0; i < rv.size(); ++i) EXPECT_NEAR(dv.data<float>()[i], rv[i], 1e-5);
}
