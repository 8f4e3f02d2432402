// Serving-kernel timings on the GPU (CUDA events over CUDA-graph replays, median of --iters):
//   1. measured HBM bandwidth (device-to-device copy of 2 x 1 GiB, > 3x L2);
//   2. multi-LoRA add-on per module, SGMV (plan + shrink + expand; the plan is also timed alone:
//      it is built once per step and shared by every layer) and BGMV (shrink + expand), decode
//      B = 1..256 with min(B, 64) distinct rank-16 adapters and prefill T = 4096 with 8 adapters,
//      for Llama-3-8B (hidden 4096: q/k/v 4096/1024/1024 fused, o 4096, gate/up 14336 fused, down
//      14336 -> 4096) and Qwen3-30B-A3B attention (hidden 2048: q/k/v 4096/512/512 fused, o 4096 -> 2048);
//      achieved GB/s over the bytes that must move (x, the active adapters' A and B, y read + write,
//      v) and the fraction of the measured HBM bandwidth;
//   3. added latency of a whole decode step: 32 layers x (q/k/v, o, gate/up, down) with 64 distinct
//      adapters at B = 64 (weights distinct per layer: nothing stays in L2), SGMV and BGMV;
//   4. MoE-LoRA at Qwen3-30B-A3B experts (E = 128, top-8, H = 2048, I = 768): virtual-expert keys +
//      plan + grouped SGMV on gate/up and down for B = 64 decode tokens and 16 adapters;
//   5. paged attention decode GB/s (Llama-3-8B GQA 32/8 heads, D = 128; DeepSeek MLA L = 512,
//      dr = 64, 16 and 128 heads) and prefill TFLOP/s (4096 new tokens).
// Values in the buffers are constant bit patterns (timing only; correctness is tests/kernels/cuda_serve).
// Each measurement prints a `RESULT key=value ...` line (bench/cuda/serve/run.sh joins them with
// torch_baseline.py's). Usage: bench_serve_cuda [--quick] [--iters N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "graft/cuda/device_info.hpp"
#include "graft/cuda/paged_attention.hpp"
#include "graft/cuda/serve_lora.hpp"

namespace {
namespace cs = graft::cuda::serve;

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// A device allocation filled with a constant bf16 / byte pattern.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t b, int byte = 0x3c) : bytes(b) {
    if (b) {
      ok(cudaMalloc(&p, b), "cudaMalloc");
      ok(cudaMemset(p, byte, b), "memset");
    }
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() {
    if (p) cudaFree(p);
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};
template <class T>
void put(const Buf& b, const std::vector<T>& v) {
  ok(cudaMemcpy(b.p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
}

int g_iters = 20;
double g_l2_bytes = 50e6;
cudaStream_t g_st;

// Captures body(0) .. body(reps-1) into one graph; returns the median milliseconds per body.
double time_graph_i(const std::function<void(int)>& body, int reps) {
  body(0);  // warm-up outside the graph (kernel attributes, device facts)
  ok(cudaStreamSynchronize(g_st), "warm-up");
  cudaGraph_t g;
  cudaGraphExec_t ex;
  ok(cudaStreamBeginCapture(g_st, cudaStreamCaptureModeGlobal), "capture");
  for (int i = 0; i < reps; ++i) body(i);
  ok(cudaStreamEndCapture(g_st, &g), "end capture");
  ok(cudaGraphInstantiate(&ex, g, 0), "instantiate");
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 2; ++i) ok(cudaGraphLaunch(ex, g_st), "launch");
  std::vector<float> ms;
  for (int i = 0; i < g_iters; ++i) {
    cudaEventRecord(a, g_st);
    ok(cudaGraphLaunch(ex, g_st), "launch");
    cudaEventRecord(b, g_st);
    ok(cudaEventSynchronize(b), "sync");
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t / static_cast<float>(reps));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaGraphExecDestroy(ex);
  cudaGraphDestroy(g);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}
double time_graph(const std::function<void()>& body, int reps = 10) {
  return time_graph_i([&](int) { body(); }, reps);
}

double measure_hbm() {
  const size_t bytes = size_t{1} << 30;
  Buf a(bytes), b(bytes);
  const double ms = time_graph([&] { ok(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, g_st), "copy"); }, 2);
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

// One LoRA-adapted projection group (fused slices) for `adapters` adapters of rank r, per layer.
struct Module {
  std::string name;
  int64_t K;
  std::vector<int64_t> n;  // slice widths
};

struct LoraSetup {
  Module m;
  int adapters = 0, rank = 0, layers = 0;
  int64_t T = 0;
  std::vector<Buf*> owned;
  Buf *tab_a = nullptr, *tab_b = nullptr, *tab_r = nullptr, *tab_s = nullptr;  // [layers][adapters·ns]
  Buf *x = nullptr, *y = nullptr, *v = nullptr;
  cs::LoraBatchDims dims;
  int64_t ldy = 0;
  LoraSetup(const Module& mod, int n_adapters, int r, int64_t T_, int n_layers) : m(mod), adapters(n_adapters), rank(r), layers(n_layers), T(T_) {
    const int ns = static_cast<int>(m.n.size());
    dims.T = T;
    dims.K = m.K;
    dims.num_slices = ns;
    int64_t off = 0;
    for (int i = 0; i < ns; ++i) {
      dims.slices[i] = {m.n[static_cast<size_t>(i)], off};
      off += m.n[static_cast<size_t>(i)];
    }
    ldy = off;
    dims.max_rank = r;
    dims.splits = cs::lora_shrink_splits(T, m.K, ns, adapters);
    // adapter weights: one allocation per layer holding every adapter's A and B of every slice
    size_t per_adapter = 0;
    for (int i = 0; i < ns; ++i) per_adapter += static_cast<size_t>(r) * static_cast<size_t>(m.K + m.n[static_cast<size_t>(i)]);
    const size_t entries = static_cast<size_t>(adapters * ns);
    std::vector<const uint16_t*> ha, hb;
    std::vector<int32_t> hr(entries * static_cast<size_t>(layers), r);
    std::vector<float> hs(entries * static_cast<size_t>(layers), 2.0f);
    for (int l = 0; l < layers; ++l) {
      Buf* w = new Buf(per_adapter * static_cast<size_t>(adapters) * 2);
      owned.push_back(w);
      size_t pos = 0;
      for (int a = 0; a < adapters; ++a)
        for (int i = 0; i < ns; ++i) {
          ha.push_back(w->as<uint16_t>() + pos);
          pos += static_cast<size_t>(r) * static_cast<size_t>(m.K);
          hb.push_back(w->as<uint16_t>() + pos);
          pos += static_cast<size_t>(r) * static_cast<size_t>(m.n[static_cast<size_t>(i)]);
        }
    }
    tab_a = new Buf(ha.size() * sizeof(void*));
    tab_b = new Buf(hb.size() * sizeof(void*));
    tab_r = new Buf(hr.size() * 4);
    tab_s = new Buf(hs.size() * 4);
    put(*tab_a, ha);
    put(*tab_b, hb);
    put(*tab_r, hr);
    put(*tab_s, hs);
    x = new Buf(static_cast<size_t>(T * m.K) * 2);
    y = new Buf(static_cast<size_t>(T * ldy) * 2, 0);
    v = new Buf(dims.v_elems() * 4);
    owned.insert(owned.end(), {tab_a, tab_b, tab_r, tab_s, x, y, v});
  }
  ~LoraSetup() {
    for (Buf* b : owned) delete b;
  }
  cs::LoraTable table(int layer) const {
    const size_t off = static_cast<size_t>(layer) * static_cast<size_t>(adapters) * m.n.size();
    return {tab_a->as<const uint16_t* const>() + off, tab_b->as<const uint16_t* const>() + off, tab_r->as<int32_t>() + off,
            tab_s->as<float>() + off, adapters};
  }
  // Bytes that must move for one layer: x, the A/B of the adapters used, y read + write, v write + read.
  double bytes(int used_adapters) const {
    double b = static_cast<double>(T * m.K) * 2;
    for (int64_t n : m.n) b += static_cast<double>(used_adapters) * rank * static_cast<double>(m.K + n) * 2 + static_cast<double>(T * n) * 4;
    b += static_cast<double>(T) * rank * static_cast<double>(m.n.size()) * 4 * 2 * dims.splits;
    return b;
  }
  double flops() const {
    double f = 0;
    for (int64_t n : m.n) f += 2.0 * static_cast<double>(T) * rank * static_cast<double>(m.K + n);
    return f;
  }
};

struct Plan {
  Buf sorted, counts, offsets, tiles, cursor;
  int num_keys;
  Plan(int64_t T, int keys)
      : sorted(static_cast<size_t>(T) * 4), counts((keys + 1) * 4), offsets((keys + 2) * 4), tiles((keys + 1) * 4),
        cursor((keys + 1) * 4), num_keys(keys) {}
  cs::LoraPlan plan() const { return {sorted.as<int32_t>(), counts.as<int32_t>(), offsets.as<int32_t>(), tiles.as<int32_t>(), cursor.as<int32_t>()}; }
  cs::LoraPlanView view() const { return {sorted.as<int32_t>(), offsets.as<int32_t>(), tiles.as<int32_t>()}; }
};

void sgmv(const LoraSetup& s, const Plan& p, int layer) {
  cs::SgmvShrinkDesc sd;
  sd.dims = s.dims;
  sd.table = s.table(layer);
  sd.plan = p.view();
  sd.x = s.x->as<uint16_t>();
  sd.v = s.v->as<float>();
  cs::sgmv_shrink(sd, g_st);
  cs::SgmvExpandDesc ed;
  ed.dims = s.dims;
  ed.table = s.table(layer);
  ed.plan = p.view();
  ed.v = s.v->as<float>();
  ed.y = s.y->as<uint16_t>();
  cs::sgmv_expand(ed, g_st);
}
void bgmv(const LoraSetup& s, const int32_t* keys, int layer) {
  cs::BgmvShrinkDesc sd;
  sd.dims = s.dims;
  sd.table = s.table(layer);
  sd.row_key = keys;
  sd.x = s.x->as<uint16_t>();
  sd.v = s.v->as<float>();
  cs::bgmv_shrink(sd, g_st);
  cs::BgmvExpandDesc ed;
  ed.dims = s.dims;
  ed.table = s.table(layer);
  ed.row_key = keys;
  ed.v = s.v->as<float>();
  ed.y = s.y->as<uint16_t>();
  cs::bgmv_expand(ed, g_st);
}

// Row -> adapter: decode round-robin over `adapters` (distinct when B <= adapters); prefill in
// contiguous chunks (one request per adapter).
std::vector<int32_t> row_keys(int64_t T, int adapters, bool chunks) {
  std::vector<int32_t> k(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    k[static_cast<size_t>(t)] = chunks ? static_cast<int32_t>(t * adapters / T) : static_cast<int32_t>(t % adapters);
  return k;
}

void lora_modules(const char* model, const std::vector<Module>& mods, const std::vector<int64_t>& batches, double hbm) {
  for (const Module& m : mods)
    for (int64_t B : batches) {
      const bool prefill = B > 256;
      const int adapters = prefill ? 8 : static_cast<int>(std::min<int64_t>(B, 64));
      // enough layers (distinct weights, visited in turn) that the adapters do not stay in L2
      double layer_bytes = 0;
      for (int64_t n : m.n) layer_bytes += static_cast<double>(adapters) * 16 * static_cast<double>(m.K + n) * 2;
      const int layers = static_cast<int>(std::clamp(3.0 * g_l2_bytes / layer_bytes + 1.0, 2.0, 64.0));
      LoraSetup s(m, adapters, 16, B, layers);
      Plan p(B, adapters);
      Buf keys(static_cast<size_t>(B) * 4);
      put(keys, row_keys(B, adapters, prefill));
      const double t_plan = time_graph([&] { cs::lora_plan({keys.as<int32_t>(), B, adapters, p.plan()}, g_st); });
      const double t_sgmv = time_graph_i([&](int l) { sgmv(s, p, l); }, layers);
      const double t_bgmv = prefill ? 0.0 : time_graph_i([&](int l) { bgmv(s, keys.as<int32_t>(), l); }, layers);
      const double by = s.bytes(adapters);
      std::printf("%-14s %-8s B=%-5lld plan %7.4f ms  sgmv %7.4f ms %7.1f GB/s (%4.1f%% HBM) %6.2f TF/s", model,
                  m.name.c_str(), static_cast<long long>(B), t_plan, t_sgmv, by / t_sgmv / 1e6,
                  100.0 * by / t_sgmv / 1e6 / hbm, s.flops() / t_sgmv / 1e9);
      if (!prefill) std::printf("  bgmv %7.4f ms %7.1f GB/s (%4.1f%% HBM)", t_bgmv, by / t_bgmv / 1e6, 100.0 * by / t_bgmv / 1e6 / hbm);
      std::printf("  splits=%d\n", s.dims.splits);
      std::printf("RESULT kind=lora model=%s module=%s B=%lld adapters=%d rank=16 path=sgmv ms=%.5f plan_ms=%.5f gbps=%.1f pct_hbm=%.1f\n",
                  model, m.name.c_str(), static_cast<long long>(B), adapters, t_sgmv, t_plan, by / t_sgmv / 1e6,
                  100.0 * by / t_sgmv / 1e6 / hbm);
      if (!prefill)
        std::printf("RESULT kind=lora model=%s module=%s B=%lld adapters=%d rank=16 path=bgmv ms=%.5f gbps=%.1f pct_hbm=%.1f\n",
                    model, m.name.c_str(), static_cast<long long>(B), adapters, t_bgmv, by / t_bgmv / 1e6,
                    100.0 * by / t_bgmv / 1e6 / hbm);
    }
}

void decode_step(const std::vector<Module>& mods, int layers) {
  const int64_t B = 64;
  const int adapters = 64;
  std::vector<LoraSetup*> setups;
  for (const Module& m : mods) setups.push_back(new LoraSetup(m, adapters, 16, B, layers));
  Plan p(B, adapters);
  Buf keys(static_cast<size_t>(B) * 4);
  put(keys, row_keys(B, adapters, false));
  for (int path = 0; path < 2; ++path) {
    const double ms = time_graph(
        [&] {
          if (path == 0) cs::lora_plan({keys.as<int32_t>(), B, adapters, p.plan()}, g_st);
          for (int l = 0; l < layers; ++l)
            for (LoraSetup* s : setups) {
              if (path == 0) sgmv(*s, p, l);
              else bgmv(*s, keys.as<int32_t>(), l);
            }
        },
        1);
    std::printf("decode step, llama3-8b, %d layers, B=64, 64 distinct rank-16 adapters on q/k/v, o, gate/up, down: "
                "%s adds %.3f ms per step\n", layers, path ? "BGMV" : "SGMV", ms);
    std::printf("RESULT kind=step model=llama3-8b layers=%d B=64 adapters=64 rank=16 path=%s ms=%.4f\n", layers,
                path ? "bgmv" : "sgmv", ms);
  }
  for (LoraSetup* s : setups) delete s;
}

void moe_lora(double hbm) {
  const int64_t T = 64, H = 2048, I = 768;
  const int k = 8, E = 128, slots = 16, r = 16;
  const int64_t n = T * k;
  const int num_keys = slots * E;
  // synthetic routing: token t -> experts (t·k + j)·37 mod E (distinct per token), slot t mod 16
  std::vector<int32_t> ids(static_cast<size_t>(n)), slot(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    slot[static_cast<size_t>(t)] = static_cast<int32_t>(t % slots);
    for (int j = 0; j < k; ++j) ids[static_cast<size_t>(t * k + j)] = static_cast<int32_t>(((t * 5 + j) * 37) % E);
  }
  std::vector<std::pair<int32_t, int32_t>> ord;
  for (int32_t f = 0; f < n; ++f) ord.push_back({ids[static_cast<size_t>(f)], f});
  std::stable_sort(ord.begin(), ord.end(), [](auto a, auto b) { return a.first < b.first; });
  std::vector<int32_t> order;
  for (auto& o : ord) order.push_back(o.second);
  std::vector<int> used(static_cast<size_t>(num_keys), 0);
  for (int64_t f = 0; f < n; ++f) used[static_cast<size_t>(slot[static_cast<size_t>(f / k)] * E + ids[static_cast<size_t>(f)])] = 1;
  const int active = std::count(used.begin(), used.end(), 1);
  Buf dorder(static_cast<size_t>(n) * 4), dids(static_cast<size_t>(n) * 4), dslot(static_cast<size_t>(T) * 4), keys(static_cast<size_t>(n) * 4);
  put(dorder, order);
  put(dids, ids);
  put(dslot, slot);
  LoraSetup gu(Module{"expert_gate_up", H, {I, I}}, num_keys, r, n, 1), dn(Module{"expert_down", I, {H}}, num_keys, r, n, 1);
  Plan p(n, num_keys);
  const double ms = time_graph([&] {
    cs::MoeLoraKeysDesc kd;
    kd.order = dorder.as<int32_t>();
    kd.expert_ids = dids.as<int32_t>();
    kd.token_slot = dslot.as<int32_t>();
    kd.T = T;
    kd.k = k;
    kd.E = E;
    kd.num_slots = slots;
    kd.keys = keys.as<int32_t>();
    cs::moe_lora_keys(kd, g_st);
    cs::lora_plan({keys.as<int32_t>(), n, num_keys, p.plan()}, g_st);
    sgmv(gu, p, 0);
    sgmv(dn, p, 0);
  });
  const double by = gu.bytes(active) + dn.bytes(active);
  std::printf("moe-lora qwen3-30b-a3b experts: B=64 tokens (512 rows), %d adapters x %d experts (%d active pairs), "
              "rank 16: keys + plan + gate/up + down %.4f ms, %.1f GB/s (%.1f%% HBM)\n",
              slots, E, active, ms, by / ms / 1e6, 100.0 * by / ms / 1e6 / hbm);
  std::printf("RESULT kind=moe_lora model=qwen3-30b-a3b B=64 adapters=%d active_pairs=%d rank=16 ms=%.5f gbps=%.1f\n", slots,
              active, ms, by / ms / 1e6);
}

void attention(double hbm, bool quick) {
  const int Hq = 32, Hkv = 8, D = 128, bs = 16;
  for (int B : quick ? std::vector<int>{1, 64} : std::vector<int>{1, 8, 32, 64, 128})
    for (int ctx : quick ? std::vector<int>{2048} : std::vector<int>{512, 2048, 8192}) {
      const int blocks_per_seq = (ctx + bs - 1) / bs;
      const int64_t nb = static_cast<int64_t>(B) * blocks_per_seq;
      Buf k(static_cast<size_t>(nb * bs * Hkv * D) * 2), v(k.bytes), q(static_cast<size_t>(B * Hq * D) * 2),
          out(static_cast<size_t>(B * Hq * D) * 2);
      std::vector<int32_t> table(static_cast<size_t>(nb)), lens(static_cast<size_t>(B), ctx);
      for (int64_t i = 0; i < nb; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % nb);  // scattered pages
      Buf dt(table.size() * 4), dl(lens.size() * 4);
      put(dt, table);
      put(dl, lens);
      cs::PagedDecodeDesc d;
      d.q = q.as<uint16_t>();
      d.cache = {k.as<uint16_t>(), v.as<uint16_t>(), nb, bs, Hkv, D};
      d.block_table = dt.as<int32_t>();
      d.max_blocks = blocks_per_seq;
      d.context_lens = dl.as<int32_t>();
      d.num_seqs = B;
      d.q_heads = Hq;
      d.scale = 0.088f;
      d.max_context_len = ctx;
      Buf ws(cs::paged_decode_workspace_bytes(d));
      d.workspace = ws.as<float>();
      d.out = out.as<uint16_t>();
      const double ms = time_graph([&] { cs::paged_decode_attention(d, g_st); });
      const double by = static_cast<double>(B) * ctx * Hkv * D * 2 * 2;
      std::printf("paged decode llama3-8b B=%-4d ctx=%-5d partition=%-5d %8.4f ms %7.1f GB/s (%4.1f%% HBM)\n", B, ctx,
                  cs::paged_decode_partition_size(d), ms, by / ms / 1e6, 100.0 * by / ms / 1e6 / hbm);
      std::printf("RESULT kind=paged_decode model=llama3-8b B=%d ctx=%d ms=%.5f gbps=%.1f pct_hbm=%.1f\n", B, ctx, ms,
                  by / ms / 1e6, 100.0 * by / ms / 1e6 / hbm);
    }
  for (int H : {16, 128})
    for (int B : quick ? std::vector<int>{64} : std::vector<int>{1, 32, 64})
      for (int ctx : quick ? std::vector<int>{2048} : std::vector<int>{2048, 8192}) {
        const int L = 512, dr = 64, bsz = 64, blocks_per_seq = (ctx + bsz - 1) / bsz;
        const int64_t nb = static_cast<int64_t>(B) * blocks_per_seq;
        Buf cache(static_cast<size_t>(nb * bsz * (L + dr)) * 2), qa(static_cast<size_t>(B * H * L) * 2),
            qp(static_cast<size_t>(B * H * dr) * 2), out(static_cast<size_t>(B * H * L) * 2);
        std::vector<int32_t> table(static_cast<size_t>(nb)), lens(static_cast<size_t>(B), ctx);
        for (int64_t i = 0; i < nb; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % nb);
        Buf dt(table.size() * 4), dl(lens.size() * 4);
        put(dt, table);
        put(dl, lens);
        cs::PagedMlaDecodeDesc d;
        d.q_abs = qa.as<uint16_t>();
        d.q_pe = qp.as<uint16_t>();
        d.c_cache = cache.as<uint16_t>();
        d.c_stride = L + dr;
        d.pe_cache = cache.as<uint16_t>() + L;
        d.pe_stride = L + dr;
        d.num_blocks = nb;
        d.block_size = bsz;
        d.kv_lora_rank = L;
        d.rope_dim = dr;
        d.block_table = dt.as<int32_t>();
        d.max_blocks = blocks_per_seq;
        d.context_lens = dl.as<int32_t>();
        d.num_seqs = B;
        d.heads = H;
        d.scale = 0.072f;
        d.max_context_len = ctx;
        Buf ws(cs::paged_mla_decode_workspace_bytes(d));
        d.workspace = ws.as<float>();
        d.out = out.as<uint16_t>();
        const double ms = time_graph([&] { cs::paged_mla_decode(d, g_st); });
        const double by = static_cast<double>(B) * ctx * (L + dr) * 2;
        std::printf("paged MLA decode H=%-3d B=%-4d ctx=%-5d %8.4f ms %7.1f GB/s of latent cache (%4.1f%% HBM)\n", H, B,
                    ctx, ms, by / ms / 1e6, 100.0 * by / ms / 1e6 / hbm);
        std::printf("RESULT kind=mla_decode H=%d B=%d ctx=%d ms=%.5f gbps=%.1f pct_hbm=%.1f\n", H, B, ctx, ms, by / ms / 1e6,
                    100.0 * by / ms / 1e6 / hbm);
      }
  {  // prefill: one sequence, 4096 new tokens
    const int T = 4096, nb = T / bs;
    Buf k(static_cast<size_t>(nb) * bs * Hkv * D * 2), v(k.bytes), q(static_cast<size_t>(T) * Hq * D * 2), out(q.bytes);
    std::vector<int32_t> table(static_cast<size_t>(nb)), lens = {T}, qs = {0, T};
    std::iota(table.begin(), table.end(), 0);
    Buf dt(table.size() * 4), dl(4), dq(8);
    put(dt, table);
    put(dl, lens);
    put(dq, qs);
    cs::PagedPrefillDesc d;
    d.q = q.as<uint16_t>();
    d.Tq = T;
    d.query_start = dq.as<int32_t>();
    d.cache = {k.as<uint16_t>(), v.as<uint16_t>(), nb, bs, Hkv, D};
    d.block_table = dt.as<int32_t>();
    d.max_blocks = nb;
    d.context_lens = dl.as<int32_t>();
    d.num_seqs = 1;
    d.q_heads = Hq;
    d.scale = 0.088f;
    d.max_query_len = T;
    d.out = out.as<uint16_t>();
    const double ms = time_graph([&] { cs::paged_prefill_attention(d, g_st); }, 2);
    const double fl = 4.0 * Hq * D * (static_cast<double>(T) * T / 2);
    std::printf("paged prefill llama3-8b T=4096 (causal): %.3f ms, %.1f TFLOP/s\n", ms, fl / ms / 1e9);
    std::printf("RESULT kind=paged_prefill model=llama3-8b T=4096 ms=%.4f tflops=%.1f\n", ms, fl / ms / 1e9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--iters" && i + 1 < argc) g_iters = std::atoi(argv[++i]);
  }
  if (graft::cuda::device_count() == 0) {
    std::printf("no GPU: %s\n", graft::cuda::no_device_reason().c_str());
    return 0;
  }
  const auto dev = graft::cuda::device_info(0);
  g_l2_bytes = dev.l2_bytes;
  ok(cudaStreamCreateWithFlags(&g_st, cudaStreamNonBlocking), "stream");
  const double hbm = measure_hbm();
  std::printf("device %s (sm_%d%d, %d SMs, %.1f MB L2, smem opt-in %zu B); peak DRAM %.0f GB/s, measured copy %.0f GB/s\n",
              dev.name.c_str(), dev.cc_major, dev.cc_minor, dev.sm_count, dev.l2_bytes / 1048576.0,
              dev.smem_per_block_optin, dev.peak_dram_gbps(), hbm);
  std::printf("RESULT kind=hbm gbps=%.1f peak_gbps=%.1f\n", hbm, dev.peak_dram_gbps());

  const std::vector<Module> llama = {{"qkv", 4096, {4096, 1024, 1024}}, {"o", 4096, {4096}},
                                     {"gate_up", 4096, {14336, 14336}}, {"down", 14336, {4096}}};
  const std::vector<Module> qwen = {{"qkv", 2048, {4096, 512, 512}}, {"o", 4096, {2048}}};
  const std::vector<int64_t> batches = quick ? std::vector<int64_t>{1, 64, 256, 4096}
                                             : std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 128, 256, 4096};
  lora_modules("llama3-8b", llama, batches, hbm);
  lora_modules("qwen3-30b-a3b", qwen, batches, hbm);
  decode_step(llama, quick ? 4 : 32);
  moe_lora(hbm);
  attention(hbm, quick);
  return 0;
}
