// CUDA multi-LoRA serving kernels vs the CPU references (graft/cpu/serve_ref.hpp): the device plan,
// SGMV shrink/expand, BGMV shrink/expand (and the SGMV shrink feeding the BGMV expand), MoE-LoRA
// virtual experts, descriptor validation. Sweep: batch sizes {1, 2, 3, 7, 16, 33, 64, 133} ×
// popularity {distinct, uniform, Zipf 1.5, identical} × ranks {1, 8, 16, 64, 128} mixed in every
// batch (plus 3, 100 and 256 in dedicated cases), about 1/8 of the rows without adapter, keys
// without rows (empty segments) interleaved with used ones, a single projection (N = 200) and a
// fused q/k/v (256 / 64 / 64 columns inside a wider y), split-K 1 / 3 / auto, adapters at
// scattered offsets of one device pool (one deliberately not 16-byte aligned). Inputs are fresh
// random per case; v is poisoned (NaN) before every shrink; y starts random (it is `+=`) and rows
// without adapter must come back bit-identical.
//
// Tolerances. The references get the SAME bf16-rounded x, A, B and y0, and accumulate in double.
// v (f32 out): only f32 summation order differs, K <= 520 terms: ~1e-6 relative -> bound 1e-4.
// y (bf16 out, +=): the kernel rounds y0 + Δ once to bf16 (relative error uniform in ±2^-9, rms
// 2^-9/√3 ≈ 1.1e-3 of |y|); SGMV also rounds scale·v to bf16 (the reference emulates that
// rounding, so only values on a rounding boundary can differ by one bf16 ulp — negligible in the
// norm). With y0 drawn at half the scale of Δ, ‖y − y_ref‖/‖y_ref‖ ≈ 1.1e-3 and the delta's
// error ‖(y − y0) − Δ_ref‖/‖Δ_ref‖ ≈ 1.1e-3·√(1 + 0.25) ≈ 1.3e-3. Bounds: 5e-3 on y, 1e-2 on Δ
// (4-8x the expected value). An indexing, slice or segment bug gives O(1).
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "serve_cuda_util.hpp"

namespace {
using namespace graft;
using namespace graft::testing::serve;
namespace cs = graft::cuda::serve;
namespace sr = graft::cpu::serve;

constexpr double kVTol = 1e-4, kYTol = 5e-3, kDeltaTol = 1e-2;

void sync() { cuda_ok(cudaDeviceSynchronize(), "sync"); }

struct Layout {
  int64_t K;
  std::vector<int64_t> n, off;
  int64_t ldy;
};
Layout single_layout() { return {520, {200}, {0}, 200}; }
Layout qkv_layout() { return {264, {256, 64, 64}, {0, 256, 320}, 390}; }

// One batch: keys per row, the key -> adapter map, host x / y0, device buffers.
struct Batch {
  int64_t T = 0;
  int num_keys = 0;
  std::vector<int32_t> keys;
  std::vector<int> key_adapter;
  std::vector<float> x, y0;
  Dev<uint16_t> dx, dy;
  Dev<int32_t> dkeys;
};

// Adapters of the batch are mapped to keys through a random permutation of num_keys = used + 3
// keys, so keys without rows sit between used ones; ~1/8 of rows get key -1 (one row also gets an
// out-of-range key, which also means "no adapter").
Batch make_batch(Popularity pop, int64_t T, const Layout& L, int pool_size, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  b.T = T;
  const int max_adapters = std::min<int>(pool_size, static_cast<int>(T));
  auto rows = popularity_rows(pop, T, max_adapters, rng);
  const int used = *std::max_element(rows.begin(), rows.end()) + 1;
  b.num_keys = used + 3;
  std::vector<int> perm(static_cast<size_t>(b.num_keys));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  b.key_adapter.assign(static_cast<size_t>(b.num_keys), -1);
  const int offset = static_cast<int>(rng() % static_cast<uint32_t>(pool_size));  // which pool adapters
  for (int a = 0; a < used; ++a) b.key_adapter[static_cast<size_t>(perm[static_cast<size_t>(a)])] = (a + offset) % pool_size;
  b.keys.resize(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) b.keys[static_cast<size_t>(t)] = perm[static_cast<size_t>(rows[static_cast<size_t>(t)])];
  if (T >= 2)
    for (int64_t t = 0; t < T; ++t)
      if (rng() % 8 == 0 && t != 0) b.keys[static_cast<size_t>(t)] = -1;
  if (T >= 3) b.keys[static_cast<size_t>(T - 1)] = b.num_keys + 5;  // out of range: no adapter
  b.x = randn(static_cast<size_t>(T * L.K), seed + 1);
  b.y0 = randn(static_cast<size_t>(T * L.ldy), seed + 2, 0.5f);
  b.dx = Dev<uint16_t>(to_bf16(b.x));
  b.dy = Dev<uint16_t>(to_bf16(b.y0));
  b.dkeys = Dev<int32_t>(b.keys);
  return b;
}

struct DevPlan {
  Dev<int32_t> sorted, counts, offsets, tiles, cursor;
  DevPlan(int64_t n, int num_keys)
      : sorted(static_cast<size_t>(std::max<int64_t>(n, 1))), counts(static_cast<size_t>(num_keys) + 1),
        offsets(static_cast<size_t>(num_keys) + 2), tiles(static_cast<size_t>(num_keys) + 1),
        cursor(static_cast<size_t>(num_keys) + 1) {}
  cs::LoraPlan plan() { return {sorted.p, counts.p, offsets.p, tiles.p, cursor.p}; }
  cs::LoraPlanView view() const { return {sorted.p, offsets.p, tiles.p}; }
  void poison() {
    sorted.poison();
    counts.poison();
    offsets.poison();
    tiles.poison();
  }
};

// Checks the device plan against cpu::serve::lora_plan: counts / offsets / tiles exactly, the rows
// of every bucket as a set (the device order inside a bucket is unspecified).
void expect_plan(const DevPlan& dp, const std::vector<int32_t>& keys, int num_keys) {
  const auto ref = sr::lora_plan(keys, num_keys, cs::kSgmvTileM);
  const auto counts = dp.counts.download(), offsets = dp.offsets.download(), tiles = dp.tiles.download();
  EXPECT_EQ(counts, ref.counts);
  EXPECT_EQ(offsets, ref.offsets);
  EXPECT_EQ(tiles, ref.tile_offsets);
  const auto sorted = dp.sorted.download();
  for (int b = 0; b <= num_keys; ++b) {
    const auto lo = static_cast<size_t>(ref.offsets[static_cast<size_t>(b)]), hi = static_cast<size_t>(ref.offsets[static_cast<size_t>(b) + 1]);
    std::multiset<int32_t> got(sorted.begin() + static_cast<int64_t>(lo), sorted.begin() + static_cast<int64_t>(hi)),
        want(ref.sorted_rows.begin() + static_cast<int64_t>(lo), ref.sorted_rows.begin() + static_cast<int64_t>(hi));
    EXPECT_EQ(got, want) << "rows of bucket " << b;
  }
}

// y after the kernels vs the reference: untouched rows bit-identical, the rest within tolerance.
void expect_y(const Batch& b, const Layout& L, const std::vector<uint16_t>& got_bits, const std::vector<float>& ref,
              const char* what) {
  const auto got = from_bf16(got_bits);
  std::vector<float> g_rows, r_rows, dg, dr;
  for (int64_t t = 0; t < b.T; ++t) {
    const int32_t key = b.keys[static_cast<size_t>(t)];
    const bool adapted = key >= 0 && key < b.num_keys && b.key_adapter[static_cast<size_t>(key)] >= 0;
    for (int64_t c = 0; c < L.ldy; ++c) {
      const size_t i = static_cast<size_t>(t * L.ldy + c);
      if (!adapted || ref[i] == b.y0[i]) {  // untouched (no adapter, rank-0 slice, spare column)
        ASSERT_EQ(got_bits[i], f32_to_bf16(b.y0[i])) << what << ": untouched y[" << t << ", " << c << "] changed";
        continue;
      }
      g_rows.push_back(got[i]);
      r_rows.push_back(ref[i]);
      dg.push_back(got[i] - b.y0[i]);
      dr.push_back(ref[i] - b.y0[i]);
    }
  }
  if (r_rows.empty()) return;
  EXPECT_LT(rel(g_rows, r_rows), kYTol) << what;
  // The rounding of y to bf16 is relative to |y|, so when the delta is much smaller than y0 (one
  // row, rank 1, a small v) its relative error grows by |y|/|Δ|: the bound scales with that ratio
  // (found by the SIMT run: T = 1, rank 1 gave 4.8e-2 with ‖Δ‖ ≈ 0.02‖y‖).
  double ny = 0, nd = 0;
  for (size_t i = 0; i < r_rows.size(); ++i) {
    ny += static_cast<double>(r_rows[i]) * r_rows[i];
    nd += static_cast<double>(dr[i]) * dr[i];
  }
  const double ratio = std::sqrt(ny / std::max(nd, 1e-300));
  EXPECT_LT(rel(dg, dr), kDeltaTol * std::max(1.0, ratio)) << what << " (delta), ‖y‖/‖Δ‖ = " << ratio;
}

struct Case {
  int64_t T;
  Popularity pop;
  bool qkv;
  int splits;  // 0 = lora_shrink_splits
};
std::string name_of(const Case& c) {
  return std::string("T") + std::to_string(c.T) + "_" + name_of(c.pop) + (c.qkv ? "_qkv" : "_single") + "_split" +
         std::to_string(c.splits);
}

class CudaServeLora : public ::testing::TestWithParam<Case> {};

TEST_P(CudaServeLora, SgmvAndBgmvMatchCpu) {
  GRAFT_REQUIRE_GPU();
  const Case c = GetParam();
  const Layout L = c.qkv ? qkv_layout() : single_layout();
  const uint32_t seed = static_cast<uint32_t>(c.T * 131 + static_cast<int>(c.pop) * 17 + (c.qkv ? 7 : 0) + c.splits);
  const int pool_size = static_cast<int>(std::min<int64_t>(c.T, 64));
  AdapterPool pool(pool_size, L.K, L.n, {1, 8, 16, 64, 128}, seed, /*misalign=*/c.T % 2 == 1);
  Batch b = make_batch(c.pop, c.T, L, pool_size, seed + 3);
  const int ns = static_cast<int>(L.n.size());
  DevTable table(b.num_keys, ns);
  table.fill(pool, b.key_adapter);
  table.upload();
  const auto tref = DevTable::ref(pool, b.key_adapter, ns);
  std::vector<sr::LoraSliceRef> sref;
  cs::LoraBatchDims dims;
  dims.T = c.T;
  dims.K = L.K;
  dims.num_slices = ns;
  for (int i = 0; i < ns; ++i) {
    dims.slices[i] = {L.n[static_cast<size_t>(i)], L.off[static_cast<size_t>(i)]};
    sref.push_back({L.n[static_cast<size_t>(i)], L.off[static_cast<size_t>(i)]});
  }
  dims.max_rank = 128;
  dims.splits = c.splits > 0 ? c.splits : cs::lora_shrink_splits(c.T, L.K, ns, b.num_keys);

  // references
  std::vector<float> v_ref(static_cast<size_t>(ns * c.T * dims.max_rank), 0.0f);
  sr::lora_shrink(b.x.data(), c.T, L.K, L.K, b.keys, b.num_keys, tref, ns, dims.max_rank, v_ref.data());
  auto y_sgmv_ref = b.y0, y_bgmv_ref = b.y0;
  sr::multi_lora_acc(b.x.data(), c.T, L.K, L.K, b.keys, b.num_keys, tref, sref, y_sgmv_ref.data(), L.ldy, true);
  sr::multi_lora_acc(b.x.data(), c.T, L.K, L.K, b.keys, b.num_keys, tref, sref, y_bgmv_ref.data(), L.ldy, false);

  // the v entries a shrink must write: adapted (slice, row, j < rank)
  auto check_v = [&](const std::vector<float>& v, const char* what) {
    std::vector<float> got, want;
    for (int i = 0; i < ns; ++i)
      for (int64_t t = 0; t < c.T; ++t) {
        const int32_t key = b.keys[static_cast<size_t>(t)];
        if (key < 0 || key >= b.num_keys) continue;
        const auto& f = tref[static_cast<size_t>(key * ns + i)];
        for (int j = 0; j < f.rank; ++j) {
          double s = 0;
          for (int sp = 0; sp < dims.splits; ++sp)
            s += v[static_cast<size_t>(((static_cast<int64_t>(sp) * ns + i) * c.T + t) * dims.max_rank + j)];
          got.push_back(static_cast<float>(s));
          want.push_back(v_ref[static_cast<size_t>((i * c.T + t) * dims.max_rank + j)]);
        }
      }
    EXPECT_LT(rel(got, want), kVTol) << what;
  };

  Dev<float> v(dims.v_elems());
  DevPlan dp(c.T, b.num_keys);
  // ---- SGMV
  dp.poison();
  cs::lora_plan({b.dkeys.p, c.T, b.num_keys, dp.plan()}, nullptr);
  v.poison();
  cs::SgmvShrinkDesc sd;
  sd.dims = dims;
  sd.table = table.view();
  sd.plan = dp.view();
  sd.x = b.dx.p;
  sd.v = v.p;
  cs::sgmv_shrink(sd, nullptr);
  cs::SgmvExpandDesc ed;
  ed.dims = dims;
  ed.table = table.view();
  ed.plan = dp.view();
  ed.v = v.p;
  ed.y = b.dy.p;
  ed.ldy = L.ldy;
  cs::sgmv_expand(ed, nullptr);
  sync();
  expect_plan(dp, b.keys, b.num_keys);
  const auto v_sgmv = v.download();
  check_v(v_sgmv, "sgmv_shrink v");
  expect_y(b, L, b.dy.download(), y_sgmv_ref, "sgmv");

  // ---- BGMV (fresh y)
  b.dy.upload(to_bf16(b.y0));
  v.poison();
  cs::BgmvShrinkDesc bs;
  bs.dims = dims;
  bs.table = table.view();
  bs.row_key = b.dkeys.p;
  bs.x = b.dx.p;
  bs.v = v.p;
  cs::bgmv_shrink(bs, nullptr);
  cs::BgmvExpandDesc be;
  be.dims = dims;
  be.table = table.view();
  be.row_key = b.dkeys.p;
  be.v = v.p;
  be.y = b.dy.p;
  be.ldy = L.ldy;
  cs::bgmv_expand(be, nullptr);
  sync();
  check_v(v.download(), "bgmv_shrink v");
  expect_y(b, L, b.dy.download(), y_bgmv_ref, "bgmv");

  // ---- SGMV shrink -> BGMV expand (v is indexed by the original row in both)
  b.dy.upload(to_bf16(b.y0));
  v.upload(v_sgmv);
  cs::bgmv_expand(be, nullptr);
  sync();
  expect_y(b, L, b.dy.download(), y_bgmv_ref, "sgmv_shrink + bgmv_expand");
}

std::vector<Case> lora_cases() {
  std::vector<Case> v;
  for (int64_t T : {1, 2, 3, 7, 16, 33, 64, 133})
    for (Popularity p : {Popularity::Distinct, Popularity::Uniform, Popularity::Zipf, Popularity::Identical})
      for (bool qkv : {false, true}) v.push_back({T, p, qkv, T % 3 == 0 ? 3 : (T % 2 ? 1 : 0)});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Batches, CudaServeLora, ::testing::ValuesIn(lora_cases()),
                         [](const auto& info) { return name_of(info.param); });

// Ranks outside the main mix: 3 (contiguous B tile, odd), 100 (> 64, not a multiple of 8: scalar B
// path, two rank chunks), 256 (four chunks, 16-byte path), 1; one adapter per row, fused q/k/v.
TEST(CudaServeLoraRanks, OddAndLargeRanks) {
  GRAFT_REQUIRE_GPU();
  const Layout L = qkv_layout();
  const int ns = 3;
  AdapterPool pool(4, L.K, L.n, {3, 100, 256, 1}, 77, true, false);
  const int64_t T = 19;
  std::vector<int32_t> keys(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) keys[static_cast<size_t>(t)] = static_cast<int32_t>(t % 5) - 1;
  Batch b;
  b.T = T;
  b.num_keys = 4;
  b.keys = keys;
  b.key_adapter = {0, 1, 2, 3};
  b.x = randn(static_cast<size_t>(T * L.K), 78);
  b.y0 = randn(static_cast<size_t>(T * L.ldy), 79, 0.5f);
  b.dx = Dev<uint16_t>(to_bf16(b.x));
  b.dy = Dev<uint16_t>(to_bf16(b.y0));
  b.dkeys = Dev<int32_t>(keys);
  DevTable table(4, ns);
  table.fill(pool, b.key_adapter);
  table.upload();
  const auto tref = DevTable::ref(pool, b.key_adapter, ns);
  cs::LoraBatchDims dims;
  dims.T = T;
  dims.K = L.K;
  dims.num_slices = ns;
  std::vector<sr::LoraSliceRef> sref;
  for (int i = 0; i < ns; ++i) {
    dims.slices[i] = {L.n[static_cast<size_t>(i)], L.off[static_cast<size_t>(i)]};
    sref.push_back({L.n[static_cast<size_t>(i)], L.off[static_cast<size_t>(i)]});
  }
  dims.max_rank = 256;
  dims.splits = 2;
  auto ys = b.y0, yb = b.y0;
  sr::multi_lora_acc(b.x.data(), T, L.K, L.K, keys, 4, tref, sref, ys.data(), L.ldy, true);
  sr::multi_lora_acc(b.x.data(), T, L.K, L.K, keys, 4, tref, sref, yb.data(), L.ldy, false);
  Dev<float> v(dims.v_elems());
  v.poison();
  DevPlan dp(T, 4);
  cs::lora_plan({b.dkeys.p, T, 4, dp.plan()}, nullptr);
  cs::SgmvShrinkDesc sd;
  sd.dims = dims;
  sd.table = table.view();
  sd.plan = dp.view();
  sd.x = b.dx.p;
  sd.v = v.p;
  cs::sgmv_shrink(sd, nullptr);
  cs::SgmvExpandDesc ed;
  ed.dims = dims;
  ed.table = table.view();
  ed.plan = dp.view();
  ed.v = v.p;
  ed.y = b.dy.p;
  ed.ldy = L.ldy;
  cs::sgmv_expand(ed, nullptr);
  sync();
  expect_y(b, L, b.dy.download(), ys, "sgmv ranks 3/100/256/1");
  b.dy.upload(to_bf16(b.y0));
  v.poison();
  cs::BgmvShrinkDesc bsd;
  bsd.dims = dims;
  bsd.table = table.view();
  bsd.row_key = b.dkeys.p;
  bsd.x = b.dx.p;
  bsd.v = v.p;
  cs::bgmv_shrink(bsd, nullptr);
  cs::BgmvExpandDesc bed;
  bed.dims = dims;
  bed.table = table.view();
  bed.row_key = b.dkeys.p;
  bed.v = v.p;
  bed.y = b.dy.p;
  bed.ldy = L.ldy;
  cs::bgmv_expand(bed, nullptr);
  sync();
  expect_y(b, L, b.dy.download(), yb, "bgmv ranks 3/100/256/1");
}

// No row has an adapter: nothing may change; every key is an empty segment.
TEST(CudaServeLoraRanks, NoAdaptedRowsLeaveYUntouched) {
  GRAFT_REQUIRE_GPU();
  const Layout L = single_layout();
  AdapterPool pool(2, L.K, L.n, {16}, 5);
  const int64_t T = 40;
  Batch b;
  b.T = T;
  b.num_keys = 2;
  b.keys.assign(static_cast<size_t>(T), -1);
  b.key_adapter = {0, 1};
  b.x = randn(static_cast<size_t>(T * L.K), 6);
  b.y0 = randn(static_cast<size_t>(T * L.ldy), 7);
  b.dx = Dev<uint16_t>(to_bf16(b.x));
  const auto y0bits = to_bf16(b.y0);
  b.dy = Dev<uint16_t>(y0bits);
  b.dkeys = Dev<int32_t>(b.keys);
  DevTable table(2, 1);
  table.fill(pool, b.key_adapter);
  table.upload();
  cs::LoraBatchDims dims;
  dims.T = T;
  dims.K = L.K;
  dims.slices[0] = {200, 0};
  dims.max_rank = 16;
  Dev<float> v(dims.v_elems());
  DevPlan dp(T, 2);
  cs::lora_plan({b.dkeys.p, T, 2, dp.plan()}, nullptr);
  cs::SgmvShrinkDesc sd;
  sd.dims = dims;
  sd.table = table.view();
  sd.plan = dp.view();
  sd.x = b.dx.p;
  sd.v = v.p;
  cs::sgmv_shrink(sd, nullptr);
  cs::SgmvExpandDesc ed;
  ed.dims = dims;
  ed.table = table.view();
  ed.plan = dp.view();
  ed.v = v.p;
  ed.y = b.dy.p;
  cs::sgmv_expand(ed, nullptr);
  cs::BgmvExpandDesc be;
  be.dims = dims;
  be.table = table.view();
  be.row_key = b.dkeys.p;
  be.v = v.p;
  be.y = b.dy.p;
  cs::bgmv_expand(be, nullptr);
  sync();
  EXPECT_EQ(b.dy.download(), y0bits);
  expect_plan(dp, b.keys, 2);
}

// MoE-LoRA: virtual expert keys on the MoE permutation, one SGMV launch for every (slot, expert).
TEST(CudaServeMoeLora, VirtualExpertsMatchCpu) {
  GRAFT_REQUIRE_GPU();
  const int64_t T = 33, H = 264;
  const int k = 2, E = 8, slots = 5;
  std::mt19937 rng(91);
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t e0 = static_cast<int32_t>(rng() % E);
    ids[static_cast<size_t>(t * k)] = e0;
    ids[static_cast<size_t>(t * k + 1)] = (e0 + 1 + static_cast<int32_t>(rng() % (E - 1))) % E;
  }
  std::vector<int32_t> token_slot(static_cast<size_t>(T));
  for (auto& s : token_slot) s = static_cast<int32_t>(rng() % (slots + 1)) - 1;
  // The MoE plan's order (cpu::moe_permute_plan == graft::cuda::moe::build_plan by contract).
  std::vector<std::pair<int32_t, int32_t>> by_expert;
  for (int32_t f = 0; f < T * k; ++f) by_expert.push_back({ids[static_cast<size_t>(f)], f});
  std::stable_sort(by_expert.begin(), by_expert.end(), [](auto a, auto b) { return a.first < b.first; });
  std::vector<int32_t> order;
  for (auto& pr : by_expert) order.push_back(pr.second);
  const int64_t n = T * k;
  const int num_keys = slots * E;
  const Layout L{H, {96, 96}, {0, 96}, 192};  // gate / up
  AdapterPool pool(num_keys, H, L.n, {8, 16, 1, 64}, 92);
  std::vector<int> key_adapter(static_cast<size_t>(num_keys));
  std::iota(key_adapter.begin(), key_adapter.end(), 0);
  key_adapter[3] = -1;  // (slot 0, expert 3) has no LoRA
  DevTable table(num_keys, 2);
  table.fill(pool, key_adapter);
  table.upload();
  const auto tref = DevTable::ref(pool, key_adapter, 2);
  auto x = randn(static_cast<size_t>(T * H), 93);
  to_bf16(x);
  std::vector<float> xp(static_cast<size_t>(n * H));
  for (int64_t p = 0; p < n; ++p) std::copy_n(x.begin() + order[static_cast<size_t>(p)] / k * H, H, xp.begin() + p * H);
  Batch b;
  b.T = n;
  b.num_keys = num_keys;
  b.key_adapter = key_adapter;
  b.keys = sr::moe_lora_keys(order, ids, token_slot, k, E, slots);
  b.x = xp;
  b.y0 = randn(static_cast<size_t>(n * L.ldy), 94, 0.5f);
  b.dx = Dev<uint16_t>(to_bf16(b.x));
  b.dy = Dev<uint16_t>(to_bf16(b.y0));
  Dev<int32_t> dorder(order), dids(ids), dslot(token_slot);
  b.dkeys = Dev<int32_t>(static_cast<size_t>(n));
  b.dkeys.poison();
  cs::MoeLoraKeysDesc kd;
  kd.order = dorder.p;
  kd.expert_ids = dids.p;
  kd.token_slot = dslot.p;
  kd.T = T;
  kd.k = k;
  kd.E = E;
  kd.num_slots = slots;
  kd.keys = b.dkeys.p;
  cs::moe_lora_keys(kd, nullptr);
  sync();
  ASSERT_EQ(b.dkeys.download(), b.keys);
  cs::LoraBatchDims dims;
  dims.T = n;
  dims.K = H;
  dims.num_slices = 2;
  dims.slices[0] = {96, 0};
  dims.slices[1] = {96, 96};
  dims.max_rank = 64;
  dims.splits = 1;
  auto yref = b.y0;
  const std::vector<sr::LoraSliceRef> sref = {{96, 0}, {96, 96}};
  sr::multi_lora_acc(b.x.data(), n, H, H, b.keys, num_keys, tref, sref, yref.data(), L.ldy, true);
  Dev<float> v(dims.v_elems());
  v.poison();
  DevPlan dp(n, num_keys);
  cs::lora_plan({b.dkeys.p, n, num_keys, dp.plan()}, nullptr);
  cs::SgmvShrinkDesc sd;
  sd.dims = dims;
  sd.table = table.view();
  sd.plan = dp.view();
  sd.x = b.dx.p;
  sd.v = v.p;
  cs::sgmv_shrink(sd, nullptr);
  cs::SgmvExpandDesc ed;
  ed.dims = dims;
  ed.table = table.view();
  ed.plan = dp.view();
  ed.v = v.p;
  ed.y = b.dy.p;
  cs::sgmv_expand(ed, nullptr);
  sync();
  expect_plan(dp, b.keys, num_keys);
  expect_y(b, L, b.dy.download(), yref, "moe-lora sgmv");
}

// ---------------------------------------------------------------- validation (no GPU needed)
std::string msg(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

TEST(CudaServeValidate, LoraDescriptorsNameTheViolatedCondition) {
  cs::LoraBatchDims dims;
  dims.T = 8;
  dims.K = 100;
  dims.max_rank = 16;
  dims.slices[0] = {64, 0};
  EXPECT_NE(msg([&] { dims.validate("t", true); }).find("multiple of 8"), std::string::npos);
  dims.K = 128;
  dims.max_rank = 300;
  EXPECT_NE(msg([&] { dims.validate("t", true); }).find("max_rank = 300"), std::string::npos);
  dims.max_rank = 16;
  dims.num_slices = 2;
  dims.slices[1] = {64, 32};
  EXPECT_NE(msg([&] { dims.validate("t", true); }).find("overlap"), std::string::npos);
  dims.slices[1] = {63, 64};
  EXPECT_NE(msg([&] { dims.validate("t", true); }).find("even"), std::string::npos);
  dims.slices[1] = {64, 64};
  EXPECT_EQ(msg([&] { dims.validate("t", true); }), "no error");
  cs::SgmvShrinkDesc sd;
  sd.dims = dims;
  EXPECT_NE(msg([&] { sd.validate(); }).find("num_keys"), std::string::npos);
  sd.table.num_keys = 2;
  EXPECT_NE(msg([&] { sd.validate(); }).find("table.a"), std::string::npos);
  cs::LoraPlanDesc pd;
  pd.num_keys = 0;
  EXPECT_NE(msg([&] { pd.validate(); }).find("num_keys = 0"), std::string::npos);
  cs::BgmvExpandDesc be;
  be.dims = dims;
  be.dims.T = 70000;
  be.table.num_keys = 1;
  be.table.b = reinterpret_cast<const uint16_t* const*>(16);
  be.table.rank = reinterpret_cast<const int32_t*>(16);
  be.table.scale = reinterpret_cast<const float*>(16);
  EXPECT_NE(msg([&] { be.validate(); }).find("65535"), std::string::npos);
  cs::MoeLoraKeysDesc kd;
  kd.k = 9;
  EXPECT_NE(msg([&] { kd.validate(); }).find("k = 9"), std::string::npos);
}

TEST(CudaServeValidate, AttentionDescriptorsNameTheViolatedCondition) {
  cs::PagedDecodeDesc d;
  d.cache = {nullptr, nullptr, 4, 16, 8, 96};
  d.q_heads = 32;
  d.max_blocks = 4;
  d.scale = 0.1f;
  EXPECT_NE(msg([&] { d.validate(); }).find("head_dim = 96"), std::string::npos);
  d.cache.head_dim = 128;
  d.q_heads = 12;
  d.cache.kv_heads = 8;
  EXPECT_NE(msg([&] { d.validate(); }).find("multiple of kv_heads"), std::string::npos);
  d.q_heads = 32;
  d.max_context_len = 100;
  EXPECT_NE(msg([&] { d.validate(); }).find("max_context_len = 100"), std::string::npos);
  cs::PagedMlaDecodeDesc m;
  m.kv_lora_rank = 384;
  EXPECT_NE(msg([&] { m.validate(); }).find("kv_lora_rank = 384"), std::string::npos);
  cs::PagedPrefillDesc p;
  p.cache = {nullptr, nullptr, 4, 16, 8, 128};
  p.q_heads = 32;
  p.max_blocks = 4;
  p.scale = 0.1f;
  p.Tq = 10;
  p.max_query_len = 11;
  EXPECT_NE(msg([&] { p.validate(); }).find("max_query_len = 11"), std::string::npos);
}

}  // namespace
