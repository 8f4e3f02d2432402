// CPU MoE references checked against double-precision central finite differences on tiny shapes:
// router backward (every RouterKind, with/without renorm, routed scaling, groups, correction bias),
// permute/unpermute, grouped expert MLP with per-expert LoRA, and a cross-check of the forward
// against CpuBackend::moe_experts (which uses separate gate/up adapters: stacked into the fused one).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/cpu/moe_ref.hpp"
#include "graft/cpu/ops.hpp"
#include "../../common/finite_diff.hpp"

namespace {
using namespace graft;
using graft::ops::RouterKind;
using graft::ops::RouterParams;

using fdtest::RouterCase;
using fdtest::rnd;
double rel(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  // Relative, except against an (analytically) zero reference (softmax top-1 with renorm: w = 1).
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-2);
}
// Central differences of f at v (every entry).
std::vector<double> fd(std::vector<double>& v, const std::function<double()>& f, double h = 1e-6) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double old = v[i];
    v[i] = old + h;
    const double fp = f();
    v[i] = old - h;
    const double fm = f();
    v[i] = old;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// Combine weights of a fixed selection, in double, written from the model formulas (not the ref).
std::vector<double> route_weights(const std::vector<double>& z, int T, int E, const RouterParams& p,
                                  const std::vector<int32_t>& ids) {
  const int k = p.top_k;
  std::vector<double> w(static_cast<size_t>(T * k));
  for (int t = 0; t < T; ++t) {
    std::vector<double> s(static_cast<size_t>(E));
    const double* zt = z.data() + t * E;
    if (p.kind == RouterKind::SoftmaxTopK || p.kind == RouterKind::SoftmaxGroupTopK) {
      double m = zt[0], sum = 0;
      for (int e = 1; e < E; ++e) m = std::max(m, zt[e]);
      for (int e = 0; e < E; ++e) sum += (s[static_cast<size_t>(e)] = std::exp(zt[e] - m));
      for (auto& x : s) x /= sum;
    } else {
      for (int e = 0; e < E; ++e) s[static_cast<size_t>(e)] = 1.0 / (1.0 + std::exp(-zt[e]));
    }
    double D = 0;
    for (int j = 0; j < k; ++j) D += s[static_cast<size_t>(ids[static_cast<size_t>(t * k + j)])];
    if (p.kind != RouterKind::SoftmaxTopK) D += 1e-20;
    const bool renorm = p.renormalize && p.kind != RouterKind::TopKSigmoid;
    for (int j = 0; j < k; ++j) {
      const double se = s[static_cast<size_t>(ids[static_cast<size_t>(t * k + j)])];
      w[static_cast<size_t>(t * k + j)] = p.routed_scaling_factor * (renorm ? se / D : se);
    }
  }
  return w;
}

class RouteBwd : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouteBwd, MatchesFiniteDifferences) {
  const RouterCase c = GetParam();
  const int T = 6, E = 16;
  std::vector<float> bias = {0.1f, -0.2f, 0.05f, 0.3f, 0.0f, -0.1f, 0.2f, 0.15f,
                             -0.3f, 0.25f, 0.0f, 0.1f, -0.05f, 0.05f, 0.2f, -0.15f};
  const RouterParams p = c.params(bias.data());
  std::vector<double> z = rnd(static_cast<size_t>(T * E), 11 + static_cast<uint32_t>(c.kind));
  Tensor logits = Tensor::empty({T, E}, DType::F32);
  for (int i = 0; i < T * E; ++i) {
    z[static_cast<size_t>(i)] = static_cast<float>(z[static_cast<size_t>(i)]);  // exactly representable
    logits.data<float>()[i] = static_cast<float>(z[static_cast<size_t>(i)]);
  }
  Tensor ids = Tensor::empty({T, c.k}, DType::I32), w = Tensor::empty({T, c.k}, DType::F32);
  cpu::moe_route(logits, p, ids, w);
  std::vector<int32_t> idv(ids.data<int32_t>(), ids.data<int32_t>() + T * c.k);
  // The forward's weights follow the formula we differentiate.
  const std::vector<double> wd = route_weights(z, T, E, p, idv);
  std::vector<double> wf(w.data<float>(), w.data<float>() + T * c.k);
  EXPECT_LT(rel(wf, wd), 1e-6);
  const std::vector<double> g = rnd(static_cast<size_t>(T * c.k), 7);
  Tensor dw = Tensor::empty({T, c.k}, DType::F32), dz = Tensor::empty({T, E}, DType::F32);
  for (int i = 0; i < T * c.k; ++i) dw.data<float>()[i] = static_cast<float>(g[static_cast<size_t>(i)]);
  cpu::moe_route_bwd(logits, p, ids, dw, dz);
  const std::vector<double> num = fd(z, [&] {
    const auto wv = route_weights(z, T, E, p, idv);
    double l = 0;
    for (size_t i = 0; i < wv.size(); ++i) l += wv[i] * g[i];
    return l;
  });
  std::vector<double> got(dz.data<float>(), dz.data<float>() + T * E);
  EXPECT_LT(rel(got, num), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, RouteBwd,
    ::testing::Values(RouterCase{RouterKind::SoftmaxTopK, true, 4, 1, 1, 1.0f, false},
                      RouterCase{RouterKind::SoftmaxTopK, false, 4, 1, 1, 1.0f, false},
                      RouterCase{RouterKind::SoftmaxTopK, true, 1, 1, 1, 1.0f, false},
                      RouterCase{RouterKind::SigmoidGroupTopK, true, 4, 4, 2, 2.5f, true},
                      RouterCase{RouterKind::SigmoidGroupTopK, false, 3, 4, 2, 2.5f, true},
                      RouterCase{RouterKind::SigmoidGroupTopK, true, 2, 1, 1, 1.0f, false},
                      RouterCase{RouterKind::SoftmaxGroupTopK, true, 3, 4, 2, 16.0f, false},
                      RouterCase{RouterKind::SoftmaxGroupTopK, false, 3, 4, 3, 1.0f, false},
                      RouterCase{RouterKind::TopKSigmoid, false, 1, 1, 1, 1.0f, false},
                      RouterCase{RouterKind::TopKSigmoid, true, 2, 1, 1, 1.0f, false}));

// ---------------------------------------------------------------- the routed expert layer
struct Layer {
  int T = 5, k = 2, E = 4;
  int64_t H = 8, I = 6;
  int r = 3;
  ops::MoePermutation plan;
  std::vector<double> x, w, wgu, wd, agu, bgu, ad, bd;
  double s_gu = 0.5, s_d = 2.0;
};

Layer make_layer(uint32_t seed) {
  Layer L;
  // Routing: expert 3 never chosen (empty expert), the others shared unevenly.
  std::vector<double> logits = rnd(static_cast<size_t>(L.T * L.E), seed);
  for (int t = 0; t < L.T; ++t) logits[static_cast<size_t>(t * L.E + 3)] = -20.0;
  Tensor lt = Tensor::empty({L.T, L.E}, DType::F32);
  for (int i = 0; i < L.T * L.E; ++i) lt.data<float>()[i] = static_cast<float>(logits[static_cast<size_t>(i)]);
  Tensor ids = Tensor::empty({L.T, L.k}, DType::I32), wt = Tensor::empty({L.T, L.k}, DType::F32);
  RouterParams p;
  p.top_k = L.k;
  cpu::moe_route(lt, p, ids, wt);
  L.plan = cpu::moe_permute_plan(ids, L.E);
  L.w.assign(wt.data<float>(), wt.data<float>() + L.T * L.k);
  L.x = rnd(static_cast<size_t>(L.T * L.H), seed + 1);
  L.wgu = rnd(static_cast<size_t>(L.E * 2 * L.I * L.H), seed + 2, 0.4);
  L.wd = rnd(static_cast<size_t>(L.E * L.H * L.I), seed + 3, 0.4);
  L.agu = rnd(static_cast<size_t>(L.E * L.r * L.H), seed + 4, 0.3);
  L.bgu = rnd(static_cast<size_t>(L.E * 2 * L.I * L.r), seed + 5, 0.3);
  L.ad = rnd(static_cast<size_t>(L.E * L.r * L.I), seed + 6, 0.3);
  L.bd = rnd(static_cast<size_t>(L.E * L.H * L.r), seed + 7, 0.3);
  return L;
}

cpu::ExpertMlpRef<double> mlp_of(const Layer& L) {
  cpu::ExpertMlpRef<double> m;
  m.E = L.E;
  m.H = L.H;
  m.I = L.I;
  m.w_gu = L.wgu.data();
  m.w_down = L.wd.data();
  m.lora_gu = {L.agu.data(), L.bgu.data(), L.r, L.s_gu};
  m.lora_down = {L.ad.data(), L.bd.data(), L.r, L.s_d};
  return m;
}

std::vector<double> layer_fwd(const Layer& L, bool scale_input) {
  const int64_t n = L.T * L.k;
  std::vector<double> xp(static_cast<size_t>(n * L.H)), out(static_cast<size_t>(L.T * L.H));
  cpu::moe_permute_fwd(L.x.data(), L.T, L.H, L.k, L.plan, scale_input ? L.w.data() : nullptr, xp.data());
  cpu::ExpertMlpCache<double> c;
  cpu::moe_expert_mlp_fwd(mlp_of(L), xp.data(), L.plan.offsets, c);
  cpu::moe_unpermute_fwd(c.y.data(), L.T, L.H, L.k, L.plan, scale_input ? nullptr : L.w.data(), out.data());
  return out;
}

class LayerBwd : public ::testing::TestWithParam<bool> {};

TEST_P(LayerBwd, MatchesFiniteDifferences) {
  const bool scale_input = GetParam();
  Layer L = make_layer(scale_input ? 40 : 20);
  ASSERT_EQ(L.plan.counts[3], 0);
  const int64_t n = L.T * L.k;
  const std::vector<double> R = rnd(static_cast<size_t>(L.T * L.H), 99);
  // analytic
  std::vector<double> xp(static_cast<size_t>(n * L.H)), dyp(static_cast<size_t>(n * L.H)), dw(static_cast<size_t>(n)),
      dx(static_cast<size_t>(L.T * L.H)), dscale(static_cast<size_t>(n));
  cpu::moe_permute_fwd(L.x.data(), L.T, L.H, L.k, L.plan, scale_input ? L.w.data() : nullptr, xp.data());
  cpu::ExpertMlpCache<double> c;
  const auto m = mlp_of(L);
  cpu::moe_expert_mlp_fwd(m, xp.data(), L.plan.offsets, c);
  cpu::moe_unpermute_bwd(c.y.data(), L.T, L.H, L.k, L.plan, scale_input ? nullptr : L.w.data(), R.data(), dyp.data(),
                         scale_input ? nullptr : dw.data());
  cpu::ExpertMlpGrads<double> g;
  cpu::moe_expert_mlp_bwd(m, xp.data(), L.plan.offsets, c, dyp.data(), g);
  cpu::moe_permute_bwd(L.x.data(), L.T, L.H, L.k, L.plan, scale_input ? L.w.data() : nullptr, g.dxp.data(), dx.data(),
                       scale_input ? dscale.data() : nullptr);
  if (scale_input) dw = dscale;
  auto loss = [&] {
    const auto out = layer_fwd(L, scale_input);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += out[i] * R[i];
    return l;
  };
  EXPECT_LT(rel(dx, fd(L.x, loss)), 1e-7) << "dx";
  EXPECT_LT(rel(dw, fd(L.w, loss)), 1e-7) << "d combine weights";
  EXPECT_LT(rel(g.da_gu, fd(L.agu, loss)), 1e-7) << "dA gate_up";
  EXPECT_LT(rel(g.db_gu, fd(L.bgu, loss)), 1e-7) << "dB gate_up";
  EXPECT_LT(rel(g.da_down, fd(L.ad, loss)), 1e-7) << "dA down";
  EXPECT_LT(rel(g.db_down, fd(L.bd, loss)), 1e-7) << "dB down";
  // The empty expert's LoRA gradients are exactly zero.
  for (int64_t i = 0; i < L.r * L.H; ++i) EXPECT_EQ(g.da_gu[static_cast<size_t>(3 * L.r * L.H + i)], 0.0);
}

INSTANTIATE_TEST_SUITE_P(CombineOrScaleInput, LayerBwd, ::testing::Values(false, true));

// The fp32 oracle agrees with the double path (same code, different scalar).
TEST(MoeRef, FloatMatchesDouble) {
  Layer L = make_layer(5);
  const int64_t n = L.T * L.k;
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  const auto xf = f(L.x), wguf = f(L.wgu), wdf = f(L.wd), aguf = f(L.agu), bguf = f(L.bgu), adf = f(L.ad), bdf = f(L.bd);
  std::vector<float> xp(static_cast<size_t>(n * L.H));
  cpu::moe_permute_fwd(xf.data(), L.T, L.H, L.k, L.plan, static_cast<const float*>(nullptr), xp.data());
  cpu::ExpertMlpRef<float> m;
  m.E = L.E;
  m.H = L.H;
  m.I = L.I;
  m.w_gu = wguf.data();
  m.w_down = wdf.data();
  m.lora_gu = {aguf.data(), bguf.data(), L.r, static_cast<float>(L.s_gu)};
  m.lora_down = {adf.data(), bdf.data(), L.r, static_cast<float>(L.s_d)};
  cpu::ExpertMlpCache<float> c;
  cpu::moe_expert_mlp_fwd(m, xp.data(), L.plan.offsets, c);
  std::vector<double> xpd(static_cast<size_t>(n * L.H));
  cpu::moe_permute_fwd(L.x.data(), L.T, L.H, L.k, L.plan, static_cast<const double*>(nullptr), xpd.data());
  cpu::ExpertMlpCache<double> cd;
  cpu::moe_expert_mlp_fwd(mlp_of(L), xpd.data(), L.plan.offsets, cd);
  EXPECT_LT(rel(std::vector<double>(c.y.begin(), c.y.end()), cd.y), 1e-5);
}

// Forward agrees with CpuBackend::moe_experts (separate gate / up LoRA stacked into the fused
// gate_up adapter: A = [A_g; A_u], B = blockdiag(B_g, B_u), one scale).
TEST(MoeRef, ForwardMatchesCpuBackend) {
  for (bool scale_input : {false, true}) {
    Layer L = make_layer(scale_input ? 77 : 66);
    const int r = L.r;
    // Separate adapters: gate uses rows 0..r-1 of the stacked A, up uses r..2r-1.
    std::vector<double> ag = rnd(static_cast<size_t>(L.E * r * L.H), 1, 0.3), au = rnd(static_cast<size_t>(L.E * r * L.H), 2, 0.3);
    std::vector<double> bg = rnd(static_cast<size_t>(L.E * L.I * r), 3, 0.3), bu = rnd(static_cast<size_t>(L.E * L.I * r), 4, 0.3);
    const int r2 = 2 * r;
    L.agu.assign(static_cast<size_t>(L.E * r2 * L.H), 0.0);
    L.bgu.assign(static_cast<size_t>(L.E * 2 * L.I * r2), 0.0);
    for (int e = 0; e < L.E; ++e) {
      for (int i = 0; i < r; ++i)
        for (int64_t h = 0; h < L.H; ++h) {
          L.agu[static_cast<size_t>((e * r2 + i) * L.H + h)] = ag[static_cast<size_t>((e * r + i) * L.H + h)];
          L.agu[static_cast<size_t>((e * r2 + r + i) * L.H + h)] = au[static_cast<size_t>((e * r + i) * L.H + h)];
        }
      for (int64_t o = 0; o < L.I; ++o)
        for (int i = 0; i < r; ++i) {
          L.bgu[static_cast<size_t>((e * 2 * L.I + o) * r2 + i)] = bg[static_cast<size_t>((e * L.I + o) * r + i)];
          L.bgu[static_cast<size_t>((e * 2 * L.I + L.I + o) * r2 + r + i)] = bu[static_cast<size_t>((e * L.I + o) * r + i)];
        }
    }
    auto m = mlp_of(L);
    m.lora_gu.rank = r2;
    std::vector<double> xp(static_cast<size_t>(L.T * L.k * L.H)), ref(static_cast<size_t>(L.T * L.H));
    cpu::moe_permute_fwd(L.x.data(), L.T, L.H, L.k, L.plan, scale_input ? L.w.data() : nullptr, xp.data());
    cpu::ExpertMlpCache<double> c;
    cpu::moe_expert_mlp_fwd(m, xp.data(), L.plan.offsets, c);
    cpu::moe_unpermute_fwd(c.y.data(), L.T, L.H, L.k, L.plan, scale_input ? nullptr : L.w.data(), ref.data());

    auto tf = [](const double* p, const Dims& d) {
      Tensor t = Tensor::empty(d, DType::F32);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(p[i]);
      return t;
    };
    ExpertWeights ex;
    std::vector<LoraFactors> fg(static_cast<size_t>(L.E)), fu(static_cast<size_t>(L.E)), fdn(static_cast<size_t>(L.E));
    ExpertLora el;
    el.gate.resize(1);
    el.up.resize(1);
    el.down.resize(1);
    for (int e = 0; e < L.E; ++e) {
      LinearWeight G, U, D;
      G.out = U.out = L.I;
      G.in = U.in = L.H;
      D.out = L.H;
      D.in = L.I;
      G.dense = tf(L.wgu.data() + e * 2 * L.I * L.H, {L.I, L.H});
      U.dense = tf(L.wgu.data() + (e * 2 * L.I + L.I) * L.H, {L.I, L.H});
      D.dense = tf(L.wd.data() + e * L.H * L.I, {L.H, L.I});
      ex.gate.push_back(G);
      ex.up.push_back(U);
      ex.down.push_back(D);
      const size_t se = static_cast<size_t>(e);
      fg[se] = {tf(ag.data() + e * r * L.H, {r, L.H}), tf(bg.data() + e * L.I * r, {L.I, r}), static_cast<float>(L.s_gu)};
      fu[se] = {tf(au.data() + e * r * L.H, {r, L.H}), tf(bu.data() + e * L.I * r, {L.I, r}), static_cast<float>(L.s_gu)};
      fdn[se] = {tf(L.ad.data() + e * r * L.I, {r, L.I}), tf(L.bd.data() + e * L.H * r, {L.H, r}), static_cast<float>(L.s_d)};
      el.gate[0].push_back(&fg[se]);
      el.up[0].push_back(&fu[se]);
      el.down[0].push_back(&fdn[se]);
    }
    Tensor x = tf(L.x.data(), {L.T, L.H}), w = tf(L.w.data(), {L.T, L.k}), out = Tensor::empty({L.T, L.H}, DType::F32);
    Tensor ids = Tensor::empty({L.T, L.k}, DType::I32);
    for (size_t p = 0; p < L.plan.order.size(); ++p) {
      const int32_t f = L.plan.order[p];
      int e = 0;
      while (!(static_cast<int32_t>(p) >= L.plan.offsets[static_cast<size_t>(e)] &&
               static_cast<int32_t>(p) < L.plan.offsets[static_cast<size_t>(e) + 1]))
        ++e;
      ids.data<int32_t>()[f] = e;
    }
    std::vector<int32_t> row_slot(static_cast<size_t>(L.T), 0);
    auto be = cpu::make_backend();
    be->moe_experts(x, ids, w, ex, &el, row_slot, scale_input, out);
    std::vector<double> got(out.data<float>(), out.data<float>() + L.T * L.H);
    EXPECT_LT(rel(got, ref), 1e-5) << "scale_input " << scale_input;
  }
}

}  // namespace
