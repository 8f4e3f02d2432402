// The dense attention kernels (graft/cuda/attention.hpp) against cpu::attention / cpu::attention_bwd
// on the same bf16-rounded inputs. Built twice: label cuda (skips without a GPU) and label simt (the
// same cases on the CPU SIMT target). Shapes: odd sizes that are not tile multiples (16 queries,
// 32 / 16 keys), GQA, head dims 5..256 with Dv != D (MLA 192/128), T != S (prefill with a cache, and
// T > S), T = 0, S = 0, causal / bidirectional, sliding window, chunks, packed segments and rows
// with no visible key (exact zeros, lse = -inf).
// Tolerances, derived from bf16: both sides read the same bf16 values and compute in fp32, so they
// differ by fp32 summation-order noise (~1e-6 relative for these lengths) plus the kernel's single
// rounding of each output to bf16 (relative error <= 2^-9 per element, so ‖a − b‖/‖b‖ <= 2^-9 ≈
// 1.95e-3). Outputs and gradients are held to 2^-8 = 3.9e-3 (the rounding plus margin). The
// backward's fast path reads the bf16-rounded forward output inside delta = Σ dout·out, an extra
// 2^-9 relative error in delta that dS = P·(dP − delta) can amplify where dP ≈ delta; it is held
// to 2^-7. The tensor-core paths (D == Dv in {64, 80, 96, 128}) also round P (and in the backward dS) to
// bf16 as mma operands, one more 2^-9 relative error per term: held to 2^-7 as well. lse is fp32
// end to end: |a − b| <= 1e-5·(1 + |b|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../cuda_common/cuda_test_util.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cuda/attention.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/tensor.hpp"

namespace graft {
namespace {

using namespace testing::cudatest;
using bf16 = __nv_bfloat16;

constexpr double kOutRel = 3.90625e-3;      // 2^-8
constexpr double kFastGradRel = 7.8125e-3;  // 2^-7
constexpr double kTcOutRel = 7.8125e-3;     // 2^-7: P is also rounded to bf16 (tensor-core path)

#define GRAFT_NEED_GPU() \
  if (!kSimt && cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::no_device_reason()

Dev<bf16> dev_bf16(const std::vector<uint16_t>& bits) {
  Dev<bf16> d(bits.size());
  if (!bits.empty()) cuda_ok(cudaMemcpy(d.p, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), "upload bf16");
  return d;
}
std::vector<uint16_t> bits_of(const Dev<bf16>& d) {
  std::vector<uint16_t> bits(d.n);
  if (d.n) cuda_ok(cudaMemcpy(bits.data(), d.p, d.n * 2, cudaMemcpyDeviceToHost), "download bf16");
  return bits;
}
std::vector<float> down_bf16(const Dev<bf16>& d) { return from_bf16(bits_of(d)); }
void sync() { cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

struct Case {
  std::string name;
  int64_t T, S, Hq, Hkv, D, Dv;
  bool causal = true;
  int64_t window = 0, chunk = 0;
  int64_t packed = 0;       // > 0: T == S packed samples of this length (positions restart, segment ids)
  bool empty_rows = false;  // some query rows get a segment id no key has
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// One problem: bf16-rounded inputs (host fp32 copies hold exactly the bf16 values), positions and
// segments, uploaded.
struct Problem {
  Case c;
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> qpos, kpos, qseg, kseg;
  Dev<bf16> dq_in, dk_in, dv_in, ddout;
  Dev<int32_t> dqpos, dkpos, dqseg, dkseg;
  float scale;

  explicit Problem(const Case& cs) : c(cs) {
    q = randn(static_cast<size_t>(c.T * c.Hq * c.D), 11, 1.5f);
    k = randn(static_cast<size_t>(c.S * c.Hkv * c.D), 12);
    v = randn(static_cast<size_t>(c.S * c.Hkv * c.Dv), 13);
    dout = randn(static_cast<size_t>(c.T * c.Hq * c.Dv), 14);
    dq_in = dev_bf16(to_bf16(q));
    dk_in = dev_bf16(to_bf16(k));
    dv_in = dev_bf16(to_bf16(v));
    ddout = dev_bf16(to_bf16(dout));
    scale = 1.0f / std::sqrt(static_cast<float>(c.D));
    const bool seg = c.packed > 0 || c.empty_rows;
    for (int64_t t = 0; t < c.T; ++t) {
      qpos.push_back(static_cast<int32_t>(c.packed > 0 ? t % c.packed : std::max<int64_t>(c.S - c.T, 0) + t));
      if (seg) qseg.push_back(static_cast<int32_t>(c.packed > 0 ? t / c.packed : 0));
      if (c.empty_rows && t % 5 == 3) qseg.back() = 99;
    }
    for (int64_t j = 0; j < c.S; ++j) {
      kpos.push_back(static_cast<int32_t>(c.packed > 0 ? j % c.packed : j));
      if (seg) kseg.push_back(static_cast<int32_t>(c.packed > 0 ? j / c.packed : 0));
    }
    dqpos = Dev<int32_t>(qpos);
    dkpos = Dev<int32_t>(kpos);
    dqseg = Dev<int32_t>(qseg);
    dkseg = Dev<int32_t>(kseg);
  }
  ops::AttentionMask cpu_mask() const {
    ops::AttentionMask m;
    m.causal = c.causal;
    m.sliding_window = c.window;
    m.chunk_size = c.chunk;
    m.q_segments = qseg;
    m.k_segments = kseg;
    return m;
  }
  cuda::AttentionMaskDev dev_mask() const {
    cuda::AttentionMaskDev m;
    m.causal = c.causal;
    m.sliding_window = c.window;
    m.chunk_size = c.chunk;
    m.q_segments = qseg.empty() ? nullptr : dqseg.p;
    m.k_segments = kseg.empty() ? nullptr : dkseg.p;
    return m;
  }
  cuda::AttentionDims dims() const { return {c.T, c.S, c.Hq, c.Hkv, c.D, c.Dv}; }
  // Whether query row t sees at least one key (cpu::attention's rule, restated here).
  bool row_has_key(int64_t t) const {
    for (int64_t j = 0; j < c.S; ++j) {
      const int64_t qp = qpos[t], kp = kpos[j];
      if (c.causal && kp > qp) continue;
      if (c.window > 0 && qp - kp >= c.window) continue;
      if (c.chunk > 0 && qp / c.chunk != kp / c.chunk) continue;
      if (!qseg.empty() && qseg[t] != kseg[j]) continue;
      return true;
    }
    return false;
  }

  // The forward on the device: out (bf16 bits) and lse.
  void run_fwd(Dev<bf16>& out, Dev<float>& lse, cuda::AttentionPath path = cuda::AttentionPath::Auto) const {
    cuda::AttentionFwdDesc d;
    d.q = dq_in.p;
    d.k = dk_in.p;
    d.v = dv_in.p;
    d.q_pos = dqpos.p;
    d.k_pos = dkpos.p;
    d.mask = dev_mask();
    d.scale = scale;
    d.dims = dims();
    d.out = out.p;
    d.lse = lse.p;
    d.path = path;
    cuda::attention_fwd(d, nullptr);
    sync();
  }
  // The CPU oracle's forward: out [T, Hq, Dv] and lse [T, Hq].
  void cpu_fwd(std::vector<float>& out, std::vector<float>& lse) const {
    out.assign(static_cast<size_t>(c.T * c.Hq * c.Dv), 0.0f);
    lse.assign(static_cast<size_t>(c.T * c.Hq), -std::numeric_limits<float>::infinity());
    if (c.T == 0 || c.S == 0) return;  // nothing visible: zeros, lse = -inf
    Tensor tq = Tensor::from_f32({c.T, c.Hq, c.D}, q), tk = Tensor::from_f32({c.S, c.Hkv, c.D}, k),
           tv = Tensor::from_f32({c.S, c.Hkv, c.Dv}, v);
    Tensor to = Tensor::zeros({c.T, c.Hq, c.Dv}, DType::F32), tl = Tensor::zeros({c.T, c.Hq}, DType::F32);
    cpu::attention(tq, tk, tv, qpos, kpos, cpu_mask(), scale, to, &tl);
    std::memcpy(out.data(), to.data<float>(), out.size() * 4);
    std::memcpy(lse.data(), tl.data<float>(), lse.size() * 4);
  }

  struct Grads {
    Dev<bf16> dq, dk, dv;
  };
  // The backward on the device; fast = pass the forward's lse and out.
  Grads run_bwd(bool fast, cuda::AttentionPath path = cuda::AttentionPath::Auto) const {
    Grads g{Dev<bf16>(static_cast<size_t>(c.T * c.Hq * c.D)), Dev<bf16>(static_cast<size_t>(c.S * c.Hkv * c.D)),
            Dev<bf16>(static_cast<size_t>(c.S * c.Hkv * c.Dv))};
    g.dq.poison();
    g.dk.poison();
    g.dv.poison();
    Dev<bf16> out(static_cast<size_t>(c.T * c.Hq * c.Dv));
    Dev<float> lse(static_cast<size_t>(c.T * c.Hq));
    if (fast) run_fwd(out, lse);
    const size_t ws_bytes = cuda::attention_bwd_workspace_bytes(c.T, c.Hq);
    Dev<float> ws(ws_bytes / sizeof(float));
    ws.poison();
    cuda::AttentionBwdDesc d;
    d.q = dq_in.p;
    d.k = dk_in.p;
    d.v = dv_in.p;
    d.dout = ddout.p;
    d.q_pos = dqpos.p;
    d.k_pos = dkpos.p;
    d.mask = dev_mask();
    d.scale = scale;
    d.dims = dims();
    d.lse = fast ? lse.p : nullptr;
    d.out = fast ? out.p : nullptr;
    d.dq = g.dq.p;
    d.dk = g.dk.p;
    d.dv = g.dv.p;
    d.workspace = ws.p;
    d.workspace_bytes = ws_bytes;
    d.path = path;
    cuda::attention_bwd(d, nullptr);
    sync();
    return g;
  }
  // The CPU oracle's backward.
  void cpu_bwd(std::vector<float>& dq, std::vector<float>& dk, std::vector<float>& dv) const {
    dq.assign(static_cast<size_t>(c.T * c.Hq * c.D), 0.0f);
    dk.assign(static_cast<size_t>(c.S * c.Hkv * c.D), 0.0f);
    dv.assign(static_cast<size_t>(c.S * c.Hkv * c.Dv), 0.0f);
    if (c.T == 0 || c.S == 0) return;  // empty sums
    Tensor tq = Tensor::from_f32({c.T, c.Hq, c.D}, q), tk = Tensor::from_f32({c.S, c.Hkv, c.D}, k),
           tv = Tensor::from_f32({c.S, c.Hkv, c.Dv}, v), tdo = Tensor::from_f32({c.T, c.Hq, c.Dv}, dout);
    Tensor gq = Tensor::zeros({c.T, c.Hq, c.D}, DType::F32), gk = Tensor::zeros({c.S, c.Hkv, c.D}, DType::F32),
           gv = Tensor::zeros({c.S, c.Hkv, c.Dv}, DType::F32);
    cpu::attention_bwd(tq, tk, tv, tdo, qpos, kpos, cpu_mask(), scale, gq, gk, gv);
    std::memcpy(dq.data(), gq.data<float>(), dq.size() * 4);
    std::memcpy(dk.data(), gk.data<float>(), dk.size() * 4);
    std::memcpy(dv.data(), gv.data<float>(), dv.size() * 4);
  }
};

std::vector<Case> cases() {
  return {
      {"causal_gqa_T37", 37, 37, 4, 2, 64, 64},
      {"causal_gqa4_T80_D128", 80, 80, 4, 1, 128, 128},
      {"bidirectional_mha_D80", 19, 19, 3, 3, 80, 80, false},
      {"prefill_cache_T13_S40_D96", 13, 40, 6, 2, 96, 96},
      {"sliding_window7_D128", 40, 40, 2, 1, 128, 128, true, 7},
      {"chunk8", 33, 33, 2, 2, 64, 64, true, 0, 8},
      {"packed12_empty_rows", 36, 36, 4, 1, 64, 64, true, 0, 0, 12, true},
      {"mla_D192_Dv128", 21, 21, 2, 2, 192, 128},
      {"D256_T9_S17", 9, 17, 2, 1, 256, 256},
      {"tiny_D5_Dv3_window", 3, 2, 2, 1, 5, 3, false, 2},
      {"T_gt_S_bidirectional", 20, 6, 2, 2, 32, 48, false},
      {"causal_empty_rows_window_chunk", 25, 25, 2, 2, 64, 64, true, 5, 10, 0, true},
      {"T0", 0, 5, 2, 1, 64, 64},
      {"S0", 7, 0, 2, 1, 64, 64},
  };
}

class CudaAttention : public ::testing::TestWithParam<Case> {};

// Whether the tensor-core forward takes this shape (attention.hpp: D == Dv in {64, 80, 96, 128}).
bool tc_shape(const Case& c) { return c.D == c.Dv && (c.D == 64 || c.D == 80 || c.D == 96 || c.D == 128); }

void check_fwd(const Problem& p, cuda::AttentionPath path) {
  const Case& c = p.c;
  Dev<bf16> out(static_cast<size_t>(c.T * c.Hq * c.Dv));
  Dev<float> lse(static_cast<size_t>(c.T * c.Hq));
  out.poison();
  lse.poison();
  p.run_fwd(out, lse, path);
  std::vector<float> ref_out, ref_lse;
  p.cpu_fwd(ref_out, ref_lse);
  const auto got = down_bf16(out);
  const auto got_lse = lse.download();
  if (c.T > 0 && c.S > 0) {
    EXPECT_LT(rel(got, ref_out), path == cuda::AttentionPath::TensorCores ? kTcOutRel : kOutRel);
  }
  int empty = 0;
  for (int64_t t = 0; t < c.T; ++t) {
    const bool has = p.row_has_key(t);
    empty += !has;
    for (int64_t h = 0; h < c.Hq; ++h) {
      const float a = got_lse[t * c.Hq + h], b = ref_lse[t * c.Hq + h];
      if (!has) {
        EXPECT_EQ(a, -std::numeric_limits<float>::infinity()) << "t " << t << " h " << h;
        for (int64_t i = 0; i < c.Dv; ++i) ASSERT_EQ(got[(t * c.Hq + h) * c.Dv + i], 0.0f) << "t " << t;
      } else {
        EXPECT_NEAR(a, b, 1e-5 * (1 + std::fabs(b))) << "t " << t << " h " << h;
      }
    }
  }
  if (c.empty_rows || c.S == 0) {
    EXPECT_GT(empty, 0) << "the case must exercise rows with no visible key";
  }
}

TEST_P(CudaAttention, ForwardMatchesCpu) {
  GRAFT_NEED_GPU();
  check_fwd(Problem(GetParam()), cuda::AttentionPath::CudaCores);
}

TEST_P(CudaAttention, ForwardTensorCoresMatchesCpu) {
  GRAFT_NEED_GPU();
  if (!tc_shape(GetParam())) GTEST_SKIP() << "the tensor-core path takes D == Dv in {64, 80, 96, 128}";
  check_fwd(Problem(GetParam()), cuda::AttentionPath::TensorCores);
}

TEST_P(CudaAttention, ForwardIsDeterministic) {
  GRAFT_NEED_GPU();
  if (GetParam().T > 64) GRAFT_SKIP_UNDER_SIMT("blocks run one after another there; the smaller cases keep the path");
  const Problem p(GetParam());
  const Case& c = p.c;
  for (const auto path : {cuda::AttentionPath::CudaCores, cuda::AttentionPath::Auto}) {
    Dev<bf16> o1(static_cast<size_t>(c.T * c.Hq * c.Dv)), o2(o1.n);
    Dev<float> l1(static_cast<size_t>(c.T * c.Hq)), l2(l1.n);
    p.run_fwd(o1, l1, path);
    p.run_fwd(o2, l2, path);
    EXPECT_EQ(bits_of(o1), bits_of(o2));
    const auto a = l1.download(), b = l2.download();
    EXPECT_EQ(0, a.empty() ? 0 : std::memcmp(a.data(), b.data(), a.size() * 4));
  }
}

// Both backward paths against cpu::attention_bwd; empty rows get exact zeros in dq; dk / dv of an
// empty problem are written (zeros), never left as they were.
void check_bwd(const Problem& p, bool fast, cuda::AttentionPath path) {
  const Case& c = p.c;
  const auto g = p.run_bwd(fast, path);
  std::vector<float> rq, rk, rv;
  p.cpu_bwd(rq, rk, rv);
  const auto gq = down_bf16(g.dq), gk = down_bf16(g.dk), gv = down_bf16(g.dv);
  const double tol = fast || path == cuda::AttentionPath::TensorCores ? kFastGradRel : kOutRel;
  if (c.T > 0 && c.S > 0) {
    EXPECT_LT(rel(gq, rq), tol) << "dq";
    EXPECT_LT(rel(gk, rk), tol) << "dk";
    EXPECT_LT(rel(gv, rv), tol) << "dv";
  } else {  // exact zeros
    EXPECT_EQ(gq, rq);
    EXPECT_EQ(gk, rk);
    EXPECT_EQ(gv, rv);
  }
  for (int64_t t = 0; t < c.T; ++t) {
    if (p.row_has_key(t)) continue;
    for (int64_t i = 0; i < c.Hq * c.D; ++i) ASSERT_EQ(gq[t * c.Hq * c.D + i], 0.0f) << "empty row " << t;
  }
}

TEST_P(CudaAttention, BackwardRecomputedStatsMatchesCpu) {
  GRAFT_NEED_GPU();
  check_bwd(Problem(GetParam()), /*fast=*/false, cuda::AttentionPath::CudaCores);
}

TEST_P(CudaAttention, BackwardWithSavedLseMatchesCpu) {
  GRAFT_NEED_GPU();
  check_bwd(Problem(GetParam()), /*fast=*/true, cuda::AttentionPath::CudaCores);
}

TEST_P(CudaAttention, BackwardTensorCoresMatchesCpu) {
  GRAFT_NEED_GPU();
  if (!tc_shape(GetParam())) GTEST_SKIP() << "the tensor-core path takes D == Dv in {64, 80, 96, 128}";
  const Problem p(GetParam());
  check_bwd(p, /*fast=*/false, cuda::AttentionPath::TensorCores);
  check_bwd(p, /*fast=*/true, cuda::AttentionPath::TensorCores);
}

TEST_P(CudaAttention, BackwardIsDeterministic) {
  GRAFT_NEED_GPU();
  if (GetParam().T > 64) GRAFT_SKIP_UNDER_SIMT("blocks run one after another there; the smaller cases keep the path");
  const Problem p(GetParam());
  for (const bool fast : {false, true}) {
    const auto a = p.run_bwd(fast), b = p.run_bwd(fast);  // Auto: tensor cores where the shape qualifies
    EXPECT_EQ(bits_of(a.dq), bits_of(b.dq)) << "fast " << fast;
    EXPECT_EQ(bits_of(a.dk), bits_of(b.dk)) << "fast " << fast;
    EXPECT_EQ(bits_of(a.dv), bits_of(b.dv)) << "fast " << fast;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(CudaAttentionDesc, RejectsBadDescriptors) {
  cuda::AttentionFwdDesc d;
  d.dims = {4, 4, 3, 2, 64, 64};  // 3 query heads over 2 kv heads
  EXPECT_THROW(cuda::attention_fwd(d, nullptr), Error);
  d.dims = {4, 4, 4, 2, 300, 64};  // head dim above the limit
  EXPECT_THROW(cuda::attention_fwd(d, nullptr), Error);
  d.dims = {4, 4, 4, 2, 64, 64};  // null pointers for T, S > 0
  EXPECT_THROW(cuda::attention_fwd(d, nullptr), Error);
  d.dims = {0, 0, 4, 2, 64, 64};  // nothing to do: valid with null pointers
  EXPECT_NO_THROW(cuda::attention_fwd(d, nullptr));
  d.dims = {0, 0, 4, 2, 192, 128};  // the tensor-core path takes D == Dv only
  d.path = cuda::AttentionPath::TensorCores;
  EXPECT_THROW(cuda::attention_fwd(d, nullptr), Error);
  // ... and 16-byte aligned tensors (checked before any launch: host stand-ins are never read).
  alignas(16) static const uint16_t host[16] = {};
  alignas(16) static const int32_t pos[4] = {};
  alignas(16) static uint16_t sink[16];
  d.dims = {1, 1, 1, 1, 64, 64};
  d.q = reinterpret_cast<const bf16*>(host + 1);
  d.k = d.v = reinterpret_cast<const bf16*>(host);
  d.q_pos = d.k_pos = pos;
  d.out = reinterpret_cast<bf16*>(sink);
  try {
    cuda::attention_fwd(d, nullptr);
    ADD_FAILURE() << "a misaligned q must be refused on the tensor-core path";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }

  cuda::AttentionBwdDesc b;
  b.dims = {0, 0, 4, 2, 64, 64};
  EXPECT_NO_THROW(cuda::attention_bwd(b, nullptr));
  float lse = 0;
  b.lse = &lse;  // lse without out
  EXPECT_THROW(cuda::attention_bwd(b, nullptr), Error);
  b.lse = nullptr;
  b.dims = {3, 0, 4, 2, 64, 64};  // T > 0 with no workspace (and null tensors)
  EXPECT_THROW(cuda::attention_bwd(b, nullptr), Error);
  EXPECT_EQ(cuda::attention_bwd_workspace_bytes(3, 4), 2u * 3 * 4 * sizeof(float));
}

}  // namespace
}  // namespace graft
