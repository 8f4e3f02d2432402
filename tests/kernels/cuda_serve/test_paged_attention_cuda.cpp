// CUDA paged attention vs the CPU references (graft/cpu/serve_ref.hpp, themselves checked against
// cpu::attention / cpu::mla_attention_absorbed in tests/kernels/cpu_serve): decode (head_dim 64 /
// 128, GQA groups 1, 3, 4, 8, block sizes 16 and 7, context lengths 0, 1, 17, 300, 2000, automatic
// and forced partition sizes), MLA latent decode (L = 512 and 256, dr = 64, 16 / 6 / 3 heads,
// concatenated and separate caches) and prefill of new-token chunks over a cached prefix (ragged
// 64-row query tiles, chunks of 1..130 tokens, prefix 0..230). Pages are shuffled over the pool;
// q / K / V are bf16 (the reference gets the same rounded values); outputs are poisoned (NaN).
//
// Tolerances. Decode: f32 scores / softmax / accumulation with __expf (a few ulp), one bf16
// rounding of the output (rms 2^-9/√3 ≈ 1.1e-3 relative) -> bound 5e-3. Prefill: in addition P is
// rounded to bf16 before P·V (each weight ±2^-9 relative; averaged over >= 1 keys the output moves
// by at most ~2^-9) -> about 2e-3 expected, bound 1e-2.
#include <gtest/gtest.h>

#include "serve_cuda_util.hpp"

namespace {
using namespace graft;
using namespace graft::testing::serve;
namespace cs = graft::cuda::serve;
namespace sr = graft::cpu::serve;

constexpr double kDecodeTol = 5e-3, kPrefillTol = 1e-2;

void sync() { cuda_ok(cudaDeviceSynchronize(), "sync"); }

struct DecodeCase {
  int D, Hq, Hkv, bs, psize;
};
class CudaPagedDecode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(CudaPagedDecode, MatchesCpu) {
  GRAFT_REQUIRE_GPU();
  const auto c = GetParam();
  const std::vector<int32_t> ctx = {17, 1, 300, 0, 2000, 64, 65};
  const int S = static_cast<int>(ctx.size()), max_ctx = 2000;
  KvPool pool(ctx, c.bs, c.Hkv * c.D, static_cast<uint32_t>(c.D * 7 + c.Hq + c.bs), (max_ctx + c.bs - 1) / c.bs);
  auto q = randn(static_cast<size_t>(S * c.Hq * c.D), 3);
  Dev<uint16_t> dq(to_bf16(q)), out(q.size());
  Dev<int32_t> dt(pool.table), dc(ctx);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  std::vector<float> ref(q.size());
  sr::paged_decode_attention(q.data(), S, c.Hq, {pool.hk.data(), pool.hv.data(), pool.num_blocks, c.bs, c.Hkv, c.D},
                             pool.table, pool.max_blocks, ctx, scale, ref.data());
  cs::PagedDecodeDesc d;
  d.q = dq.p;
  d.cache = {pool.k.p, pool.v.p, pool.num_blocks, c.bs, c.Hkv, c.D};
  d.block_table = dt.p;
  d.max_blocks = pool.max_blocks;
  d.context_lens = dc.p;
  d.num_seqs = S;
  d.q_heads = c.Hq;
  d.scale = scale;
  d.max_context_len = max_ctx;
  d.partition_size = c.psize;
  Dev<uint8_t> ws(cs::paged_decode_workspace_bytes(d));
  d.workspace = reinterpret_cast<float*>(ws.p);
  d.out = out.p;
  out.poison();
  ws.poison();
  cs::paged_decode_attention(d, nullptr);
  sync();
  const auto got = from_bf16(out.download());
  for (int s = 0; s < S; ++s) {
    const size_t o = static_cast<size_t>(s * c.Hq * c.D), m = static_cast<size_t>(c.Hq * c.D);
    std::vector<float> g(got.begin() + static_cast<int64_t>(o), got.begin() + static_cast<int64_t>(o + m)),
        r(ref.begin() + static_cast<int64_t>(o), ref.begin() + static_cast<int64_t>(o + m));
    if (ctx[static_cast<size_t>(s)] == 0) {
      EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float f) { return f == 0.0f; })) << "ctx 0 must give zeros";
    } else {
      EXPECT_LT(rel(g, r), kDecodeTol) << "seq " << s << " ctx " << ctx[static_cast<size_t>(s)]
                                       << " partition " << cs::paged_decode_partition_size(d);
    }
  }
}

std::vector<DecodeCase> decode_cases() {
  std::vector<DecodeCase> v;
  for (int D : {64, 128})
    for (auto hh : std::vector<std::pair<int, int>>{{8, 8}, {32, 8}, {16, 2}, {12, 4}})
      for (int bs : {16, 7})
        for (int ps : {0, 64, 512}) v.push_back({D, hh.first, hh.second, bs, ps});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Shapes, CudaPagedDecode, ::testing::ValuesIn(decode_cases()), [](const auto& info) {
  const auto& c = info.param;
  return "D" + std::to_string(c.D) + "_Hq" + std::to_string(c.Hq) + "_Hkv" + std::to_string(c.Hkv) + "_bs" +
         std::to_string(c.bs) + "_ps" + std::to_string(c.psize);
});

struct MlaCase {
  int L, H;
  bool concat;
  int psize;
};
class CudaPagedMla : public ::testing::TestWithParam<MlaCase> {};

TEST_P(CudaPagedMla, MatchesCpu) {
  GRAFT_REQUIRE_GPU();
  const auto c = GetParam();
  const int dr = 64, bs = 16;
  const std::vector<int32_t> ctx = {1, 100, 1500, 0, 33};
  const int S = static_cast<int>(ctx.size()), max_ctx = 1500;
  // concat: one pool row [c | k_pe] per slot (vLLM layout); else c and k_pe in two pools (the K and V
  // pools of KvPool, row = L; k_pe read from the first dr elements of the V pool's rows).
  const int row = c.concat ? c.L + dr : c.L;
  KvPool pool(ctx, bs, row, static_cast<uint32_t>(c.L + c.H), (max_ctx + bs - 1) / bs);
  const float* hc = pool.hk.data();
  const float* hpe = c.concat ? pool.hk.data() + c.L : pool.hv.data();
  const uint16_t* dcache = pool.k.p;
  const uint16_t* dpe = c.concat ? pool.k.p + c.L : pool.v.p;
  auto qa = randn(static_cast<size_t>(S * c.H * c.L), 5, 0.1f), qp = randn(static_cast<size_t>(S * c.H * dr), 6);
  Dev<uint16_t> dqa(to_bf16(qa)), dqp(to_bf16(qp)), out(static_cast<size_t>(S * c.H * c.L));
  Dev<int32_t> dt(pool.table), dc(ctx);
  const float scale = 1.0f / std::sqrt(192.0f);  // DeepSeek: 1/sqrt(qk_nope + qk_rope)
  std::vector<float> ref(static_cast<size_t>(S * c.H * c.L));
  sr::paged_mla_decode(qa.data(), qp.data(), S, c.H, c.L, dr, hc, row, hpe, row, pool.num_blocks, bs, pool.table,
                       pool.max_blocks, ctx, scale, ref.data());
  cs::PagedMlaDecodeDesc d;
  d.q_abs = dqa.p;
  d.q_pe = dqp.p;
  d.c_cache = dcache;
  d.c_stride = row;
  d.pe_cache = dpe;
  d.pe_stride = row;
  d.num_blocks = pool.num_blocks;
  d.block_size = bs;
  d.kv_lora_rank = c.L;
  d.rope_dim = dr;
  d.block_table = dt.p;
  d.max_blocks = pool.max_blocks;
  d.context_lens = dc.p;
  d.num_seqs = S;
  d.heads = c.H;
  d.scale = scale;
  d.max_context_len = max_ctx;
  d.partition_size = c.psize;
  Dev<uint8_t> ws(cs::paged_mla_decode_workspace_bytes(d));
  d.workspace = reinterpret_cast<float*>(ws.p);
  d.out = out.p;
  out.poison();
  cs::paged_mla_decode(d, nullptr);
  sync();
  const auto got = from_bf16(out.download());
  for (int s = 0; s < S; ++s) {
    const size_t o = static_cast<size_t>(s * c.H * c.L), m = static_cast<size_t>(c.H * c.L);
    std::vector<float> g(got.begin() + static_cast<int64_t>(o), got.begin() + static_cast<int64_t>(o + m)),
        r(ref.begin() + static_cast<int64_t>(o), ref.begin() + static_cast<int64_t>(o + m));
    if (ctx[static_cast<size_t>(s)] == 0) {
      EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float f) { return f == 0.0f; }));
    } else {
      EXPECT_LT(rel(g, r), kDecodeTol) << "seq " << s;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPagedMla,
                         ::testing::Values(MlaCase{512, 16, true, 0}, MlaCase{512, 16, false, 64},
                                           MlaCase{512, 6, true, 128}, MlaCase{256, 3, false, 0},
                                           MlaCase{512, 128, true, 0}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return "L" + std::to_string(c.L) + "_H" + std::to_string(c.H) + (c.concat ? "_concat" : "_split") +
                                  "_ps" + std::to_string(c.psize);
                         });

struct PrefillCase {
  int D, Hq, Hkv, bs;
};
class CudaPagedPrefill : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(CudaPagedPrefill, MatchesCpu) {
  GRAFT_REQUIRE_GPU();
  const auto c = GetParam();
  // (new tokens, total context): first chunk, chunk after a prefix, exact 64-row tiles, ragged tiles.
  const std::vector<std::pair<int, int>> seqs = {{1, 1}, {5, 45}, {64, 64}, {130, 300}, {70, 70}, {0, 12}, {3, 3}};
  std::vector<int32_t> ctx, qs = {0};
  int max_q = 0;
  for (auto [l, t] : seqs) {
    ctx.push_back(t);
    qs.push_back(qs.back() + l);
    max_q = std::max(max_q, l);
  }
  const int S = static_cast<int>(seqs.size());
  const int64_t Tq = qs.back();
  KvPool pool(ctx, c.bs, c.Hkv * c.D, static_cast<uint32_t>(c.D + c.Hq * 3 + c.bs));
  auto q = randn(static_cast<size_t>(Tq * c.Hq * c.D), 8);
  Dev<uint16_t> dq(to_bf16(q)), out(q.size());
  Dev<int32_t> dt(pool.table), dc(ctx), dqs(qs);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
  std::vector<float> ref(q.size());
  sr::paged_prefill_attention(q.data(), qs, c.Hq, {pool.hk.data(), pool.hv.data(), pool.num_blocks, c.bs, c.Hkv, c.D},
                              pool.table, pool.max_blocks, ctx, scale, ref.data());
  cs::PagedPrefillDesc d;
  d.q = dq.p;
  d.Tq = Tq;
  d.query_start = dqs.p;
  d.cache = {pool.k.p, pool.v.p, pool.num_blocks, c.bs, c.Hkv, c.D};
  d.block_table = dt.p;
  d.max_blocks = pool.max_blocks;
  d.context_lens = dc.p;
  d.num_seqs = S;
  d.q_heads = c.Hq;
  d.scale = scale;
  d.max_query_len = max_q;
  d.out = out.p;
  out.poison();
  cs::paged_prefill_attention(d, nullptr);
  sync();
  const auto got = from_bf16(out.download());
  for (int s = 0; s < S; ++s) {
    const size_t o = static_cast<size_t>(qs[static_cast<size_t>(s)]) * static_cast<size_t>(c.Hq * c.D);
    const size_t m = static_cast<size_t>(qs[static_cast<size_t>(s) + 1] - qs[static_cast<size_t>(s)]) * static_cast<size_t>(c.Hq * c.D);
    if (m == 0) continue;
    std::vector<float> g(got.begin() + static_cast<int64_t>(o), got.begin() + static_cast<int64_t>(o + m)),
        r(ref.begin() + static_cast<int64_t>(o), ref.begin() + static_cast<int64_t>(o + m));
    EXPECT_LT(rel(g, r), kPrefillTol) << "seq " << s << " (" << seqs[static_cast<size_t>(s)].first << " new of "
                                      << seqs[static_cast<size_t>(s)].second << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPagedPrefill,
                         ::testing::Values(PrefillCase{128, 8, 2, 16}, PrefillCase{128, 4, 4, 5},
                                           PrefillCase{64, 8, 2, 16}, PrefillCase{64, 6, 3, 7}),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return "D" + std::to_string(c.D) + "_Hq" + std::to_string(c.Hq) + "_Hkv" +
                                  std::to_string(c.Hkv) + "_bs" + std::to_string(c.bs);
                         });

}  // namespace
