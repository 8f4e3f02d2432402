// test_backend_ops (ggml's test-backend-ops is the model): every graft::Backend op of the CUDA backend
// against the CPU backend (the oracle), forward and backward, at random shapes including sizes that are
// not tile multiples, T = 0, GQA, every mask kind, skewed MoE routing with an empty expert, NF4 on both
// the fused and the dequant paths, mixed LoRA ranks with one adapter per row, and dropout masks.
// Built twice: label cuda (skips with a message without a GPU) and label simt (the same cases on the
// CPU SIMT target, cuBLAS played by the SIMT host GEMM).
// Inputs are rounded to bf16 first, so both backends see the same values. Tolerances derive from bf16:
// one rounding of an output is <= 2^-9 relative; an op whose CUDA path rounds k intermediates to bf16
// (linear + LoRA: 2, MoE experts: 4 GEMMs + SwiGLU + combine) is held to a norm-wise relative error of
// k · 2^-8 (kRel1 = 4e-3 for one rounding, kRel2 = 8e-3, kRelMoe = 2e-2). fp32 outputs (LoRA gradients,
// router weights, the loss) from bf16 inputs: 1e-2 / 1e-5 as stated per case.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "../cuda_common/cuda_test_util.hpp"
#include "graft/backend/backend.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/cuda/cuda_backend.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/error.hpp"
#include "graft/quant/nf4.hpp"
#include "graft/quant/q6.hpp"
#include "graft/quant/q8.hpp"

namespace graft {
namespace {

using namespace testing::cudatest;

constexpr double kRel1 = 4e-3, kRel2 = 8e-3, kRelMoe = 2e-2;

#define GRAFT_NEED_GPU() \
  if (!kSimt && cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::no_device_reason()

// Host f32 tensor of N(0, s²) values rounded to bf16 (exactly representable on both backends).
Tensor rnd(const Dims& shape, uint32_t seed, float s = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.0f, s);
  Tensor t = Tensor::empty(shape, DType::F32);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = bf16_to_f32(f32_to_bf16(n(g)));
  return t;
}

double rel(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.numel(), want.numel());
  double num = 0, den = 0;
  const float* a = got.data<float>();
  const float* b = want.data<float>();
  for (int64_t i = 0; i < want.numel(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct Both {
  std::unique_ptr<Backend> cpu = cpu::make_backend();
  std::unique_ptr<Backend> gpu = cuda::make_cuda_backend(0);
  Tensor up(const Tensor& h) { return gpu->to_device(h, gpu->activation_dtype()); }
  // A device activation with every bit set (NaN in bf16): catches elements an op forgets to write.
  Tensor poisoned(const Dims& shape, DType dt = DType::BF16) {
    Tensor t = gpu->empty(shape, dt);
    gpu->synchronize();
    if (t.nbytes()) cuda_ok(cudaMemset(t.raw(), 0xff, t.nbytes()), "poison");
    return t;
  }
  Tensor down(const Tensor& d) { return gpu->to_host(d); }
};

LinearWeight dense_w(int64_t out, int64_t in, uint32_t seed, bool bias) {
  LinearWeight w;
  w.out = out;
  w.in = in;
  w.dense = rnd({out, in}, seed, 1.0f / std::sqrt(float(in)));
  if (bias) w.bias = rnd({out}, seed + 1);
  return w;
}
LinearWeight nf4_w(int64_t out, int64_t in, uint32_t seed, bool double_quant) {
  LinearWeight w;
  w.out = out;
  w.in = in;
  w.nf4 = std::make_shared<nf4::QuantizedWeight>(nf4::quantize(rnd({out, in}, seed, 0.1f), double_quant));
  return w;
}
LoraFactors lora(int64_t r, int64_t in, int64_t out, uint32_t seed, float scale) {
  return {rnd({r, in}, seed, 0.2f), rnd({out, r}, seed + 1, 0.2f), scale};
}

// ---------------------------------------------------------------- linear
struct LinCase {
  int64_t T, in, out;
  bool nf4, double_quant, bias;
};
class BackendLinear : public ::testing::TestWithParam<LinCase> {};

TEST_P(BackendLinear, BaseAndMixedLoraMatchCpu) {
  GRAFT_NEED_GPU();
  const auto c = GetParam();
  Both b;
  LinearWeight w = c.nf4 ? nf4_w(c.out, c.in, 11, c.double_quant) : dense_w(c.out, c.in, 11, c.bias);
  const Tensor x = rnd({c.T, c.in}, 3);
  // Three adapters of mixed ranks; rows cycle through slots 0, 1, 2 and -1 (base only); slot 3 unused.
  const LoraFactors l0 = lora(4, c.in, c.out, 21, 2.0f), l1 = lora(8, c.in, c.out, 31, 0.5f),
                    l2 = lora(1, c.in, c.out, 41, 1.0f), l3 = lora(16, c.in, c.out, 51, 1.0f);
  const std::vector<const LoraFactors*> slots{&l0, &l1, &l2, &l3};
  std::vector<int32_t> row_slot(static_cast<size_t>(c.T));
  for (int64_t t = 0; t < c.T; ++t) row_slot[static_cast<size_t>(t)] = static_cast<int32_t>(t % 4) - (t % 4 == 3 ? 4 : 0);
  for (bool with_lora : {false, true}) {
    const LoraBatch batch = with_lora ? LoraBatch{slots, row_slot} : LoraBatch{};
    Tensor want = Tensor::empty({c.T, c.out}, DType::F32);
    b.cpu->linear(x, w, batch, want);
    Tensor y = b.poisoned({c.T, c.out});
    b.gpu->linear(b.up(x), w, batch, y);
    EXPECT_LT(rel(b.down(y), want), with_lora ? kRel2 : kRel1) << "lora " << with_lora;
  }
}
INSTANTIATE_TEST_SUITE_P(Shapes, BackendLinear,
                         ::testing::Values(LinCase{5, 48, 20, false, false, true}, LinCase{0, 16, 8, false, false, false},
                                           LinCase{33, 128, 64, true, true, false},   // fused NF4 kernel
                                           LinCase{7, 128, 96, true, false, false},   // fused, fp32 absmax
                                           LinCase{9, 72, 30, true, true, false},     // K % 64 != 0: dequant + GEMM
                                           LinCase{1, 64, 14, true, true, false}));   // decode-shaped

// ---------------------------------------------------------------- elementwise and norm
TEST(BackendOps, RmsnormSwigluAddScaleEmbeddingMatchCpu) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 13, H = 40;
  const Tensor x = rnd({T, H}, 1), w = rnd({H}, 2, 0.3f), g = rnd({T, H}, 3), u = rnd({T, H}, 4);
  Tensor want = Tensor::empty({T, H}, DType::F32), y = b.poisoned({T, H});
  b.cpu->rmsnorm(x, w, 1e-6f, want);
  b.gpu->rmsnorm(b.up(x), w, 1e-6f, y);
  EXPECT_LT(rel(b.down(y), want), kRel1) << "rmsnorm";
  Tensor xi = b.up(x);  // in place, as the model calls it
  b.gpu->rmsnorm(xi, w, 1e-6f, xi);
  EXPECT_LT(rel(b.down(xi), want), kRel1) << "rmsnorm in place";

  b.cpu->swiglu(g, u, want);
  Tensor o = b.poisoned({T, H});
  b.gpu->swiglu(b.up(g), b.up(u), o);
  EXPECT_LT(rel(b.down(o), want), kRel1) << "swiglu";

  Tensor acc = x.clone(), accd = b.up(x);
  b.cpu->add_acc(g, acc);
  b.gpu->add_acc(b.up(g), accd);
  EXPECT_LT(rel(b.down(accd), acc), kRel1) << "add_acc";

  const Tensor s = rnd({T}, 5);
  Tensor sc = x.clone(), scd = b.up(x);
  b.cpu->scale_rows(sc, s);
  b.gpu->scale_rows(scd, s);
  EXPECT_LT(rel(b.down(scd), sc), kRel1) << "scale_rows";

  const Tensor table = rnd({50, H}, 6);
  const std::vector<int32_t> ids{0, 49, 7, 7, 13};
  Tensor e = Tensor::empty({5, H}, DType::F32), ed = b.poisoned({5, H});
  b.cpu->embedding(ids, table, e);
  b.gpu->embedding(ids, table, ed);
  EXPECT_EQ(rel(b.down(ed), e), 0.0) << "embedding copies bf16 rows exactly";
  const std::vector<int32_t> bad{3, 50};
  EXPECT_THROW(b.gpu->embedding(bad, table, ed), Error) << "an id outside the vocabulary is an error";
}

TEST(BackendOps, RopeBothLayoutsAndPartialRotation) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 6, heads = 3, D = 16;
  ops::RopeParams p;
  p.rot_dim = 12;
  const ops::RopeTable table = ops::rope_table(p);
  const std::vector<int32_t> pos{0, 1, 2, 9, 100, 4097};
  for (bool inter : {false, true}) {
    Tensor x = rnd({T, heads, D}, 7), xd = b.up(x);
    b.cpu->rope(x, pos, table, 12, inter);
    b.gpu->rope(xd, pos, table, 12, inter);
    EXPECT_LT(rel(b.down(xd), x), kRel1) << "rope interleaved=" << inter;
    Tensor dx = rnd({T, heads, D}, 8), dxd = b.up(dx);
    b.cpu->rope_bwd(dx, pos, table, 12, inter);
    b.gpu->rope_bwd(dxd, pos, table, 12, inter);
    EXPECT_LT(rel(b.down(dxd), dx), kRel1) << "rope_bwd interleaved=" << inter;
  }
}

// ---------------------------------------------------------------- attention
struct AttnCase {
  int64_t T, S, Hq, Hkv, D, Dv;
  int mask;  // 0 causal, 1 causal + sliding window 3, 2 causal + packed segments, 3 chunked, 4 bidirectional
};
class BackendAttention : public ::testing::TestWithParam<AttnCase> {};

TEST_P(BackendAttention, ForwardAndBackwardMatchCpu) {
  GRAFT_NEED_GPU();
  const auto c = GetParam();
  Both b;
  const Tensor q = rnd({c.T, c.Hq, c.D}, 1), k = rnd({c.S, c.Hkv, c.D}, 2), v = rnd({c.S, c.Hkv, c.Dv}, 3),
               dout = rnd({c.T, c.Hq, c.Dv}, 4);
  std::vector<int32_t> qp(static_cast<size_t>(c.T)), kp(static_cast<size_t>(c.S)), qs(qp.size()), ks(kp.size());
  for (int64_t j = 0; j < c.S; ++j) kp[static_cast<size_t>(j)] = static_cast<int32_t>(j);
  for (int64_t t = 0; t < c.T; ++t) qp[static_cast<size_t>(t)] = static_cast<int32_t>(c.S - c.T + t);
  for (int64_t j = 0; j < c.S; ++j) ks[static_cast<size_t>(j)] = static_cast<int32_t>(j < c.S / 2 ? 0 : 1);
  for (int64_t t = 0; t < c.T; ++t) qs[static_cast<size_t>(t)] = ks[static_cast<size_t>(c.S - c.T + t)];
  ops::AttentionMask m;
  m.causal = c.mask != 4;
  if (c.mask == 1) m.sliding_window = 3;
  if (c.mask == 2) {
    m.q_segments = qs;
    m.k_segments = ks;
  }
  if (c.mask == 3) m.chunk_size = 4;
  const float scale = 1.0f / std::sqrt(float(c.D));
  Tensor want = Tensor::empty({c.T, c.Hq, c.Dv}, DType::F32), out = b.poisoned({c.T, c.Hq, c.Dv});
  b.cpu->attention(q, k, v, qp, kp, m, scale, want);
  b.gpu->attention(b.up(q), b.up(k), b.up(v), qp, kp, m, scale, out);
  EXPECT_LT(rel(b.down(out), want), kRel1) << "attention";

  Tensor dq = Tensor::empty(q.shape(), DType::F32), dk = Tensor::empty(k.shape(), DType::F32),
         dv = Tensor::empty(v.shape(), DType::F32);
  b.cpu->attention_bwd(q, k, v, dout, qp, kp, m, scale, dq, dk, dv);
  Tensor gq = b.poisoned(q.shape()), gk = b.poisoned(k.shape()), gv = b.poisoned(v.shape());
  b.gpu->attention_bwd(b.up(q), b.up(k), b.up(v), b.up(dout), qp, kp, m, scale, gq, gk, gv);
  EXPECT_LT(rel(b.down(gq), dq), kRel2) << "dq";
  EXPECT_LT(rel(b.down(gk), dk), kRel2) << "dk";
  EXPECT_LT(rel(b.down(gv), dv), kRel2) << "dv";
}
INSTANTIATE_TEST_SUITE_P(Shapes, BackendAttention,
                         ::testing::Values(AttnCase{9, 9, 4, 2, 16, 16, 0}, AttnCase{5, 12, 2, 1, 24, 8, 1},
                                           AttnCase{11, 11, 3, 3, 8, 8, 2}, AttnCase{10, 10, 2, 2, 16, 16, 3},
                                           AttnCase{4, 7, 2, 1, 16, 16, 4}, AttnCase{0, 5, 2, 1, 8, 8, 0}));

TEST(BackendOps, MlaAttentionMatchesCpuAbsorbedForm) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 5, H = 2, dn = 16, dr = 8, dv = 16, kvr = 32;
  const Tensor qn = rnd({T, H, dn}, 1), qpe = rnd({T, H, dr}, 2), c = rnd({T, kvr}, 3), kpe = rnd({T, dr}, 4);
  const LinearWeight kvb = dense_w(H * (dn + dv), kvr, 5, false);
  std::vector<int32_t> pos{0, 1, 2, 3, 4};
  const ops::AttentionMask m;
  const float scale = 1.0f / std::sqrt(float(dn + dr));
  Tensor want = Tensor::empty({T, H, dv}, DType::F32), out = b.poisoned({T, H, dv});
  b.cpu->mla_attention(qn, qpe, c, kpe, kvb, dv, pos, pos, m, scale, want);
  b.gpu->mla_attention(b.up(qn), b.up(qpe), b.up(c), b.up(kpe), kvb, dv, pos, pos, m, scale, out);
  EXPECT_LT(rel(b.down(out), want), kRel2);
}

// ---------------------------------------------------------------- MoE
TEST(BackendOps, MoeRouteMatchesCpu) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 17, E = 8;
  const Tensor logits = rnd({T, E}, 9);
  std::vector<float> bias(E);
  for (int64_t e = 0; e < E; ++e) bias[static_cast<size_t>(e)] = 0.01f * float(e);
  ops::RouterParams softmax;
  softmax.top_k = 2;
  ops::RouterParams grouped;
  grouped.kind = ops::RouterKind::SigmoidGroupTopK;
  grouped.top_k = 3;
  grouped.n_group = 4;
  grouped.topk_group = 2;
  grouped.routed_scaling_factor = 2.5f;
  grouped.correction_bias = bias.data();
  for (const auto& p : {softmax, grouped}) {
    Tensor ids = Tensor::empty({T, p.top_k}, DType::I32), w = Tensor::empty({T, p.top_k}, DType::F32);
    b.cpu->moe_route(logits, p, ids, w);
    Tensor idd = b.gpu->empty({T, p.top_k}, DType::I32), wd = b.gpu->empty({T, p.top_k}, DType::F32);
    b.gpu->moe_route(b.up(logits), p, idd, wd);
    const Tensor ih = b.down(idd);
    EXPECT_EQ(std::memcmp(ih.raw(), ids.raw(), ids.nbytes()), 0) << "expert ids";
    EXPECT_LT(rel(b.down(wd), w), 1e-5) << "router weights";
  }
}

TEST(BackendOps, MoeExpertsSkewedRoutingEmptyExpertAndLora) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 9, H = 64, I = 32, k = 2;
  const int E = 4;
  for (bool quant : {false, true}) {
    ExpertWeights ex;
    for (int e = 0; e < E; ++e) {
      ex.gate.push_back(quant ? nf4_w(I, H, 100 + e, true) : dense_w(I, H, 100 + e, false));
      ex.up.push_back(quant ? nf4_w(I, H, 200 + e, true) : dense_w(I, H, 200 + e, false));
      ex.down.push_back(quant ? nf4_w(H, I, 300 + e, true) : dense_w(H, I, 300 + e, false));
    }
    // Skewed: expert 0 takes every token's first slot, expert 2 none at all.
    Tensor ids = Tensor::empty({T, k}, DType::I32), w = rnd({T, k}, 7, 0.5f);
    for (int64_t t = 0; t < T; ++t) {
      ids.data<int32_t>()[t * k] = 0;
      ids.data<int32_t>()[t * k + 1] = t % 2 ? 1 : 3;
    }
    // Per-expert LoRA for two adapters of different ranks; adapter 1 has none on expert 3.
    std::vector<LoraFactors> store;
    store.reserve(24);
    ExpertLora el;
    el.gate.resize(2);
    el.up.resize(2);
    el.down.resize(2);
    for (int s = 0; s < 2; ++s)
      for (int e = 0; e < E; ++e) {
        const int64_t r = s ? 8 : 4;
        const bool none = s == 1 && e == 3;
        store.push_back(lora(r, H, I, 400 + 10 * s + e, 1.0f));
        el.gate[s].push_back(none ? nullptr : &store.back());
        store.push_back(lora(r, H, I, 500 + 10 * s + e, 0.5f));
        el.up[s].push_back(none ? nullptr : &store.back());
        store.push_back(lora(r, I, H, 600 + 10 * s + e, 2.0f));
        el.down[s].push_back(none ? nullptr : &store.back());
      }
    std::vector<int32_t> row_slot(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) row_slot[static_cast<size_t>(t)] = static_cast<int32_t>(t % 3) - 1;  // -1, 0, 1
    for (bool scale_in : {false, true}) {
      Tensor want = Tensor::empty({T, H}, DType::F32), out = b.poisoned({T, H});
      b.cpu->moe_experts(rnd({T, H}, 8), ids, w, ex, &el, row_slot, scale_in, want);
      b.gpu->moe_experts(b.up(rnd({T, H}, 8)), b.gpu->to_device(ids, DType::I32), b.gpu->to_device(w, DType::F32), ex,
                         &el, row_slot, scale_in, out);
      EXPECT_LT(rel(b.down(out), want), kRelMoe) << "nf4 " << quant << " scale_input " << scale_in;
    }
  }
}

// ---------------------------------------------------------------- backward
struct BwdCase {
  int64_t T, in, out;
  bool nf4, dropout, device_grads;
};
class BackendLinearBwd : public ::testing::TestWithParam<BwdCase> {};

TEST_P(BackendLinearBwd, DxAndLoraGradsMatchCpu) {
  GRAFT_NEED_GPU();
  const auto c = GetParam();
  Both b;
  const LinearWeight w = c.nf4 ? nf4_w(c.out, c.in, 3, true) : dense_w(c.out, c.in, 3, false);
  const Tensor x = rnd({c.T, c.in}, 4), dy = rnd({c.T, c.out}, 5);
  const LoraFactors f = lora(6, c.in, c.out, 6, 2.0f);
  Tensor mask;
  if (c.dropout) {
    mask = Tensor::empty({c.T, c.in}, DType::F32);
    std::mt19937 g(9);
    for (int64_t i = 0; i < mask.numel(); ++i) mask.data<float>()[i] = g() % 4 == 0 ? 0.0f : 1.0f / 0.75f;
  }
  Tensor dx = Tensor::empty({c.T, c.in}, DType::F32), da = rnd({6, c.in}, 10), db = rnd({c.out, 6}, 11);
  const Tensor da0 = da.clone(), db0 = db.clone();
  b.cpu->linear_bwd(x, dy, w, &f, mask, dx, &da, &db);
  Tensor gdx = b.poisoned({c.T, c.in});
  Tensor gda = c.device_grads ? b.gpu->to_device(da0, DType::F32) : da0.clone();
  Tensor gdb = c.device_grads ? b.gpu->to_device(db0, DType::F32) : db0.clone();
  b.gpu->linear_bwd(b.up(x), b.up(dy), w, &f, mask, gdx, &gda, &gdb);
  EXPECT_LT(rel(b.down(gdx), dx), kRel2) << "dx";
  EXPECT_LT(rel(b.down(gda), da), 1e-5) << "dA (+=), fp32 from bf16 inputs";
  EXPECT_LT(rel(b.down(gdb), db), 1e-5) << "dB (+=)";
  // Without LoRA: dx only.
  b.cpu->linear_bwd(x, dy, w, nullptr, Tensor(), dx, nullptr, nullptr);
  b.gpu->linear_bwd(b.up(x), b.up(dy), w, nullptr, Tensor(), gdx, nullptr, nullptr);
  EXPECT_LT(rel(b.down(gdx), dx), kRel1) << "dx without LoRA";
}
INSTANTIATE_TEST_SUITE_P(Shapes, BackendLinearBwd,
                         ::testing::Values(BwdCase{7, 48, 20, false, false, false}, BwdCase{5, 40, 24, false, true, true},
                                           BwdCase{9, 128, 64, true, false, true},  // fused nf4_matmul_bwd_dx
                                           BwdCase{6, 72, 30, true, true, false}));  // dequant + GEMM

TEST(BackendOps, RmsnormSwigluCrossEntropyBackwardMatchCpu) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 11, H = 36, V = 50;
  const Tensor x = rnd({T, H}, 1), w = rnd({H}, 2, 0.3f), dy = rnd({T, H}, 3), g = rnd({T, H}, 4), u = rnd({T, H}, 5);
  Tensor dx = Tensor::empty({T, H}, DType::F32), gdx = b.poisoned({T, H});
  b.cpu->rmsnorm_bwd(x, w, dy, 1e-6f, dx);
  b.gpu->rmsnorm_bwd(b.up(x), w, b.up(dy), 1e-6f, gdx);
  EXPECT_LT(rel(b.down(gdx), dx), kRel1) << "rmsnorm_bwd";

  Tensor dg = Tensor::empty({T, H}, DType::F32), du = Tensor::empty({T, H}, DType::F32), gdg = b.poisoned({T, H}),
         gdu = b.poisoned({T, H});
  b.cpu->swiglu_bwd(g, u, dy, dg, du);
  b.gpu->swiglu_bwd(b.up(g), b.up(u), b.up(dy), gdg, gdu);
  EXPECT_LT(rel(b.down(gdg), dg), kRel1) << "swiglu_bwd dgate";
  EXPECT_LT(rel(b.down(gdu), du), kRel1) << "swiglu_bwd dup";

  const Tensor logits = rnd({T, V}, 6, 2.0f);
  std::vector<int32_t> labels(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) labels[static_cast<size_t>(t)] = t % 4 == 1 ? -100 : static_cast<int32_t>((t * 7) % V);
  Tensor dl = Tensor::empty({T, V}, DType::F32), gdl = b.poisoned({T, V});
  const double want = b.cpu->cross_entropy(logits, labels, &dl);
  const double got = b.gpu->cross_entropy(b.up(logits), labels, &gdl);
  EXPECT_NEAR(got, want, 1e-5 * std::abs(want)) << "mean loss";
  EXPECT_LT(rel(b.down(gdl), dl), kRel1) << "dlogits";
  std::vector<int32_t> none(static_cast<size_t>(T), -100);
  EXPECT_EQ(b.gpu->cross_entropy(b.up(logits), none, nullptr), 0.0) << "no valid label: loss 0 like the CPU";
}

// ---------------------------------------------------------------- the training step's extra ops
TEST(BackendOps, TrainingStepOpsMatchCpu) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t n = 7, H = 24, R = 5;
  const Tensor x = rnd({R, H}, 1), y = rnd({n, H}, 2), s = rnd({n}, 3);
  const std::vector<int32_t> rows{4, 0, 4, 2, 2, 2, 1};  // repeats: scatter sums in increasing i

  Tensor f = Tensor::empty({3, H}, DType::F32), fd = b.poisoned({3, H});
  b.cpu->fill(f, 0.375f);
  b.gpu->fill(fd, 0.375f);
  EXPECT_EQ(rel(b.down(fd), f), 0.0) << "fill";

  const Tensor m = rnd({R, H}, 4);
  Tensor mo = Tensor::empty({R, H}, DType::F32), mod = b.up(x);
  b.cpu->mul(x, m, mo);
  b.gpu->mul(mod, m, mod);  // in place, mask from the host
  EXPECT_LT(rel(b.down(mod), mo), kRel1) << "mul";

  const LoraFactors l = lora(5, H, 16, 7, 1.5f);
  Tensor la = rnd({R, 16}, 8), lad = b.up(la);
  b.cpu->lora_acc(x, l, la);
  b.gpu->lora_acc(b.up(x), l, lad);
  EXPECT_LT(rel(b.down(lad), la), kRel1) << "lora_acc";

  Tensor dm = Tensor::empty({n, H}, DType::F32), dmd = b.gpu->empty({n, H}, DType::F32);
  b.cpu->dropout_mask(0x1234abcdull, rows, 0.3, dm);
  b.gpu->dropout_mask(0x1234abcdull, rows, 0.3, dmd);
  EXPECT_EQ(std::memcmp(b.down(dmd).raw(), dm.raw(), dm.nbytes()), 0) << "dropout masks are bit-identical";

  Tensor g = Tensor::empty({n, H}, DType::F32), gd = b.poisoned({n, H});
  b.cpu->gather_rows(x, rows, s, g);
  b.gpu->gather_rows(b.up(x), rows, s, gd);
  EXPECT_LT(rel(b.down(gd), g), kRel1) << "gather_rows scaled";
  Tensor g2 = Tensor::empty({R, H}, DType::F32), g2d = b.poisoned({R, H});
  b.cpu->gather_rows(x, {}, Tensor(), g2);
  b.gpu->gather_rows(b.up(x), {}, Tensor(), g2d);
  EXPECT_EQ(rel(b.down(g2d), g2), 0.0) << "gather_rows identity";

  Tensor sa = x.clone(), sad = b.up(x);
  b.cpu->scatter_add_rows(y, rows, s, sa);
  b.gpu->scatter_add_rows(b.up(y), rows, s, sad);
  EXPECT_LT(rel(b.down(sad), sa), kRel1) << "scatter_add_rows";

  Tensor rd = Tensor::empty({n}, DType::F32), rdd = b.gpu->empty({n}, DType::F32);
  b.cpu->rows_dot(x, rows, y, rd);
  b.gpu->rows_dot(b.up(x), rows, b.up(y), rdd);
  EXPECT_LT(rel(b.down(rdd), rd), 1e-5) << "rows_dot";

  Tensor cc = rnd({R, 10}, 9), ccd = b.up(cc);
  b.cpu->copy_cols(x, 3, 6, cc, 2);
  b.gpu->copy_cols(b.up(x), 3, 6, ccd, 2);
  EXPECT_EQ(rel(b.down(ccd), cc), 0.0) << "copy_cols";

  Tensor sg = Tensor::empty({R, H}, DType::F32), sgd = b.poisoned({R, H});
  b.cpu->sigmoid(x, sg);
  b.gpu->sigmoid(b.up(x), sgd);
  EXPECT_LT(rel(b.down(sgd), sg), kRel1) << "sigmoid";
  Tensor sb = Tensor::empty({R, H}, DType::F32), sbd = b.poisoned({R, H});
  const Tensor sg_bf16 = b.down(sgd);  // the bf16-rounded sigmoid, used by both sides
  b.cpu->sigmoid_bwd(sg_bf16, m, sb);
  b.gpu->sigmoid_bwd(b.up(sg_bf16), b.up(m), sbd);
  EXPECT_LT(rel(b.down(sbd), sb), kRel1) << "sigmoid_bwd";
}

TEST(BackendOps, MoeRouteBackwardAndPlanMatchCpu) {
  GRAFT_NEED_GPU();
  Both b;
  const int64_t T = 10, E = 6;
  const Tensor logits = rnd({T, E}, 1);
  ops::RouterParams p;
  p.top_k = 2;
  Tensor ids = Tensor::empty({T, 2}, DType::I32), w = Tensor::empty({T, 2}, DType::F32);
  b.cpu->moe_route(logits, p, ids, w);
  const Tensor dw = rnd({T, 2}, 2);
  Tensor dl = Tensor::empty({T, E}, DType::F32), dld = b.poisoned({T, E});
  const Tensor idd = b.gpu->to_device(ids, DType::I32);
  b.cpu->moe_route_bwd(logits, p, ids, dw, dl);
  b.gpu->moe_route_bwd(b.up(logits), p, idd, dw, dld);
  EXPECT_LT(rel(b.down(dld), dl), kRel1) << "moe_route_bwd";
  const ops::MoePermutation a = b.cpu->moe_permute_plan(ids, static_cast<int>(E)),
                            c = b.gpu->moe_permute_plan(idd, static_cast<int>(E));
  EXPECT_EQ(a.order, c.order);
  EXPECT_EQ(a.counts, c.counts);
  EXPECT_EQ(a.offsets, c.offsets);
}

// ---------------------------------------------------------------- memory, transfers and errors
TEST(BackendCuda, AllocatorReusesBlocksAndWeightCacheIsNeverStale) {
  GRAFT_NEED_GPU();
  Both b;
  const LinearWeight w = dense_w(24, 32, 1, true);
  const Tensor x = b.up(rnd({4, 32}, 2));
  auto step = [&] {  // one "step": its activations die at the end, like a decode step's
    Tensor t = b.gpu->empty({4, 24}, DType::BF16);
    b.gpu->linear(x, w, {}, t);
  };
  step();  // warm-up
  b.gpu->synchronize();
  const auto m1 = cuda::cuda_backend_memory(*b.gpu);
  for (int i = 0; i < 3; ++i) step();
  b.gpu->synchronize();
  const auto m2 = cuda::cuda_backend_memory(*b.gpu);
  EXPECT_EQ(m2.activations.device_mallocs, m1.activations.device_mallocs) << "a warm step makes no cudaMalloc";
  EXPECT_GT(m2.activations.reuses, m1.activations.reuses);
  EXPECT_EQ(m2.weight_entries, m1.weight_entries) << "the weight is uploaded once";
  EXPECT_GT(m2.weight_bytes, 0u);
  // A new host weight (possibly at a freed weight's address) is uploaded again, never served stale.
  for (int i = 0; i < 4; ++i) {
    const LinearWeight wi = dense_w(24, 32, 50 + i, false);
    Tensor want = Tensor::empty({4, 24}, DType::F32), got = b.gpu->empty({4, 24}, DType::BF16);
    b.cpu->linear(b.down(x), wi, {}, want);
    b.gpu->linear(x, wi, {}, got);
    EXPECT_LT(rel(b.down(got), want), kRel1) << "weight " << i;
  }
}

TEST(BackendCuda, TransfersRoundTripAndErrorsNameTheFix) {
  GRAFT_NEED_GPU();
  Both b;
  EXPECT_EQ(b.gpu->activation_dtype(), DType::BF16);
  EXPECT_EQ(b.gpu->device().str(), "cuda:0");
  const Tensor h = rnd({3, 5}, 1);
  EXPECT_EQ(rel(b.down(b.up(h)), h), 0.0) << "bf16 values survive upload + download exactly";
  const Tensor f = b.gpu->to_device(h, DType::F32);
  EXPECT_EQ(rel(b.down(b.gpu->to_device(f, DType::BF16)), h), 0.0) << "device f32 -> bf16 cast";
  // A host activation handed to a CUDA op: a clear error, not a crash.
  Tensor y = b.gpu->empty({3, 5}, DType::BF16);
  try {
    b.gpu->swiglu(h, h, y);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("to_device"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda::make_cuda_backend(cuda::device_count() + 3), Error);
}

// The inference-only 8- and 6-bit lm_heads (--lm-head-dtype q8|q6) have no CUDA kernel: the error names the flag.
TEST(BackendCuda, RefusesTheCpuOnlyQuantizedLmHeads) {
  GRAFT_NEED_GPU();
  Both b;
  const Tensor wf = rnd({8, 64}, 5);
  const std::span<const float> all(wf.data<float>(), size_t(wf.numel()));
  LinearWeight q8w, q6w;
  q8w.out = q6w.out = 8;
  q8w.in = q6w.in = 64;
  q8w.q8 = std::make_shared<q8::QuantizedWeight>(q8::quantize(all, wf.shape()));
  q6w.q6 = std::make_shared<q6::QuantizedWeight>(q6::quantize(all, wf.shape()));
  const Tensor x = b.up(rnd({2, 64}, 6));
  for (const auto& [w, flag] : {std::pair<const LinearWeight*, const char*>{&q8w, "--lm-head-dtype q8"},
                                {&q6w, "--lm-head-dtype q6"}}) {
    Tensor y = b.gpu->empty({2, 8}, DType::BF16);
    try {
      b.gpu->linear(x, *w, {}, y);
      ADD_FAILURE() << flag << ": expected an error";
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(flag), std::string::npos) << what;
      EXPECT_NE(what.find("--device cpu"), std::string::npos) << what;
    }
  }
}

}  // namespace
}  // namespace graft
