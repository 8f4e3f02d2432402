// CUDA MoE kernels vs the CPU references (graft/cpu/moe_ref.hpp, cpu::moe_route, moe_permute_plan):
// routing (+bwd) for every router kind, the device-built plan, permute / unpermute (+bwd), the
// grouped NF4 GEMM (+bwd, LoRA, plain and double-quant absmax) and the whole routed layer
// fwd + bwd, at T ∈ {1, 7, 130, 1000}, E ∈ {4, 64, 128, 256}, top-k ∈ {1, 2, 8}, skewed routing
// (every token to the same experts, the rest empty) and the Qwen3-30B-A3B expert shape.
// Inputs are fresh random per test; outputs are poisoned (NaN / -1) before every launch.
//
// Tolerances. ids / order / pos / counts / offsets / tile_offsets: exact. Router weights and
// d logits: fp32 on both sides, only summation order differs -> 1e-5 / 1e-4 relative.
// Everything bf16: the reference gets the SAME bf16-rounded inputs, LoRA factors and weights
// (NF4 dequantized, rounded to bf16 like the kernels' shared tiles), so what differs is (a) fp32
// summation order (~1e-6) and (b) the bf16 rounding of each intermediate the kernels store
// (z, gu, h, yp, out, dz, dgu, dxp, dx): each rounding adds a relative error uniform in ±2^-9,
// i.e. ≈ 2^-9/√3 ≈ 1.1e-3 rms, so a chain of m roundings gives ≈ 1.1e-3·√m in ‖out−ref‖/‖ref‖.
// Forward chains have m <= 5 (≈ 2.5e-3), backward chains m <= 9 plus SwiGLU' (≈ 3.5e-3..5e-3).
// Bounds are ~4x those: kFwdTol 1e-2, kBwdTol 2e-2. A layout or indexing bug gives O(1).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "graft/cpu/moe_ref.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cuda/device_info.hpp"
#include "moe_cuda_util.hpp"

namespace {
using namespace graft;
using namespace graft::testing::moe;
namespace gm = graft::cuda::moe;
using ops::RouterKind;
using ops::RouterParams;

constexpr double kFwdTol = 1e-2, kBwdTol = 2e-2;

#define REQUIRE_GPU() \
  if (graft::cuda::device_count() == 0) GTEST_SKIP() << "no GPU: " << graft::cuda::no_device_reason()

void sync() { cuda_ok(cudaDeviceSynchronize(), "sync"); }

// ---------------------------------------------------------------- routing
struct RouteCase {
  RouterKind kind;
  int E, k, n_group, topk_group;
  bool renorm;
  float rsf;
  bool ties;  // logits on a coarse grid: many exact ties
};
std::string name_of(const RouteCase& c) {
  const char* kinds[] = {"SoftmaxTopK", "SigmoidGroupTopK", "SoftmaxGroupTopK", "TopKSigmoid"};
  return std::string(kinds[static_cast<int>(c.kind)]) + "_E" + std::to_string(c.E) + "_k" + std::to_string(c.k) + "_g" +
         std::to_string(c.n_group) + "x" + std::to_string(c.topk_group) + (c.renorm ? "_renorm" : "") + (c.ties ? "_ties" : "");
}

class CudaMoeRoute : public ::testing::TestWithParam<RouteCase> {};

TEST_P(CudaMoeRoute, MatchesCpuForwardAndBackward) {
  REQUIRE_GPU();
  const RouteCase c = GetParam();
  for (int64_t T : {1, 7, 130, 1000}) {
    if (kSimt && T > 130) continue;  // CPU time only: T = 130 already spans several blocks per router
    SCOPED_TRACE("T=" + std::to_string(T));
    auto logits = randn(static_cast<size_t>(T * c.E), 1000 + static_cast<uint32_t>(T) + static_cast<uint32_t>(c.E));
    if (c.ties)
      for (auto& v : logits) v = std::round(v * 2.0f) / 2.0f;
    auto bias = randn(static_cast<size_t>(c.E), 5, 0.1f);
    RouterParams p;
    p.kind = c.kind;
    p.top_k = c.k;
    p.renormalize = c.renorm;
    p.n_group = c.n_group;
    p.topk_group = c.topk_group;
    p.routed_scaling_factor = c.rsf;
    const bool use_bias = c.kind == RouterKind::SigmoidGroupTopK;
    // CPU
    Tensor lt = Tensor::wrap(logits.data(), {T, c.E}, DType::F32);
    Tensor ids = Tensor::empty({T, c.k}, DType::I32), w = Tensor::empty({T, c.k}, DType::F32);
    RouterParams pc = p;
    pc.correction_bias = use_bias ? bias.data() : nullptr;
    cpu::moe_route(lt, pc, ids, w);
    // GPU
    Dev<float> dl(logits), db(bias), dw(static_cast<size_t>(T * c.k)), ddz(static_cast<size_t>(T * c.E));
    Dev<int32_t> di(static_cast<size_t>(T * c.k));
    di.poison();
    dw.poison();
    gm::RouteArgs ra;
    ra.logits = dl.p;
    ra.T = T;
    ra.E = c.E;
    ra.params = p;
    ra.params.correction_bias = use_bias ? db.p : nullptr;
    ra.ids = di.p;
    ra.weights = dw.p;
    gm::route(ra, nullptr);
    sync();
    const auto gi = di.download();
    const auto gw = dw.download();
    ASSERT_TRUE(std::equal(gi.begin(), gi.end(), ids.data<int32_t>())) << "expert ids differ";
    EXPECT_LT(rel(gw, std::vector<float>(w.data<float>(), w.data<float>() + T * c.k)), 1e-5);
    // backward
    auto g = randn(static_cast<size_t>(T * c.k), 77);
    Tensor gt = Tensor::wrap(g.data(), {T, c.k}, DType::F32), dz = Tensor::empty({T, c.E}, DType::F32);
    cpu::moe_route_bwd(lt, pc, ids, gt, dz);
    Dev<float> dg(g);
    ddz.poison();
    gm::RouteBwdArgs rb;
    rb.logits = dl.p;
    rb.T = T;
    rb.E = c.E;
    rb.params = p;
    rb.ids = di.p;
    rb.dweights = dg.p;
    rb.dlogits = ddz.p;
    gm::route_bwd(rb, nullptr);
    sync();
    // Relative to max(‖ref‖, 1e-2·rsf·‖g‖): with top-1 renormalisation w ≡ 1, so d logits is only
    // the eps term (~1e-20·g) and both sides are rounding noise (the SIMT run found rel = O(1) there).
    double ng = 0;
    for (float v : g) ng += static_cast<double>(v) * v;
    const std::vector<float> dz_ref(dz.data<float>(), dz.data<float>() + T * c.E);
    double nref = 0;
    for (float v : dz_ref) nref += static_cast<double>(v) * v;
    const double floor = 1e-2 * c.rsf * std::sqrt(ng);
    EXPECT_LT(rel(ddz.download(), dz_ref) * std::sqrt(nref) / std::max(std::sqrt(nref), floor), 1e-4);
  }
}

std::vector<RouteCase> route_cases() {
  std::vector<RouteCase> v;
  for (int E : {4, 64, 128, 256})
    for (int k : {1, 2, 8}) {
      if (k > E) continue;
      for (bool ties : {false, true}) {
        v.push_back({RouterKind::SoftmaxTopK, E, k, 1, 1, true, 1.0f, ties});
        v.push_back({RouterKind::TopKSigmoid, E, k, 1, 1, false, 1.0f, ties});
        const int ng = E >= 8 ? 8 : 2, kg = E >= 8 ? 4 : 2;
        if (k <= kg * (E / ng)) {
          v.push_back({RouterKind::SigmoidGroupTopK, E, k, ng, kg, true, 2.5f, ties});
          v.push_back({RouterKind::SoftmaxGroupTopK, E, k, ng, kg, false, 16.0f, ties});
        }
      }
      v.push_back({RouterKind::SoftmaxTopK, E, k, 1, 1, false, 1.0f, false});
      v.push_back({RouterKind::SigmoidGroupTopK, E, k, 1, 1, true, 1.0f, false});
    }
  return v;
}
INSTANTIATE_TEST_SUITE_P(AllRouters, CudaMoeRoute, ::testing::ValuesIn(route_cases()),
                         [](const auto& info) { return name_of(info.param); });

// ---------------------------------------------------------------- plan
enum class Skew { Random, OneExpert, FirstK };
std::vector<int32_t> make_ids(int64_t T, int k, int E, Skew s, uint32_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  std::mt19937 rng(seed);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> perm(static_cast<size_t>(E));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int j = 0; j < k; ++j) {
      int32_t e = perm[static_cast<size_t>(j)];
      if (s == Skew::OneExpert) e = E - 1;      // every row to the last expert (plan allows repeats)
      if (s == Skew::FirstK) e = (j * 3) % E;   // every token to the same k experts, others empty
      ids[static_cast<size_t>(t * k + j)] = e;
    }
  }
  return ids;
}

TEST(CudaMoePlan, MatchesCpuPlanExactly) {
  REQUIRE_GPU();
  for (int E : {4, 64, 128, 256, 1024})
    for (int k : {1, 2, 8})
      for (int64_t T : {1, 7, 130, 1000})
        for (Skew s : {Skew::Random, Skew::OneExpert, Skew::FirstK}) {
          if (k > E) continue;
          SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k) + " T=" + std::to_string(T) +
                       " skew=" + std::to_string(static_cast<int>(s)));
          const int64_t n = T * k;
          auto ids = make_ids(T, k, E, s, static_cast<uint32_t>(E * 31 + k * 7 + T));
          Tensor it = Tensor::wrap(ids.data(), {n}, DType::I32);
          const auto ref = cpu::moe_permute_plan(it, E);
          const auto pos_ref = cpu::moe_inverse_order(ref);
          std::vector<int32_t> tiles(static_cast<size_t>(E) + 1, 0);
          for (int e = 0; e < E; ++e)
            tiles[static_cast<size_t>(e) + 1] =
                tiles[static_cast<size_t>(e)] + (ref.counts[static_cast<size_t>(e)] + gm::kTileM - 1) / gm::kTileM;
          Dev<int32_t> di(ids);
          DevPlan dp(n, E);
          dp.poison();
          gm::build_plan(di.p, n, E, dp.plan(), dp.ws.p, nullptr);
          sync();
          EXPECT_EQ(dp.order.download(), ref.order);
          EXPECT_EQ(dp.pos.download(), pos_ref);
          EXPECT_EQ(dp.counts.download(), ref.counts);
          EXPECT_EQ(dp.offsets.download(), ref.offsets);
          EXPECT_EQ(dp.tile_offsets.download(), tiles);
          EXPECT_LE(tiles.back(), gm::max_row_tiles(n, E));
        }
}

// ---------------------------------------------------------------- permute / unpermute
TEST(CudaMoePermute, ForwardAndBackwardMatchCpu) {
  REQUIRE_GPU();
  const int64_t H = 264;  // not a multiple of the 256-thread stride
  for (int E : {4, 64, 256})
    for (int k : {1, 2, 8})
      for (int64_t T : {1, 7, 130, 1000})
        for (bool scaled : {false, true}) {
          if (kSimt && T > 130) continue;  // CPU time only
          if (k > E) continue;  // make_ids draws k distinct experts (the SIMT run found E=4, k=8 reading past perm)
          SCOPED_TRACE("E=" + std::to_string(E) + " k=" + std::to_string(k) + " T=" + std::to_string(T) +
                       (scaled ? " scale_input" : " combine"));
          const int64_t n = T * k;
          auto ids = make_ids(T, k, E, Skew::Random, static_cast<uint32_t>(T + k));
          Tensor it = Tensor::wrap(ids.data(), {n}, DType::I32);
          const auto plan = cpu::moe_permute_plan(it, E);
          auto x = randn(static_cast<size_t>(T * H), 3), yp = randn(static_cast<size_t>(n * H), 4),
               dout = randn(static_cast<size_t>(T * H), 5), dxp = randn(static_cast<size_t>(n * H), 6);
          auto w = randn(static_cast<size_t>(n), 7, 0.5f);
          const auto xb = to_bf16(x), ypb = to_bf16(yp), doutb = to_bf16(dout), dxpb = to_bf16(dxp);
          Dev<int32_t> di(ids);
          DevPlan dp(n, E);
          gm::build_plan(di.p, n, E, dp.plan(), dp.ws.p, nullptr);
          Dev<uint16_t> dx(xb), dyp(ypb), ddout(doutb), ddxp(dxpb), oxp(static_cast<size_t>(n * H)),
              oout(static_cast<size_t>(T * H)), odyp(static_cast<size_t>(n * H)), odx(static_cast<size_t>(T * H));
          Dev<float> dw(w), odw(static_cast<size_t>(n)), ods(static_cast<size_t>(n));
          oxp.poison();
          oout.poison();
          odyp.poison();
          odx.poison();
          odw.poison();
          ods.poison();
          const float* sc = scaled ? dw.p : nullptr;
          gm::permute({dx.p, T, H, k, dp.order.p, sc, oxp.p}, nullptr);
          gm::unpermute({dyp.p, T, H, k, dp.pos.p, scaled ? nullptr : dw.p, oout.p}, nullptr);
          gm::unpermute_bwd({dyp.p, ddout.p, T, H, k, dp.pos.p, scaled ? nullptr : dw.p, odyp.p, scaled ? nullptr : odw.p},
                            nullptr);
          gm::permute_bwd({dx.p, ddxp.p, T, H, k, dp.pos.p, sc, odx.p, scaled ? ods.p : nullptr}, nullptr);
          sync();
          std::vector<float> rxp(static_cast<size_t>(n * H)), rout(static_cast<size_t>(T * H)),
              rdyp(static_cast<size_t>(n * H)), rdw(static_cast<size_t>(n)), rdx(static_cast<size_t>(T * H)),
              rds(static_cast<size_t>(n));
          cpu::moe_permute_fwd(x.data(), T, H, k, plan, scaled ? w.data() : nullptr, rxp.data());
          cpu::moe_unpermute_fwd(yp.data(), T, H, k, plan, scaled ? nullptr : w.data(), rout.data());
          cpu::moe_unpermute_bwd(yp.data(), T, H, k, plan, scaled ? nullptr : w.data(), dout.data(), rdyp.data(),
                                 rdw.data());
          cpu::moe_permute_bwd(x.data(), T, H, k, plan, scaled ? w.data() : nullptr, dxp.data(), rdx.data(), rds.data());
          const double gather_tol = scaled ? 4e-3 : 0.0;  // unscaled: a pure copy, bit-exact
          EXPECT_LE(rel(from_bf16(oxp.download()), rxp), gather_tol) << "permute";
          EXPECT_LT(rel(from_bf16(oout.download()), rout), 4e-3) << "unpermute";
          EXPECT_LT(rel(from_bf16(odyp.download()), rdyp), 4e-3) << "unpermute_bwd dyp";
          EXPECT_LT(rel(from_bf16(odx.download()), rdx), 4e-3) << "permute_bwd dx";
          if (scaled) {
            EXPECT_LT(rel(ods.download(), rds), 1e-4) << "permute_bwd dscale";
          } else {
            EXPECT_LT(rel(odw.download(), rdw), 1e-4) << "unpermute_bwd dweights";
          }
        }
}

// ---------------------------------------------------------------- one grouped GEMM
struct GemmCase {
  int E, k;
  int64_t T, N, K;
  int rank;
  bool dq;
  Skew skew;
};

class CudaMoeGroupedGemm : public ::testing::TestWithParam<GemmCase> {};

TEST_P(CudaMoeGroupedGemm, ForwardAndBackwardMatchCpu) {
  REQUIRE_GPU();
  const GemmCase c = GetParam();
  const int64_t n = c.T * c.k;
  auto ids = make_ids(c.T, c.k, c.E, c.skew, 17);
  Tensor it = Tensor::wrap(ids.data(), {n}, DType::I32);
  const auto plan = cpu::moe_permute_plan(it, c.E);
  Dev<int32_t> di(ids);
  DevPlan dp(n, c.E);
  gm::build_plan(di.p, n, c.E, dp.plan(), dp.ws.p, nullptr);
  auto W = make_nf4_stack(c.E, c.N, c.K, c.dq, 23, 0.05f);
  auto x = randn(static_cast<size_t>(n * c.K), 29), dy = randn(static_cast<size_t>(n * c.N), 31);
  auto A = randn(static_cast<size_t>(c.E * c.rank * c.K), 37, 0.05f), B = randn(static_cast<size_t>(c.E * c.N * c.rank), 41, 0.05f);
  const auto xb = to_bf16(x), dyb = to_bf16(dy), Ab = to_bf16(A), Bb = to_bf16(B);
  const float s = 2.0f;
  Dev<uint16_t> dx_in(xb), ddy(dyb), dA(Ab), dB(Bb), z(static_cast<size_t>(n * std::max(c.rank, 1))),
      y(static_cast<size_t>(n * c.N)), dz(static_cast<size_t>(n * std::max(c.rank, 1))), dx(static_cast<size_t>(n * c.K));
  Dev<float> ga(static_cast<size_t>(c.E * c.rank * c.K)), gb(static_cast<size_t>(c.E * c.N * c.rank));
  z.poison();
  y.poison();
  dz.poison();
  dx.poison();
  ga.poison();
  gb.poison();
  gm::GroupedMatmulArgs a;
  a.x = dx_in.p;
  a.n = n;
  a.E = c.E;
  a.offsets = dp.offsets.p;
  a.tile_offsets = dp.tile_offsets.p;
  a.w = W.view();
  a.lora = {dA.p, dB.p, c.rank, s};
  a.z = z.p;
  a.y = y.p;
  gm::grouped_nf4_matmul(a, nullptr);
  gm::GroupedMatmulBwdArgs b;
  b.fwd = a;
  b.dy = ddy.p;
  b.dz = dz.p;
  b.dx = dx.p;
  b.da = c.rank ? ga.p : nullptr;
  b.db = c.rank ? gb.p : nullptr;
  gm::grouped_nf4_matmul_bwd(b, nullptr);
  sync();
  cpu::GroupedLoraRef<float> l{A.data(), B.data(), c.rank, s};
  std::vector<float> ry(static_cast<size_t>(n * c.N)), rdx(static_cast<size_t>(n * c.K)), rda, rdb;
  cpu::moe_grouped_matmul(x.data(), c.K, W.ref.data(), c.N, plan.offsets, l, ry.data());
  cpu::moe_grouped_matmul_bwd(x.data(), c.K, W.ref.data(), c.N, plan.offsets, l, dy.data(), rdx.data(), rda, rdb);
  EXPECT_LT(rel(from_bf16(y.download()), ry), kFwdTol) << "y";
  EXPECT_LT(rel(from_bf16(dx.download()), rdx), kBwdTol) << "dx";
  if (c.rank) {
    EXPECT_LT(rel(ga.download(), rda), kBwdTol) << "dA";
    EXPECT_LT(rel(gb.download(), rdb), kBwdTol) << "dB";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaMoeGroupedGemm,
    ::testing::Values(GemmCase{4, 2, 7, 192, 256, 16, false, Skew::Random},   // partial column tile
                      GemmCase{4, 1, 1, 128, 64, 0, true, Skew::Random},     // one row, no LoRA
                      GemmCase{64, 8, 130, 96, 160, 8, true, Skew::Random},  // many tiny experts
                      GemmCase{128, 8, 130, 256, 128, 64, false, Skew::Random},
                      GemmCase{256, 8, 1000, 64, 96, 16, true, Skew::Random},
                      GemmCase{64, 1, 1000, 200, 48, 16, false, Skew::OneExpert},  // 1000 rows, 1 expert
                      GemmCase{128, 8, 130, 136, 64, 32, true, Skew::FirstK}));

// ---------------------------------------------------------------- the routed layer, fwd + bwd
struct LayerCase {
  const char* name;
  RouterKind kind;
  int E, k, n_group, topk_group;
  int64_t T, H, I;
  int rank;
  bool dq, scale_input, skew;
};

class CudaMoeLayer : public ::testing::TestWithParam<LayerCase> {};

TEST_P(CudaMoeLayer, ForwardAndBackwardMatchCpu) {
  REQUIRE_GPU();
  const LayerCase c = GetParam();
  if (std::string(c.name) == "qwen3_30b_a3b") GRAFT_SKIP_UNDER_SIMT("model-sized shape");
  const int64_t T = c.T, H = c.H, I = c.I, n = T * c.k;
  const int E = c.E, k = c.k, r = c.rank;
  // routing inputs
  auto logits = randn(static_cast<size_t>(T * E), 101);
  if (c.skew)  // every token prefers the same k experts; the others stay empty
    for (int64_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j) logits[static_cast<size_t>(t * E + j)] += 20.0f;
  RouterParams p;
  p.kind = c.kind;
  p.top_k = k;
  p.renormalize = c.kind != RouterKind::TopKSigmoid;
  p.n_group = c.n_group;
  p.topk_group = c.topk_group;
  p.routed_scaling_factor = c.kind == RouterKind::SigmoidGroupTopK ? 2.5f : 1.0f;
  // weights
  auto Wgu = make_nf4_stack(E, 2 * I, H, c.dq, 201, 0.03f), Wd = make_nf4_stack(E, H, I, c.dq, 301, 0.03f);
  auto x = randn(static_cast<size_t>(T * H), 103), dout = randn(static_cast<size_t>(T * H), 107);
  auto Agu = randn(static_cast<size_t>(E * r * H), 109, 0.03f), Bgu = randn(static_cast<size_t>(E * 2 * I * r), 113, 0.03f);
  auto Ad = randn(static_cast<size_t>(E * r * I), 127, 0.03f), Bd = randn(static_cast<size_t>(E * H * r), 131, 0.03f);
  const auto xb = to_bf16(x), doutb = to_bf16(dout), Agub = to_bf16(Agu), Bgub = to_bf16(Bgu), Adb = to_bf16(Ad),
             Bdb = to_bf16(Bd);
  const float sgu = 0.5f, sd = 2.0f;
  // ---- GPU
  Dev<float> dl(logits), dw(static_cast<size_t>(n)), ddw(static_cast<size_t>(n)), ddl(static_cast<size_t>(T * E));
  Dev<int32_t> dids(static_cast<size_t>(n));
  DevPlan dp(n, E);
  Dev<uint16_t> dx(xb), ddout(doutb), dAgu(Agub), dBgu(Bgub), dAd(Adb), dBd(Bdb);
  Dev<uint16_t> xp(static_cast<size_t>(n * H)), gu(static_cast<size_t>(n * 2 * I)), h(static_cast<size_t>(n * I)),
      zgu(static_cast<size_t>(n * std::max(r, 1))), zd(static_cast<size_t>(n * std::max(r, 1))),
      yp(static_cast<size_t>(n * H)), out(static_cast<size_t>(T * H)), dyp(static_cast<size_t>(n * H)),
      dgu(static_cast<size_t>(n * 2 * I)), dz(static_cast<size_t>(n * std::max(r, 1))), dxp(static_cast<size_t>(n * H)),
      dxo(static_cast<size_t>(T * H));
  Dev<float> gagu(static_cast<size_t>(E * r * H)), gbgu(static_cast<size_t>(E * 2 * I * r)),
      gad(static_cast<size_t>(E * r * I)), gbd(static_cast<size_t>(E * H * r));
  for (auto* b : {&xp, &gu, &h, &zgu, &zd, &yp, &out, &dyp, &dgu, &dz, &dxp, &dxo}) b->poison();
  for (auto* b : {&dw, &ddw, &ddl, &gagu, &gbgu, &gad, &gbd}) b->poison();
  dids.poison();
  dp.poison();
  gm::RouteArgs ra;
  ra.logits = dl.p;
  ra.T = T;
  ra.E = E;
  ra.params = p;
  ra.ids = dids.p;
  ra.weights = dw.p;
  gm::route(ra, nullptr);
  gm::build_plan(dids.p, n, E, dp.plan(), dp.ws.p, nullptr);
  const float* in_scale = c.scale_input ? dw.p : nullptr;
  const float* comb = c.scale_input ? nullptr : dw.p;
  gm::permute({dx.p, T, H, k, dp.order.p, in_scale, xp.p}, nullptr);
  gm::ExpertMlpArgs m;
  m.E = E;
  m.n = n;
  m.H = H;
  m.I = I;
  m.offsets = dp.offsets.p;
  m.tile_offsets = dp.tile_offsets.p;
  m.w_gu = Wgu.view();
  m.w_down = Wd.view();
  m.lora_gu = {dAgu.p, dBgu.p, r, sgu};
  m.lora_down = {dAd.p, dBd.p, r, sd};
  const gm::ExpertMlpSaved saved{gu.p, h.p, zgu.p, zd.p};
  gm::expert_mlp_fwd(m, xp.p, saved, yp.p, nullptr);
  gm::unpermute({yp.p, T, H, k, dp.pos.p, comb, out.p}, nullptr);
  // backward
  gm::unpermute_bwd({yp.p, ddout.p, T, H, k, dp.pos.p, comb, dyp.p, c.scale_input ? nullptr : ddw.p}, nullptr);
  gm::expert_mlp_bwd(m, xp.p, saved, dyp.p, {dgu.p, dz.p}, {gagu.p, gbgu.p, gad.p, gbd.p}, dxp.p, nullptr);
  gm::permute_bwd({dx.p, dxp.p, T, H, k, dp.pos.p, in_scale, dxo.p, c.scale_input ? ddw.p : nullptr}, nullptr);
  gm::RouteBwdArgs rb;
  rb.logits = dl.p;
  rb.T = T;
  rb.E = E;
  rb.params = p;
  rb.ids = dids.p;
  rb.dweights = ddw.p;
  rb.dlogits = ddl.p;
  gm::route_bwd(rb, nullptr);
  sync();
  // ---- CPU reference on the same (bf16-rounded) operands
  Tensor lt = Tensor::wrap(logits.data(), {T, E}, DType::F32);
  Tensor ids = Tensor::empty({T, k}, DType::I32), wt = Tensor::empty({T, k}, DType::F32);
  cpu::moe_route(lt, p, ids, wt);
  const auto gids = dids.download();
  ASSERT_TRUE(std::equal(gids.begin(), gids.end(), ids.data<int32_t>())) << "expert ids differ";
  std::vector<float> w(wt.data<float>(), wt.data<float>() + n);
  EXPECT_LT(rel(dw.download(), w), 1e-5) << "router weights";
  const auto plan = cpu::moe_permute_plan(ids, E);
  EXPECT_EQ(dp.offsets.download(), plan.offsets);
  std::vector<float> rxp(static_cast<size_t>(n * H)), rout(static_cast<size_t>(T * H)), rdyp(static_cast<size_t>(n * H)),
      rdw(static_cast<size_t>(n)), rdx(static_cast<size_t>(T * H));
  cpu::moe_permute_fwd(x.data(), T, H, k, plan, c.scale_input ? w.data() : nullptr, rxp.data());
  cpu::ExpertMlpRef<float> rm;
  rm.E = E;
  rm.H = H;
  rm.I = I;
  rm.w_gu = Wgu.ref.data();
  rm.w_down = Wd.ref.data();
  rm.lora_gu = {Agu.data(), Bgu.data(), r, sgu};
  rm.lora_down = {Ad.data(), Bd.data(), r, sd};
  cpu::ExpertMlpCache<float> cache;
  cpu::moe_expert_mlp_fwd(rm, rxp.data(), plan.offsets, cache);
  cpu::moe_unpermute_fwd(cache.y.data(), T, H, k, plan, c.scale_input ? nullptr : w.data(), rout.data());
  cpu::moe_unpermute_bwd(cache.y.data(), T, H, k, plan, c.scale_input ? nullptr : w.data(), dout.data(), rdyp.data(),
                         c.scale_input ? nullptr : rdw.data());
  cpu::ExpertMlpGrads<float> g;
  cpu::moe_expert_mlp_bwd(rm, rxp.data(), plan.offsets, cache, rdyp.data(), g);
  cpu::moe_permute_bwd(x.data(), T, H, k, plan, c.scale_input ? w.data() : nullptr, g.dxp.data(), rdx.data(),
                       c.scale_input ? rdw.data() : nullptr);
  Tensor rdwt = Tensor::wrap(rdw.data(), {T, k}, DType::F32), rdl = Tensor::empty({T, E}, DType::F32);
  cpu::moe_route_bwd(lt, p, ids, rdwt, rdl);

  EXPECT_LT(rel(from_bf16(gu.download()), cache.gu), kFwdTol) << "gate_up pre-activation";
  EXPECT_LT(rel(from_bf16(h.download()), cache.h), kFwdTol) << "h = silu(gate)·up";
  EXPECT_LT(rel(from_bf16(yp.download()), cache.y), kFwdTol) << "expert outputs";
  EXPECT_LT(rel(from_bf16(out.download()), rout), kFwdTol) << "layer output";
  EXPECT_LT(rel(from_bf16(dxp.download()), g.dxp), kBwdTol) << "d xp";
  EXPECT_LT(rel(from_bf16(dxo.download()), rdx), kBwdTol) << "d x";
  EXPECT_LT(rel(ddw.download(), rdw), kBwdTol) << "d combine weights";
  EXPECT_LT(rel(ddl.download(), std::vector<float>(rdl.data<float>(), rdl.data<float>() + T * E)), kBwdTol) << "d logits";
  if (r) {
    EXPECT_LT(rel(gagu.download(), g.da_gu), kBwdTol) << "dA gate_up";
    EXPECT_LT(rel(gbgu.download(), g.db_gu), kBwdTol) << "dB gate_up";
    EXPECT_LT(rel(gad.download(), g.da_down), kBwdTol) << "dA down";
    EXPECT_LT(rel(gbd.download(), g.db_down), kBwdTol) << "dB down";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layers, CudaMoeLayer,
    ::testing::Values(
        LayerCase{"tiny_T1", RouterKind::SoftmaxTopK, 4, 2, 1, 1, 1, 64, 48, 8, false, false, false},
        LayerCase{"E4_T7", RouterKind::SoftmaxTopK, 4, 2, 1, 1, 7, 64, 48, 16, true, false, false},
        LayerCase{"E64_T130_top8", RouterKind::SoftmaxTopK, 64, 8, 1, 1, 130, 128, 96, 16, false, false, false},
        LayerCase{"E256_T1000_deepseek", RouterKind::SigmoidGroupTopK, 256, 8, 8, 4, 1000, 64, 32, 8, true, false, false},
        LayerCase{"E128_skewed", RouterKind::SoftmaxTopK, 128, 2, 1, 1, 1000, 128, 64, 16, false, false, true},
        LayerCase{"llama4_scale_input", RouterKind::TopKSigmoid, 16, 1, 1, 1, 130, 128, 64, 16, true, true, false},
        LayerCase{"v2_group", RouterKind::SoftmaxGroupTopK, 64, 8, 8, 3, 130, 64, 48, 0, false, false, false},
        LayerCase{"qwen3_30b_a3b", RouterKind::SoftmaxTopK, 128, 8, 1, 1, 256, 2048, 768, 16, true, false, false}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
