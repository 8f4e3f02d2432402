// The training-only backward pieces (graft/train/backward_ref.hpp, lora_dropout.hpp) against central
// finite differences in double precision: router combine weights of every RouterKind for a fixed
// selection, MLA key/value assembly, per-row scaling, the LoRA linear with a dropout mask, and
// composite blocks built from them — DeepSeek MLA attention, Llama 4 attention (RoPE + L2 norm +
// chunked mask, NoPE + temperature) and Llama 4's input-scaled top-k-sigmoid experts. Plus the
// float router weights against cpu::moe_route and the dropout mask's statistics and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/train/backward_ref.hpp"
#include "graft/train/lora_dropout.hpp"
#include "../common/finite_diff.hpp"

using namespace graft;
namespace cref = graft::cpu::ref;
namespace tref = graft::train::ref;
using fdtest::Vec;
using ops::RouterKind;

namespace {
using fdtest::dot;
using fdtest::fd_check;
using fdtest::rnd;
using fdtest::RouterCase;

// y = x·Wᵀ and its input gradient dx = dy·W.   x [T, K], W [N, K]
Vec mm(const Vec& x, const Vec& W, int64_t T, int64_t K, int64_t N) {
  Vec y(static_cast<size_t>(T * N), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) y[static_cast<size_t>(t * N + n)] += x[static_cast<size_t>(t * K + k)] * W[static_cast<size_t>(n * K + k)];
  return y;
}
Vec mm_bwd(const Vec& dy, const Vec& W, int64_t T, int64_t K, int64_t N) {
  Vec dx(static_cast<size_t>(T * K), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) dx[static_cast<size_t>(t * K + k)] += dy[static_cast<size_t>(t * N + n)] * W[static_cast<size_t>(n * K + k)];
  return dx;
}
void add_to(Vec& y, const Vec& x) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += x[i];
}
// ids [T, k] that cpu::moe_route selects for these logits.
std::vector<int32_t> select(const Vec& z, int64_t T, int E, const ops::RouterParams& p, std::vector<float>* w = nullptr) {
  Tensor lg = Tensor::empty({T, E}, DType::F32), ids = Tensor::empty({T, p.top_k}, DType::I32),
         wt = Tensor::empty({T, p.top_k}, DType::F32);
  for (size_t i = 0; i < z.size(); ++i) lg.data<float>()[i] = static_cast<float>(z[i]);
  cpu::moe_route(lg, p, ids, wt);
  if (w) w->assign(wt.data<float>(), wt.data<float>() + wt.numel());
  return {ids.data<int32_t>(), ids.data<int32_t>() + ids.numel()};
}

class RouterWeights : public ::testing::TestWithParam<RouterCase> {};
}  // namespace

TEST_P(RouterWeights, MatchFiniteDifferencesAndTheForwardRouter) {
  const RouterCase rc = GetParam();
  const int64_t T = 6;
  const int E = 8;
  std::vector<float> bias = {0.3f, -0.2f, 0.5f, 0.0f, -0.4f, 0.1f, 0.25f, -0.1f};
  const ops::RouterParams p = rc.params(bias.data());
  Vec z = rnd(static_cast<size_t>(T * E), 21, 1.5), G = rnd(static_cast<size_t>(T * rc.k), 22);
  std::vector<float> w_route;
  const std::vector<int32_t> ids = select(z, T, E, p, &w_route);
  // float weights are exactly what the forward's router returns
  std::vector<float> zf(z.begin(), z.end()), wf(w_route.size());
  tref::router_weights_fwd<float>(zf.data(), ids.data(), T, E, p, wf.data());
  EXPECT_EQ(wf, w_route);
  Vec w(static_cast<size_t>(T * rc.k)), dz(z.size());
  auto loss = [&] {
    tref::router_weights_fwd<double>(z.data(), ids.data(), T, E, p, w.data());
    return dot(w, G);
  };
  tref::router_weights_bwd<double>(z.data(), ids.data(), G.data(), T, E, p, dz.data());
  EXPECT_LT(fd_check(z, dz, loss), 1e-7);
}

INSTANTIATE_TEST_SUITE_P(
    EveryKind, RouterWeights,
    ::testing::Values(RouterCase{RouterKind::SoftmaxTopK, true, 2, 1, 1, 1.0f, false},     // Qwen3-MoE, Mixtral
                      RouterCase{RouterKind::SoftmaxTopK, false, 2, 1, 1, 2.5f, false},    // DeepSeek-V2 greedy × rsf
                      RouterCase{RouterKind::SoftmaxGroupTopK, true, 3, 4, 2, 1.0f, false},  // V2 group-limited, renorm
                      RouterCase{RouterKind::SoftmaxGroupTopK, false, 2, 2, 1, 16.0f, false},
                      RouterCase{RouterKind::SigmoidGroupTopK, true, 2, 2, 1, 2.5f, true},   // DeepSeek-V3
                      RouterCase{RouterKind::SigmoidGroupTopK, false, 3, 4, 2, 2.5f, true},
                      RouterCase{RouterKind::TopKSigmoid, false, 1, 1, 1, 1.0f, false},      // Llama 4
                      RouterCase{RouterKind::TopKSigmoid, false, 2, 1, 1, 1.0f, false}));

TEST(TrainBackwardRef, DeepseekV3BiasChangesTheSelectionNotTheWeights) {
  const int64_t T = 1;
  const int E = 4;
  Vec z = {0.0, 0.1, 0.2, 0.3};
  std::vector<float> bias = {2.0f, 0.0f, 0.0f, 0.0f};
  ops::RouterParams p;
  p.kind = RouterKind::SigmoidGroupTopK;
  p.top_k = 1;
  p.renormalize = false;
  p.routed_scaling_factor = 2.5f;
  EXPECT_EQ(select(z, T, E, p)[0], 3);
  p.correction_bias = bias.data();
  std::vector<float> w;
  EXPECT_EQ(select(z, T, E, p, &w)[0], 0);
  EXPECT_FLOAT_EQ(w[0], 2.5f * 0.5f);  // σ(0)·rsf: the bias is not in the weight
}

TEST(TrainBackwardRef, MlaKeyValueAssembly) {
  const int64_t T = 3, H = 2, dn = 3, dr = 2, dv = 4;
  Vec kv = rnd(static_cast<size_t>(T * H * (dn + dv)), 30), kpe = rnd(static_cast<size_t>(T * dr), 31);
  Vec Gk = rnd(static_cast<size_t>(T * H * (dn + dr)), 32), Gv = rnd(static_cast<size_t>(T * H * dv), 33);
  Vec k(Gk.size()), v(Gv.size()), dkv(kv.size()), dkpe(kpe.size());
  auto loss = [&] {
    tref::mla_kv_fwd<double>(kv.data(), kpe.data(), T, H, dn, dr, dv, k.data(), v.data());
    return dot(k, Gk) + dot(v, Gv);
  };
  tref::mla_kv_bwd<double>(Gk.data(), Gv.data(), T, H, dn, dr, dv, dkv.data(), dkpe.data());
  EXPECT_LT(fd_check(kv, dkv, loss), 1e-8);
  EXPECT_LT(fd_check(kpe, dkpe, loss), 1e-8);
}

TEST(TrainBackwardRef, ScaleRowsAndAttentionTemperature) {
  const int64_t T = 4, n = 5;
  Vec x = rnd(static_cast<size_t>(T * n), 40), s = rnd(static_cast<size_t>(T), 41), G = rnd(x.size(), 42), y(x.size());
  Vec dx(x.size()), ds(s.size());
  auto loss = [&] {
    tref::scale_rows_fwd<double>(x.data(), s.data(), T, n, y.data());
    return dot(y, G);
  };
  tref::scale_rows_bwd<double>(x.data(), s.data(), G.data(), T, n, dx.data(), ds.data());
  EXPECT_LT(fd_check(x, dx, loss), 1e-8);
  EXPECT_LT(fd_check(s, ds, loss), 1e-8);
  // Llama 4: log(floor((pos + 1) / floor_scale) + 1) · attn_scale + 1
  EXPECT_FLOAT_EQ(tref::attn_temperature(0, 8192, 0.1), 1.0f);
  EXPECT_FLOAT_EQ(tref::attn_temperature(8191, 8192, 0.1), static_cast<float>(std::log(2.0) * 0.1 + 1.0));
  EXPECT_FLOAT_EQ(tref::attn_temperature(5, 2, 0.5), static_cast<float>(std::log(4.0) * 0.5 + 1.0));
}

TEST(TrainBackwardRef, LoraLinearWithDropoutMask) {
  const int64_t T = 4, K = 6, N = 5, r = 2;
  Vec x = rnd(static_cast<size_t>(T * K), 50), W = rnd(static_cast<size_t>(N * K), 51), A = rnd(static_cast<size_t>(r * K), 52),
      B = rnd(static_cast<size_t>(N * r), 53), G = rnd(static_cast<size_t>(T * N), 54), y(static_cast<size_t>(T * N));
  Vec m(x.size());
  const std::vector<int32_t> rows = {3, 0, 7, 2};
  train::dropout_scales<double>(train::dropout_key(1, 2, 3, 4), rows, T, K, 0.4, m.data());
  Vec dx(x.size()), dA(A.size()), dB(B.size());
  auto loss = [&] {
    tref::lora_dropout_linear_fwd<double>(x.data(), m.data(), W.data(), A.data(), B.data(), 1.5, T, K, N, r, y.data());
    return dot(y, G);
  };
  tref::lora_dropout_linear_bwd<double>(x.data(), m.data(), W.data(), A.data(), B.data(), 1.5, G.data(), T, K, N, r, dx.data(),
                                        dA.data(), dB.data());
  EXPECT_LT(fd_check(x, dx, loss), 1e-8);
  EXPECT_LT(fd_check(A, dA, loss), 1e-8);
  EXPECT_LT(fd_check(B, dB, loss), 1e-8);
  // All-ones mask: the plain LoRA linear.
  Vec ones(x.size(), 1.0), y1(y.size()), y2(y.size());
  tref::lora_dropout_linear_fwd<double>(x.data(), ones.data(), W.data(), A.data(), B.data(), 1.5, T, K, N, r, y1.data());
  cref::lora_linear_fwd<double>(x.data(), W.data(), A.data(), B.data(), 1.5, T, K, N, r, y2.data());
  for (size_t i = 0; i < y1.size(); ++i) EXPECT_NEAR(y1[i], y2[i], 1e-12);
}

TEST(TrainBackwardRef, DropoutMaskIsInvertedBernoulliAndDeterministic) {
  const int64_t n = 64, cols = 128;
  const double p = 0.3;
  std::vector<float> a(static_cast<size_t>(n * cols)), b(a.size()), c(a.size());
  const uint64_t key = train::dropout_key(42, 5, 1, train::dropout_site(model::Module::Q));
  train::dropout_scales<float>(key, {}, n, cols, p, a.data());
  train::dropout_scales<float>(key, {}, n, cols, p, b.data());
  EXPECT_EQ(a, b);  // a pure function of the key
  int64_t kept = 0;
  for (float v : a) {
    EXPECT_TRUE(v == 0.0f || v == 1.0f / (1.0f - 0.3f));
    kept += v != 0.0f;
  }
  EXPECT_NEAR(static_cast<double>(kept) / static_cast<double>(a.size()), 1.0 - p, 0.02);
  // another draw (step), layer or site gives another mask
  for (uint64_t k2 : {train::dropout_key(42, 6, 1, 0), train::dropout_key(42, 5, 2, 0), train::dropout_key(42, 5, 1, 1),
                      train::dropout_key(43, 5, 1, 0)}) {
    train::dropout_scales<float>(k2, {}, n, cols, p, c.data());
    EXPECT_NE(a, c);
  }
  // rows name tokens: row i of an expert's gathered input uses its token's mask row
  std::vector<int32_t> tok = {5, 9};
  std::vector<float> e(static_cast<size_t>(2 * cols));
  train::dropout_scales<float>(key, tok, 2, cols, p, e.data());
  for (int64_t j = 0; j < cols; ++j) {
    EXPECT_EQ(e[static_cast<size_t>(j)], a[static_cast<size_t>(5 * cols + j)]);
    EXPECT_EQ(e[static_cast<size_t>(cols + j)], a[static_cast<size_t>(9 * cols + j)]);
  }
  EXPECT_EQ(train::dropout_site(model::ExpertProj::Down, 3), 64 + 9 + 2);
}

// DeepSeek MLA block (q_a → q_a_norm → q_b; kv_a → kv_a_norm → kv_b with LoRA; interleaved RoPE on
// the rope dims; packed causal attention; o), composed from the reference pieces, against FD.
TEST(TrainBackwardRef, MlaAttentionBlock) {
  const int64_t T = 5, Hd = 6, nh = 2, dn = 4, dr = 4, dv = 3, dq = dn + dr, qr = 5, kvr = 4, r = 2;
  const std::vector<int32_t> pos = {0, 1, 2, 0, 1}, seg = {0, 0, 0, 1, 1};
  ops::AttentionMask mk;
  mk.q_segments = seg;
  mk.k_segments = seg;
  ops::RopeParams rp;
  rp.rot_dim = static_cast<int>(dr);
  const auto tab = ops::rope_table(rp);
  const double eps = 1e-6, scale = 0.37, ls = 1.5;
  Vec x = rnd(static_cast<size_t>(T * Hd), 60), Wqa = rnd(static_cast<size_t>(qr * Hd), 61, 0.5),
      nq = rnd(static_cast<size_t>(qr), 62), Wqb = rnd(static_cast<size_t>(nh * dq * qr), 63, 0.5),
      Wkva = rnd(static_cast<size_t>((kvr + dr) * Hd), 64, 0.5), nkv = rnd(static_cast<size_t>(kvr), 65),
      Wkvb = rnd(static_cast<size_t>(nh * (dn + dv) * kvr), 66, 0.5), A = rnd(static_cast<size_t>(r * kvr), 67, 0.5),
      B = rnd(static_cast<size_t>(nh * (dn + dv) * r), 68, 0.5), Wo = rnd(static_cast<size_t>(Hd * nh * dv), 69, 0.5),
      G = rnd(static_cast<size_t>(T * Hd), 70);
  struct Acts {
    Vec qa, qan, q, ckv, c, cn, kpe, kv, k, v, out, o;
  } s;
  auto forward = [&]() {
    s.qa = mm(x, Wqa, T, Hd, qr);
    s.qan.resize(s.qa.size());
    cref::rmsnorm_fwd<double>(s.qa.data(), nq.data(), eps, T, qr, s.qan.data());
    s.q = mm(s.qan, Wqb, T, qr, nh * dq);
    Vec pe(static_cast<size_t>(T * nh * dr));
    for (int64_t i = 0; i < T * nh; ++i)
      for (int64_t j = 0; j < dr; ++j) pe[static_cast<size_t>(i * dr + j)] = s.q[static_cast<size_t>(i * dq + dn + j)];
    cref::rope<double>(pe.data(), T, nh, dr, static_cast<int>(dr), tab.inv_freq, tab.attention_scaling, pos, true, false);
    for (int64_t i = 0; i < T * nh; ++i)
      for (int64_t j = 0; j < dr; ++j) s.q[static_cast<size_t>(i * dq + dn + j)] = pe[static_cast<size_t>(i * dr + j)];
    s.ckv = mm(x, Wkva, T, Hd, kvr + dr);
    s.c.assign(static_cast<size_t>(T * kvr), 0);
    s.kpe.assign(static_cast<size_t>(T * dr), 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < kvr; ++j) s.c[static_cast<size_t>(t * kvr + j)] = s.ckv[static_cast<size_t>(t * (kvr + dr) + j)];
      for (int64_t j = 0; j < dr; ++j) s.kpe[static_cast<size_t>(t * dr + j)] = s.ckv[static_cast<size_t>(t * (kvr + dr) + kvr + j)];
    }
    s.cn.resize(s.c.size());
    cref::rmsnorm_fwd<double>(s.c.data(), nkv.data(), eps, T, kvr, s.cn.data());
    cref::rope<double>(s.kpe.data(), T, 1, dr, static_cast<int>(dr), tab.inv_freq, tab.attention_scaling, pos, true, false);
    s.kv.resize(static_cast<size_t>(T * nh * (dn + dv)));
    cref::lora_linear_fwd<double>(s.cn.data(), Wkvb.data(), A.data(), B.data(), ls, T, kvr, nh * (dn + dv), r, s.kv.data());
    s.k.resize(static_cast<size_t>(T * nh * dq));
    s.v.resize(static_cast<size_t>(T * nh * dv));
    tref::mla_kv_fwd<double>(s.kv.data(), s.kpe.data(), T, nh, dn, dr, dv, s.k.data(), s.v.data());
    s.out.resize(static_cast<size_t>(T * nh * dv));
    cref::attention_fwd<double>(s.q.data(), s.k.data(), s.v.data(), T, nh, dq, T, nh, dv, pos, pos, mk, scale, s.out.data());
    s.o = mm(s.out, Wo, T, nh * dv, Hd);
    return dot(s.o, G);
  };
  forward();
  // backward, the chain mla_backward.cpp runs
  Vec dout = mm_bwd(G, Wo, T, nh * dv, Hd), dqv(s.q.size()), dk(s.k.size()), dvv(s.v.size());
  cref::attention_bwd<double>(s.q.data(), s.k.data(), s.v.data(), dout.data(), T, nh, dq, T, nh, dv, pos, pos, mk, scale,
                              dqv.data(), dk.data(), dvv.data());
  Vec dkv(s.kv.size()), dkpe(s.kpe.size()), dcn(s.cn.size()), dA(A.size()), dB(B.size());
  tref::mla_kv_bwd<double>(dk.data(), dvv.data(), T, nh, dn, dr, dv, dkv.data(), dkpe.data());
  cref::rope_bwd<double>(dkpe.data(), T, 1, dr, static_cast<int>(dr), tab.inv_freq, tab.attention_scaling, pos, true);
  cref::lora_linear_bwd<double>(s.cn.data(), Wkvb.data(), A.data(), B.data(), ls, dkv.data(), T, kvr, nh * (dn + dv), r,
                                dcn.data(), dA.data(), dB.data());
  Vec dc(s.c.size()), dckv(s.ckv.size());
  cref::rmsnorm_bwd<double>(s.c.data(), nkv.data(), dcn.data(), eps, T, kvr, dc.data());
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < kvr; ++j) dckv[static_cast<size_t>(t * (kvr + dr) + j)] = dc[static_cast<size_t>(t * kvr + j)];
    for (int64_t j = 0; j < dr; ++j) dckv[static_cast<size_t>(t * (kvr + dr) + kvr + j)] = dkpe[static_cast<size_t>(t * dr + j)];
  }
  Vec dx = mm_bwd(dckv, Wkva, T, Hd, kvr + dr);
  Vec pe(static_cast<size_t>(T * nh * dr));
  for (int64_t i = 0; i < T * nh; ++i)
    for (int64_t j = 0; j < dr; ++j) pe[static_cast<size_t>(i * dr + j)] = dqv[static_cast<size_t>(i * dq + dn + j)];
  cref::rope_bwd<double>(pe.data(), T, nh, dr, static_cast<int>(dr), tab.inv_freq, tab.attention_scaling, pos, true);
  for (int64_t i = 0; i < T * nh; ++i)
    for (int64_t j = 0; j < dr; ++j) dqv[static_cast<size_t>(i * dq + dn + j)] = pe[static_cast<size_t>(i * dr + j)];
  Vec dqan = mm_bwd(dqv, Wqb, T, qr, nh * dq), dqa(s.qa.size());
  cref::rmsnorm_bwd<double>(s.qa.data(), nq.data(), dqan.data(), eps, T, qr, dqa.data());
  add_to(dx, mm_bwd(dqa, Wqa, T, Hd, qr));
  EXPECT_LT(fd_check(x, dx, forward), 1e-6);
  EXPECT_LT(fd_check(A, dA, forward), 1e-6);
  EXPECT_LT(fd_check(B, dB, forward), 1e-6);
}

// Llama 4 attention: interleaved RoPE + weightless L2 norm + chunked mask (RoPE layer), or the
// temperature-scaled q with a plain causal mask (NoPE layer); GQA.
TEST(TrainBackwardRef, Llama4AttentionRopeL2ChunkedAndNopeTemperature) {
  const int64_t T = 6, Hd = 5, nh = 2, nkv = 1, D = 4;
  const std::vector<int32_t> pos = {0, 1, 2, 3, 4, 5};
  ops::RopeParams rp;
  rp.rot_dim = static_cast<int>(D);
  const auto tab = ops::rope_table(rp);
  const double eps = 1e-5, scale = 0.5;
  const Vec one(static_cast<size_t>(D), 1.0);
  for (bool rope_layer : {true, false}) {
    ops::AttentionMask mk;
    if (rope_layer) mk.chunk_size = 4;
    Vec x = rnd(static_cast<size_t>(T * Hd), 80), Wq = rnd(static_cast<size_t>(nh * D * Hd), 81, 0.6),
        Wk = rnd(static_cast<size_t>(nkv * D * Hd), 82, 0.6), Wv = rnd(static_cast<size_t>(nkv * D * Hd), 83, 0.6),
        G = rnd(static_cast<size_t>(T * nh * D), 84);
    Vec temp(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) temp[static_cast<size_t>(t)] = tref::attn_temperature(pos[static_cast<size_t>(t)], 2.0, 0.5);
    Vec q, k, v, qr, kr, out(static_cast<size_t>(T * nh * D));
    auto forward = [&]() {
      q = mm(x, Wq, T, Hd, nh * D);
      k = mm(x, Wk, T, Hd, nkv * D);
      v = mm(x, Wv, T, Hd, nkv * D);
      if (rope_layer) {
        cref::rope<double>(q.data(), T, nh, D, static_cast<int>(D), tab.inv_freq, 1.0f, pos, true, false);
        cref::rope<double>(k.data(), T, nkv, D, static_cast<int>(D), tab.inv_freq, 1.0f, pos, true, false);
        qr = q;
        kr = k;
        cref::rmsnorm_fwd<double>(qr.data(), one.data(), eps, T * nh, D, q.data());
        cref::rmsnorm_fwd<double>(kr.data(), one.data(), eps, T * nkv, D, k.data());
      } else {
        tref::scale_rows_fwd<double>(q.data(), temp.data(), T, nh * D, q.data());
      }
      cref::attention_fwd<double>(q.data(), k.data(), v.data(), T, nh, D, T, nkv, D, pos, pos, mk, scale, out.data());
      return dot(out, G);
    };
    forward();
    Vec dq(q.size()), dk(k.size()), dv(v.size());
    cref::attention_bwd<double>(q.data(), k.data(), v.data(), G.data(), T, nh, D, T, nkv, D, pos, pos, mk, scale, dq.data(),
                                dk.data(), dv.data());
    if (rope_layer) {
      Vec t1(dq.size()), t2(dk.size());
      cref::rmsnorm_bwd<double>(qr.data(), one.data(), dq.data(), eps, T * nh, D, t1.data());
      cref::rmsnorm_bwd<double>(kr.data(), one.data(), dk.data(), eps, T * nkv, D, t2.data());
      dq = t1;
      dk = t2;
      cref::rope_bwd<double>(dq.data(), T, nh, D, static_cast<int>(D), tab.inv_freq, 1.0f, pos, true);
      cref::rope_bwd<double>(dk.data(), T, nkv, D, static_cast<int>(D), tab.inv_freq, 1.0f, pos, true);
    } else {
      tref::scale_rows_fwd<double>(dq.data(), temp.data(), T, nh * D, dq.data());
    }
    Vec dx = mm_bwd(dq, Wq, T, Hd, nh * D);
    add_to(dx, mm_bwd(dk, Wk, T, Hd, nkv * D));
    add_to(dx, mm_bwd(dv, Wv, T, Hd, nkv * D));
    EXPECT_LT(fd_check(x, dx, forward), 1e-6) << (rope_layer ? "rope layer" : "nope layer");
  }
}

// Routed experts with the router on the path to x, for a fixed selection: Llama 4 (top-k sigmoid,
// weight on the expert INPUT) and DeepSeek-V3 (sigmoid, renorm, × rsf, weight on the OUTPUT); each
// expert a linear map, the router gradient flowing back through the router weight.
TEST(TrainBackwardRef, RoutedExpertsWithInputOrOutputWeights) {
  const int64_t T = 4, H = 5;
  const int E = 4;
  for (bool llama4 : {true, false}) {
    ops::RouterParams p;
    p.kind = llama4 ? RouterKind::TopKSigmoid : RouterKind::SigmoidGroupTopK;
    p.top_k = 2;
    p.renormalize = !llama4;
    p.routed_scaling_factor = llama4 ? 1.0f : 2.5f;
    const int k = p.top_k;
    Vec x = rnd(static_cast<size_t>(T * H), 90), Wr = rnd(static_cast<size_t>(E * H), 91), We = rnd(static_cast<size_t>(E * H * H), 92, 0.5),
        G = rnd(static_cast<size_t>(T * H), 93);
    const std::vector<int32_t> ids = select(mm(x, Wr, T, H, E), T, E, p);
    Vec z, w(static_cast<size_t>(T * k));
    auto forward = [&]() {
      z = mm(x, Wr, T, H, E);
      tref::router_weights_fwd<double>(z.data(), ids.data(), T, E, p, w.data());
      Vec out(static_cast<size_t>(T * H), 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) {
          const int e = ids[static_cast<size_t>(t * k + j)];
          const double wt = w[static_cast<size_t>(t * k + j)];
          for (int64_t o = 0; o < H; ++o) {
            double y = 0;
            for (int64_t i = 0; i < H; ++i) y += We[static_cast<size_t>((e * H + o) * H + i)] * x[static_cast<size_t>(t * H + i)] * (llama4 ? wt : 1.0);
            out[static_cast<size_t>(t * H + o)] += llama4 ? y : wt * y;
          }
        }
      return dot(out, G);
    };
    forward();
    Vec dx(x.size(), 0.0), dw(w.size(), 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j) {
        const int e = ids[static_cast<size_t>(t * k + j)];
        const double wt = w[static_cast<size_t>(t * k + j)];
        Vec dxe(static_cast<size_t>(H), 0.0);  // d(expert input)
        double yg = 0;
        for (int64_t o = 0; o < H; ++o) {
          const double dy = (llama4 ? 1.0 : wt) * G[static_cast<size_t>(t * H + o)];
          double y = 0;
          for (int64_t i = 0; i < H; ++i) {
            dxe[static_cast<size_t>(i)] += dy * We[static_cast<size_t>((e * H + o) * H + i)];
            y += We[static_cast<size_t>((e * H + o) * H + i)] * x[static_cast<size_t>(t * H + i)];
          }
          yg += y * G[static_cast<size_t>(t * H + o)];
        }
        Vec xt(x.begin() + t * H, x.begin() + (t + 1) * H), d1(static_cast<size_t>(H));
        double ds = 0;
        const double s1 = llama4 ? wt : 1.0;
        tref::scale_rows_bwd<double>(xt.data(), &s1, dxe.data(), 1, H, d1.data(), &ds);
        for (int64_t i = 0; i < H; ++i) dx[static_cast<size_t>(t * H + i)] += d1[static_cast<size_t>(i)];
        dw[static_cast<size_t>(t * k + j)] = llama4 ? ds : yg;
      }
    Vec dz(z.size());
    tref::router_weights_bwd<double>(z.data(), ids.data(), dw.data(), T, E, p, dz.data());
    add_to(dx, mm_bwd(dz, Wr, T, H, E));
    EXPECT_LT(fd_check(x, dx, forward), 1e-6) << (llama4 ? "llama4" : "deepseek_v3");
  }
}
