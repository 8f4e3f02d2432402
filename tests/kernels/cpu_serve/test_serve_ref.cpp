// CPU references of the serving kernels (graft/cpu/serve_ref.hpp) checked against independent
// code: multi-LoRA against cpu::lora_acc row by row and against CpuBackend's lora_rows_acc (fused
// slices, mixed ranks 1..64, rows without adapter, out-of-range keys, keys without rows), the
// shrink and the plan against naive loops, MoE-LoRA virtual experts against a per-row lora_acc on
// the MoE permutation (cpu::moe_permute_plan), and paged attention (decode with GQA, prefill over a
// cached prefix, MLA latent decode) against cpu::attention / cpu::mla_attention_absorbed on caches
// gathered from shuffled pages with block sizes 1, 5, 16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cpu/serve_ref.hpp"
#include "graft/dtype.hpp"

namespace {
using namespace graft;
namespace sr = graft::cpu::serve;

std::vector<float> randv(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = g(rng);
  return v;
}
double rel(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// A batch of adapters: keys x slices, each with its own A / B storage.
struct Adapters {
  int num_keys = 0, ns = 0;
  int64_t K = 0;
  std::vector<std::vector<float>> a, b;
  std::vector<sr::LoraFactorsRef> table;
  Adapters(int keys, int64_t K_, const std::vector<sr::LoraSliceRef>& slices, const std::vector<int>& ranks,
           uint32_t seed)
      : num_keys(keys), ns(static_cast<int>(slices.size())), K(K_) {
    a.resize(static_cast<size_t>(keys * ns));
    b.resize(a.size());
    table.resize(a.size());
    for (int k = 0; k < keys; ++k)
      for (int i = 0; i < ns; ++i) {
        const size_t e = static_cast<size_t>(k * ns + i);
        const int r = ranks[e % ranks.size()];
        a[e] = randv(static_cast<size_t>(r * K), seed + static_cast<uint32_t>(e) * 31u, 0.2f);
        b[e] = randv(static_cast<size_t>(slices[static_cast<size_t>(i)].n * r), seed + 7u + static_cast<uint32_t>(e) * 31u, 0.2f);
        table[e] = {a[e].data(), b[e].data(), r, 0.5f + 0.25f * static_cast<float>(k % 3)};
      }
  }
};

TEST(ServeRef, MultiLoraMatchesLoraAccPerRow) {
  const int64_t T = 37, K = 48;
  const std::vector<sr::LoraSliceRef> slices = {{40, 0}, {16, 40}, {16, 56}};  // q, k, v
  const int64_t ldy = 76;                                                     // 4 spare columns
  Adapters ad(6, K, slices, {1, 8, 16, 3, 64, 0, 5}, 11);
  std::mt19937 rng(5);
  std::vector<int32_t> keys(static_cast<size_t>(T));
  for (auto& k : keys) k = static_cast<int32_t>(rng() % 9) - 1;  // -1..7: 6, 7 are out of range = no adapter
  keys[0] = 4;                                                    // rank 64 present
  auto x = randv(static_cast<size_t>(T * K), 1);
  auto y0 = randv(static_cast<size_t>(T * ldy), 2);
  auto y = y0;
  sr::multi_lora_acc(x.data(), T, K, K, keys, 6, ad.table, slices, y.data(), ldy);

  for (int64_t t = 0; t < T; ++t) {
    const int32_t key = keys[static_cast<size_t>(t)];
    std::vector<float> want(y0.begin() + t * ldy, y0.begin() + (t + 1) * ldy);
    if (key >= 0 && key < 6)
      for (size_t i = 0; i < slices.size(); ++i) {
        const auto& f = ad.table[static_cast<size_t>(key) * slices.size() + i];
        if (f.rank == 0) continue;
        Tensor xt = Tensor::wrap(x.data() + t * K, {1, K}, DType::F32);
        Tensor at = Tensor::wrap(const_cast<float*>(f.a), {f.rank, K}, DType::F32);
        Tensor bt = Tensor::wrap(const_cast<float*>(f.b), {slices[i].n, f.rank}, DType::F32);
        Tensor yt = Tensor::wrap(want.data() + slices[i].y_offset, {1, slices[i].n}, DType::F32);
        cpu::lora_acc(xt, at, bt, f.scale, yt);
      }
    const float* got = y.data() + t * ldy;
    if (key < 0 || key >= 6) {
      EXPECT_TRUE(std::equal(want.begin(), want.end(), got)) << "row " << t << " without adapter was modified";
    } else {
      EXPECT_LT(rel(got, want.data(), static_cast<size_t>(ldy)), 1e-6) << "row " << t;
      for (int64_t c = 72; c < ldy; ++c) EXPECT_EQ(got[c], want[static_cast<size_t>(c)]) << "spare column touched";
    }
  }
}

TEST(ServeRef, MultiLoraMatchesCpuBackendLoraRowsAcc) {
  const int64_t T = 21, K = 32, N = 24;
  const std::vector<sr::LoraSliceRef> slices = {{N, 0}};
  Adapters ad(4, K, slices, {2, 16, 7, 1}, 3);
  std::vector<LoraFactors> factors(4);
  std::vector<const LoraFactors*> ptrs(4);
  for (int k = 0; k < 4; ++k) {
    const auto& f = ad.table[static_cast<size_t>(k)];
    factors[static_cast<size_t>(k)].a = Tensor::wrap(const_cast<float*>(f.a), {f.rank, K}, DType::F32);
    factors[static_cast<size_t>(k)].b = Tensor::wrap(const_cast<float*>(f.b), {N, f.rank}, DType::F32);
    factors[static_cast<size_t>(k)].scale = f.scale;
    ptrs[static_cast<size_t>(k)] = &factors[static_cast<size_t>(k)];
  }
  std::vector<int32_t> keys(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) keys[static_cast<size_t>(t)] = static_cast<int32_t>(t % 5) - 1;
  auto x = randv(static_cast<size_t>(T * K), 8);
  auto y = randv(static_cast<size_t>(T * N), 9);
  auto want = y;
  sr::multi_lora_acc(x.data(), T, K, K, keys, 4, ad.table, slices, y.data(), N);
  Tensor xt = Tensor::wrap(x.data(), {T, K}, DType::F32), yt = Tensor::wrap(want.data(), {T, N}, DType::F32);
  cpu::lora_rows_acc(xt, LoraBatch{ptrs, keys}, yt);
  EXPECT_LT(rel(y.data(), want.data(), y.size()), 1e-6);
}

TEST(ServeRef, Bf16IntermediateOnlyMovesBf16Bits) {
  const int64_t T = 16, K = 64;
  const std::vector<sr::LoraSliceRef> slices = {{32, 0}};
  Adapters ad(2, K, slices, {16, 8}, 4);
  std::vector<int32_t> keys(static_cast<size_t>(T), 1);
  keys[3] = 0;
  auto x = randv(static_cast<size_t>(T * K), 6);
  std::vector<float> y1(static_cast<size_t>(T * 32), 0.0f), y2 = y1;
  sr::multi_lora_acc(x.data(), T, K, K, keys, 2, ad.table, slices, y1.data(), 32, false);
  sr::multi_lora_acc(x.data(), T, K, K, keys, 2, ad.table, slices, y2.data(), 32, true);
  const double d = rel(y2.data(), y1.data(), y1.size());
  EXPECT_GT(d, 0.0);
  EXPECT_LT(d, 4e-3);  // one bf16 rounding (2^-9 relative at most) of each intermediate
}

TEST(ServeRef, ShrinkMatchesNaiveAndLeavesOtherEntries) {
  const int64_t T = 9, K = 24, ldv = 16;
  const std::vector<sr::LoraSliceRef> slices = {{8, 0}, {8, 8}};
  Adapters ad(3, K, slices, {4, 16, 1}, 12);
  std::vector<int32_t> keys = {0, 1, 2, -1, 1, 5, 0, 2, 2};
  auto x = randv(static_cast<size_t>(T * K), 13);
  std::vector<float> v(static_cast<size_t>(2 * T * ldv), std::nanf(""));
  sr::lora_shrink(x.data(), T, K, K, keys, 3, ad.table, 2, ldv, v.data());
  for (int i = 0; i < 2; ++i)
    for (int64_t t = 0; t < T; ++t)
      for (int j = 0; j < ldv; ++j) {
        const float got = v[static_cast<size_t>((i * T + t) * ldv + j)];
        const int32_t key = keys[static_cast<size_t>(t)];
        const auto* f = (key >= 0 && key < 3) ? &ad.table[static_cast<size_t>(key * 2 + i)] : nullptr;
        if (!f || j >= f->rank) {
          EXPECT_TRUE(std::isnan(got)) << "entry (" << i << ", " << t << ", " << j << ") written";
          continue;
        }
        double s = 0;
        for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[static_cast<size_t>(t * K + k)]) * f->a[j * K + k];
        EXPECT_NEAR(got, s, 1e-5 * (1 + std::abs(s)));
      }
}

TEST(ServeRef, PlanGroupsRowsStably) {
  for (int num_keys : {1, 5, 300}) {
    std::mt19937 rng(static_cast<uint32_t>(num_keys));
    std::vector<int32_t> keys(777);
    for (auto& k : keys) k = static_cast<int32_t>(rng() % static_cast<uint32_t>(num_keys + 2)) - 1;  // incl. -1 and num_keys
    const auto p = sr::lora_plan(keys, num_keys, 32);
    ASSERT_EQ(p.counts.size(), static_cast<size_t>(num_keys) + 1);
    ASSERT_EQ(p.offsets.back(), 777);
    std::vector<int32_t> seen(keys.size(), 0);
    int32_t tiles = 0;
    for (int b = 0; b <= num_keys; ++b) {
      int32_t c = 0;
      for (int32_t k : keys) c += (b < num_keys ? k == b : (k < 0 || k >= num_keys));
      EXPECT_EQ(p.counts[static_cast<size_t>(b)], c);
      EXPECT_EQ(p.tile_offsets[static_cast<size_t>(b)], tiles);
      if (b < num_keys) tiles += (c + 31) / 32;
      for (int32_t i = p.offsets[static_cast<size_t>(b)]; i < p.offsets[static_cast<size_t>(b) + 1]; ++i) {
        const int32_t row = p.sorted_rows[static_cast<size_t>(i)];
        ++seen[static_cast<size_t>(row)];
        const int32_t k = keys[static_cast<size_t>(row)];
        EXPECT_EQ((k >= 0 && k < num_keys) ? k : num_keys, b);
        if (i > p.offsets[static_cast<size_t>(b)]) {
          EXPECT_LT(p.sorted_rows[static_cast<size_t>(i) - 1], row);
        }
      }
    }
    EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int32_t s) { return s == 1; }));
  }
}

TEST(ServeRef, MoeLoraVirtualExpertsMatchPerRowLoraAcc) {
  const int64_t T = 11, H = 40, N = 24;
  const int k = 2, E = 4, slots = 3;
  std::mt19937 rng(21);
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t e0 = static_cast<int32_t>(rng() % E);
    ids[static_cast<size_t>(t * k)] = e0;
    ids[static_cast<size_t>(t * k + 1)] = (e0 + 1 + static_cast<int32_t>(rng() % (E - 1))) % E;
  }
  std::vector<int32_t> token_slot(static_cast<size_t>(T));
  for (auto& s : token_slot) s = static_cast<int32_t>(rng() % (slots + 1)) - 1;
  Tensor idt = Tensor::wrap(ids.data(), {T, k}, DType::I32);
  const auto plan = cpu::moe_permute_plan(idt, E);
  const auto keys = sr::moe_lora_keys(plan.order, ids, token_slot, k, E, slots);
  const std::vector<sr::LoraSliceRef> slices = {{N, 0}};
  Adapters ad(slots * E, H, slices, {4, 8, 1, 16, 0}, 33);  // some (slot, expert) pairs unadapted
  auto x = randv(static_cast<size_t>(T * H), 22);
  const int64_t n = T * k;
  std::vector<float> xp(static_cast<size_t>(n * H));
  for (int64_t p = 0; p < n; ++p)
    std::copy_n(x.begin() + plan.order[static_cast<size_t>(p)] / k * H, H, xp.begin() + p * H);
  auto yp = randv(static_cast<size_t>(n * N), 23);
  auto want = yp;
  sr::multi_lora_acc(xp.data(), n, H, H, keys, slots * E, ad.table, slices, yp.data(), N);
  for (int64_t p = 0; p < n; ++p) {
    const int32_t f = plan.order[static_cast<size_t>(p)];
    const int32_t slot = token_slot[static_cast<size_t>(f / k)], e = ids[static_cast<size_t>(f)];
    EXPECT_EQ(keys[static_cast<size_t>(p)], slot < 0 ? -1 : slot * E + e);
    if (slot < 0) continue;
    const auto& fa = ad.table[static_cast<size_t>(slot * E + e)];
    if (fa.rank == 0) continue;
    Tensor xt = Tensor::wrap(x.data() + (f / k) * H, {1, H}, DType::F32);
    Tensor at = Tensor::wrap(const_cast<float*>(fa.a), {fa.rank, H}, DType::F32);
    Tensor bt = Tensor::wrap(const_cast<float*>(fa.b), {N, fa.rank}, DType::F32);
    Tensor yt = Tensor::wrap(want.data() + p * N, {1, N}, DType::F32);
    cpu::lora_acc(xt, at, bt, fa.scale, yt);
  }
  EXPECT_LT(rel(yp.data(), want.data(), yp.size()), 1e-6);
}

// A paged pool with shuffled pages for `ctx` lengths; gathers contiguous K/V per sequence.
struct Pool {
  int block_size = 0, kv_heads = 0, D = 0, max_blocks = 0;
  int64_t num_blocks = 0;
  std::vector<float> k, v;
  std::vector<int32_t> table;
  Pool(const std::vector<int32_t>& ctx, int bs, int hkv, int d, uint32_t seed) : block_size(bs), kv_heads(hkv), D(d) {
    int64_t need = 0;
    for (int32_t c : ctx) {
      max_blocks = std::max(max_blocks, (c + bs - 1) / bs);
      need += (c + bs - 1) / bs;
    }
    max_blocks = std::max(max_blocks, 1);
    num_blocks = need + 3;  // spare pages that no sequence uses
    k = randv(static_cast<size_t>(num_blocks * bs * hkv * d), seed);
    v = randv(k.size(), seed + 1);
    std::vector<int32_t> pages(static_cast<size_t>(num_blocks));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(seed + 2));
    table.assign(ctx.size() * static_cast<size_t>(max_blocks), -1);
    size_t next = 0;
    for (size_t s = 0; s < ctx.size(); ++s)
      for (int b = 0; b < (ctx[s] + bs - 1) / bs; ++b) table[s * static_cast<size_t>(max_blocks) + static_cast<size_t>(b)] = pages[next++];
  }
  sr::PagedKvRef ref() const { return {k.data(), v.data(), num_blocks, block_size, kv_heads, D}; }
  // [ctx, kv_heads, D] of sequence s
  std::vector<float> gather(const std::vector<float>& pool, int s, int ctx) const {
    std::vector<float> out(static_cast<size_t>(ctx * kv_heads * D));
    for (int j = 0; j < ctx; ++j) {
      const int64_t page = table[static_cast<size_t>(s * max_blocks + j / block_size)];
      std::copy_n(pool.begin() + ((page * block_size + j % block_size) * kv_heads) * D, kv_heads * D,
                  out.begin() + static_cast<int64_t>(j) * kv_heads * D);
    }
    return out;
  }
};

TEST(ServeRef, PagedDecodeMatchesAttention) {
  const int Hq = 8, Hkv = 2, D = 16;
  const float scale = 0.25f;
  const std::vector<int32_t> ctx = {0, 1, 7, 33, 16};
  for (int bs : {1, 5, 16}) {
    SCOPED_TRACE("block_size=" + std::to_string(bs));
    Pool pool(ctx, bs, Hkv, D, 40u + static_cast<uint32_t>(bs));
    const int S = static_cast<int>(ctx.size());
    auto q = randv(static_cast<size_t>(S * Hq * D), 41);
    std::vector<float> out(q.size(), std::nanf(""));
    sr::paged_decode_attention(q.data(), S, Hq, pool.ref(), pool.table, pool.max_blocks, ctx, scale, out.data());
    for (int s = 0; s < S; ++s) {
      const int c = ctx[static_cast<size_t>(s)];
      const float* got = out.data() + s * Hq * D;
      if (c == 0) {
        EXPECT_TRUE(std::all_of(got, got + Hq * D, [](float f) { return f == 0.0f; }));
        continue;
      }
      auto kk = pool.gather(pool.k, s, c), vv = pool.gather(pool.v, s, c);
      std::vector<int32_t> qpos = {c - 1}, kpos(static_cast<size_t>(c));
      std::iota(kpos.begin(), kpos.end(), 0);
      Tensor want = Tensor::empty({1, Hq, D}, DType::F32);
      cpu::attention(Tensor::wrap(q.data() + s * Hq * D, {1, Hq, D}, DType::F32), Tensor::wrap(kk.data(), {c, Hkv, D}, DType::F32),
                     Tensor::wrap(vv.data(), {c, Hkv, D}, DType::F32), qpos, kpos, ops::AttentionMask{}, scale, want);
      EXPECT_LT(rel(got, want.data<float>(), static_cast<size_t>(Hq * D)), 1e-5) << "seq " << s;
    }
  }
}

TEST(ServeRef, PagedPrefillMatchesAttention) {
  const int Hq = 4, Hkv = 4, D = 8;
  const float scale = 0.3f;
  const std::vector<int32_t> qlen = {3, 5, 1, 0, 6}, ctx = {3, 20, 9, 4, 6};
  for (int bs : {1, 5, 16}) {
    SCOPED_TRACE("block_size=" + std::to_string(bs));
    Pool pool(ctx, bs, Hkv, D, 50u + static_cast<uint32_t>(bs));
    std::vector<int32_t> qs(1, 0);
    for (int32_t l : qlen) qs.push_back(qs.back() + l);
    const int64_t Tq = qs.back();
    auto q = randv(static_cast<size_t>(Tq * Hq * D), 51);
    std::vector<float> out(q.size(), std::nanf(""));
    sr::paged_prefill_attention(q.data(), qs, Hq, pool.ref(), pool.table, pool.max_blocks, ctx, scale, out.data());
    for (size_t s = 0; s < qlen.size(); ++s) {
      const int l = qlen[s], c = ctx[s];
      if (l == 0) continue;
      auto kk = pool.gather(pool.k, static_cast<int>(s), c), vv = pool.gather(pool.v, static_cast<int>(s), c);
      std::vector<int32_t> qpos(static_cast<size_t>(l)), kpos(static_cast<size_t>(c));
      std::iota(qpos.begin(), qpos.end(), c - l);
      std::iota(kpos.begin(), kpos.end(), 0);
      Tensor want = Tensor::empty({l, Hq, D}, DType::F32);
      cpu::attention(Tensor::wrap(q.data() + qs[s] * Hq * D, {l, Hq, D}, DType::F32), Tensor::wrap(kk.data(), {c, Hkv, D}, DType::F32),
                     Tensor::wrap(vv.data(), {c, Hkv, D}, DType::F32), qpos, kpos, ops::AttentionMask{}, scale, want);
      EXPECT_LT(rel(out.data() + qs[s] * Hq * D, want.data<float>(), static_cast<size_t>(l * Hq * D)), 1e-5) << "seq " << s;
    }
  }
}

TEST(ServeRef, PagedMlaMatchesAbsorbedMla) {
  const int H = 3, dn = 8, dv = 6, L = 16, dr = 4;
  const float scale = 0.2f;
  const std::vector<int32_t> ctx = {1, 13, 30};
  for (int bs : {1, 5, 16}) {
    SCOPED_TRACE("block_size=" + std::to_string(bs));
    // One concatenated cache row [c (L) | k_pe (dr)] per slot, like vLLM: the "kv_heads·D" of Pool = L + dr.
    Pool pool(ctx, bs, 1, L + dr, 60u + static_cast<uint32_t>(bs));
    const int S = static_cast<int>(ctx.size());
    auto w = randv(static_cast<size_t>(H * (dn + dv) * L), 61, 0.3f);
    auto qn = randv(static_cast<size_t>(S * H * dn), 62), qp = randv(static_cast<size_t>(S * H * dr), 63);
    std::vector<float> qabs(static_cast<size_t>(S * H * L), 0.0f);
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < H; ++h)
        for (int l = 0; l < L; ++l) {
          double a = 0;
          for (int d = 0; d < dn; ++d)
            a += static_cast<double>(qn[static_cast<size_t>((s * H + h) * dn + d)]) * w[static_cast<size_t>((h * (dn + dv) + d) * L + l)];
          qabs[static_cast<size_t>((s * H + h) * L + l)] = static_cast<float>(a);
        }
    std::vector<float> lat(static_cast<size_t>(S * H * L), std::nanf(""));
    sr::paged_mla_decode(qabs.data(), qp.data(), S, H, L, dr, pool.k.data(), L + dr, pool.k.data() + L, L + dr,
                         pool.num_blocks, bs, pool.table, pool.max_blocks, ctx, scale, lat.data());
    for (int s = 0; s < S; ++s) {
      const int c = ctx[static_cast<size_t>(s)];
      auto rows = pool.gather(pool.k, s, c);  // [c, L + dr]
      std::vector<float> cc(static_cast<size_t>(c * L)), pe(static_cast<size_t>(c * dr));
      for (int j = 0; j < c; ++j) {
        std::copy_n(rows.begin() + j * (L + dr), L, cc.begin() + j * L);
        std::copy_n(rows.begin() + j * (L + dr) + L, dr, pe.begin() + j * dr);
      }
      std::vector<int32_t> qpos = {c - 1}, kpos(static_cast<size_t>(c));
      std::iota(kpos.begin(), kpos.end(), 0);
      Tensor want = Tensor::empty({1, H, dv}, DType::F32);
      cpu::mla_attention_absorbed(Tensor::wrap(qn.data() + s * H * dn, {1, H, dn}, DType::F32),
                                  Tensor::wrap(qp.data() + s * H * dr, {1, H, dr}, DType::F32),
                                  Tensor::wrap(cc.data(), {c, L}, DType::F32), Tensor::wrap(pe.data(), {c, dr}, DType::F32),
                                  Tensor::wrap(w.data(), {H * (dn + dv), L}, DType::F32), dv, qpos, kpos,
                                  ops::AttentionMask{}, scale, want);
      std::vector<float> got(static_cast<size_t>(H * dv));
      for (int h = 0; h < H; ++h)
        for (int e = 0; e < dv; ++e) {
          double a = 0;
          for (int l = 0; l < L; ++l)
            a += static_cast<double>(lat[static_cast<size_t>((s * H + h) * L + l)]) * w[static_cast<size_t>((h * (dn + dv) + dn + e) * L + l)];
          got[static_cast<size_t>(h * dv + e)] = static_cast<float>(a);
        }
      EXPECT_LT(rel(got.data(), want.data<float>(), got.size()), 1e-5) << "seq " << s;
    }
  }
}

}  // namespace
