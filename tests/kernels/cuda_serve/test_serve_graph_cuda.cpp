// A decode step captured ONCE in a CUDA graph and replayed with new metadata written in place:
// lora_plan -> sgmv_shrink -> sgmv_expand (fused q/k/v) and bgmv_shrink -> bgmv_expand (o-proj
// shaped) and paged_decode_attention. Before every replay the host rewrites (cudaMemcpyAsync on the
// capture stream, outside the graph) the row -> slot keys (popularity changes: distinct, Zipf,
// identical, rows without adapter), the slot table (other adapters, other ranks 1..128, other
// scales, other pool addresses), the context lengths and block tables, and resets y. Each replay
// is compared with the CPU references. This checks that no launch reads metadata on the host and
// that grids depend only on capacities. Tolerances as in test_serve_lora_cuda.cpp /
// test_paged_attention_cuda.cpp.
#include <gtest/gtest.h>

#include "serve_cuda_util.hpp"

namespace {
using namespace graft;
using namespace graft::testing::serve;
namespace cs = graft::cuda::serve;
namespace sr = graft::cpu::serve;

TEST(CudaServeGraph, DecodeStepReplaysWithRewrittenMetadata) {
  GRAFT_REQUIRE_GPU();
  cudaStream_t st;
  cuda_ok(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "stream");
  // capacities
  const int64_t T = 64, K = 264;
  const int slots = 8, max_rank = 128;
  const std::vector<int64_t> qkv_n = {256, 64, 64}, qkv_off = {0, 256, 320};
  const int64_t ldq = 384, No = 200;
  const int Hq = 8, Hkv = 2, D = 128, bs = 16, max_ctx = 700, S = 8;

  AdapterPool pool_qkv(12, K, qkv_n, {1, 8, 16, 64, 128}, 1, true);
  AdapterPool pool_o(12, K, {No}, {16, 128, 1, 8, 64}, 2, false);
  DevTable tq(slots, 3), to(slots, 1);
  Dev<int32_t> keys(static_cast<size_t>(T));
  Dev<int32_t> sorted(static_cast<size_t>(T)), counts(slots + 1), offsets(slots + 2), tiles(slots + 1), cursor(slots + 1);
  auto x = randn(static_cast<size_t>(T * K), 3);
  Dev<uint16_t> dx(to_bf16(x)), yq(static_cast<size_t>(T * ldq)), yo(static_cast<size_t>(T * No));

  cs::LoraBatchDims dq;
  dq.T = T;
  dq.K = K;
  dq.num_slices = 3;
  for (int i = 0; i < 3; ++i) dq.slices[i] = {qkv_n[static_cast<size_t>(i)], qkv_off[static_cast<size_t>(i)]};
  dq.max_rank = max_rank;
  dq.splits = cs::lora_shrink_splits(T, K, 3, slots);
  cs::LoraBatchDims dob = dq;
  dob.num_slices = 1;
  dob.slices[0] = {No, 0};
  dob.splits = 2;
  Dev<float> vq(dq.v_elems()), vo(dob.v_elems());

  std::vector<int32_t> ctx0(S, 1);
  KvPool kv(std::vector<int32_t>(S, max_ctx), bs, Hkv * D, 4, (max_ctx + bs - 1) / bs);
  auto q = randn(static_cast<size_t>(S * Hq * D), 5);
  Dev<uint16_t> dqq(to_bf16(q)), att(static_cast<size_t>(S * Hq * D));
  Dev<int32_t> bt(kv.table.size()), cl(static_cast<size_t>(S));
  cs::PagedDecodeDesc pd;
  pd.q = dqq.p;
  pd.cache = {kv.k.p, kv.v.p, kv.num_blocks, bs, Hkv, D};
  pd.block_table = bt.p;
  pd.max_blocks = kv.max_blocks;
  pd.context_lens = cl.p;
  pd.num_seqs = S;
  pd.q_heads = Hq;
  pd.scale = 1.0f / std::sqrt(static_cast<float>(D));
  pd.max_context_len = max_ctx;
  Dev<uint8_t> ws(cs::paged_decode_workspace_bytes(pd));
  pd.workspace = reinterpret_cast<float*>(ws.p);
  pd.out = att.p;

  auto step = [&] {
    cs::lora_plan({keys.p, T, slots, {sorted.p, counts.p, offsets.p, tiles.p, cursor.p}}, st);
    const cs::LoraPlanView pv{sorted.p, offsets.p, tiles.p};
    cs::SgmvShrinkDesc ss;
    ss.dims = dq;
    ss.table = tq.view();
    ss.plan = pv;
    ss.x = dx.p;
    ss.v = vq.p;
    cs::sgmv_shrink(ss, st);
    cs::SgmvExpandDesc se;
    se.dims = dq;
    se.table = tq.view();
    se.plan = pv;
    se.v = vq.p;
    se.y = yq.p;
    se.ldy = ldq;
    cs::sgmv_expand(se, st);
    cs::BgmvShrinkDesc bsd;
    bsd.dims = dob;
    bsd.table = to.view();
    bsd.row_key = keys.p;
    bsd.x = dx.p;
    bsd.v = vo.p;
    cs::bgmv_shrink(bsd, st);
    cs::BgmvExpandDesc bed;
    bed.dims = dob;
    bed.table = to.view();
    bed.row_key = keys.p;
    bed.v = vo.p;
    bed.y = yo.p;
    cs::bgmv_expand(bed, st);
    cs::paged_decode_attention(pd, st);
  };

  // Initial metadata (also warms up device_info and the kernel attributes before capture).
  std::vector<int> map0(slots, -1);
  tq.fill(pool_qkv, map0);
  to.fill(pool_o, map0);
  tq.upload(st);
  to.upload(st);
  keys.upload_async(std::vector<int32_t>(static_cast<size_t>(T), -1), st);
  cl.upload_async(ctx0, st);
  bt.upload_async(kv.table, st);
  step();
  cuda_ok(cudaStreamSynchronize(st), "warm-up");

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cuda_ok(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal), "begin capture");
  step();
  cuda_ok(cudaStreamEndCapture(st, &graph), "end capture");
  size_t nodes = 0;
  cuda_ok(cudaGraphGetNodes(graph, nullptr, &nodes), "nodes");
  EXPECT_GE(nodes, 9u);  // memset + 3 plan kernels + 4 LoRA kernels + decode + merge
  cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");

  std::mt19937 rng(9);
  const Popularity pops[] = {Popularity::Distinct, Popularity::Zipf, Popularity::Identical, Popularity::Uniform};
  for (int rep = 0; rep < 4; ++rep) {
    SCOPED_TRACE("replay " + std::to_string(rep));
    // new slot -> adapter maps (one slot left empty), new row keys, new contexts / pages
    std::vector<int> map_q(slots), map_o(slots);
    for (int s = 0; s < slots; ++s) {
      map_q[static_cast<size_t>(s)] = static_cast<int>((s * 5 + rep * 3) % 12);
      map_o[static_cast<size_t>(s)] = static_cast<int>((s * 7 + rep) % 12);
    }
    map_q[static_cast<size_t>(rep % slots)] = -1;
    auto rows = popularity_rows(pops[rep], T, slots, rng);
    std::vector<int32_t> hk(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) hk[static_cast<size_t>(t)] = (t % 9 == 4) ? -1 : rows[static_cast<size_t>(t)];
    std::vector<int32_t> ctx(S);
    for (int s = 0; s < S; ++s) ctx[static_cast<size_t>(s)] = static_cast<int32_t>(rng() % (max_ctx + 1));
    ctx[static_cast<size_t>(rep)] = 0;  // a padding sequence
    kv.assign(std::vector<int32_t>(S, max_ctx), 100u + static_cast<uint32_t>(rep));
    auto y0q = randn(static_cast<size_t>(T * ldq), 20u + static_cast<uint32_t>(rep), 0.5f);
    auto y0o = randn(static_cast<size_t>(T * No), 30u + static_cast<uint32_t>(rep), 0.5f);

    tq.fill(pool_qkv, map_q);
    to.fill(pool_o, map_o);
    tq.upload(st);
    to.upload(st);
    keys.upload_async(hk, st);
    cl.upload_async(ctx, st);
    bt.upload_async(kv.table, st);
    const auto y0q_bits = to_bf16(y0q), y0o_bits = to_bf16(y0o);
    yq.upload_async(y0q_bits, st);
    yo.upload_async(y0o_bits, st);
    vq.poison_async(st);
    att.poison_async(st);
    cuda_ok(cudaGraphLaunch(exec, st), "graph launch");
    cuda_ok(cudaStreamSynchronize(st), "replay");

    // references
    const auto trq = DevTable::ref(pool_qkv, map_q, 3), tro = DevTable::ref(pool_o, map_o, 1);
    std::vector<sr::LoraSliceRef> sq;
    for (int i = 0; i < 3; ++i) sq.push_back({qkv_n[static_cast<size_t>(i)], qkv_off[static_cast<size_t>(i)]});
    auto rq = y0q, ro = y0o;
    sr::multi_lora_acc(x.data(), T, K, K, hk, slots, trq, sq, rq.data(), ldq, true);
    sr::multi_lora_acc(x.data(), T, K, K, hk, slots, tro, std::vector<sr::LoraSliceRef>{{No, 0}}, ro.data(), No, false);
    EXPECT_LT(rel(from_bf16(yq.download()), rq), 5e-3) << "sgmv q/k/v after replay";
    EXPECT_LT(rel(from_bf16(yo.download()), ro), 5e-3) << "bgmv o after replay";
    // rows without adapter untouched
    const auto gq = yq.download();
    for (int64_t t = 0; t < T; ++t) {
      if (hk[static_cast<size_t>(t)] >= 0 && map_q[static_cast<size_t>(hk[static_cast<size_t>(t)])] >= 0) continue;
      for (int64_t c = 0; c < ldq; ++c)
        ASSERT_EQ(gq[static_cast<size_t>(t * ldq + c)], y0q_bits[static_cast<size_t>(t * ldq + c)]) << "row " << t;
    }
    std::vector<float> ra(q.size());
    sr::paged_decode_attention(q.data(), S, Hq, {kv.hk.data(), kv.hv.data(), kv.num_blocks, bs, Hkv, D}, kv.table,
                               kv.max_blocks, ctx, pd.scale, ra.data());
    EXPECT_LT(rel(from_bf16(att.download()), ra), 5e-3) << "paged decode after replay";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(st);
}

}  // namespace
