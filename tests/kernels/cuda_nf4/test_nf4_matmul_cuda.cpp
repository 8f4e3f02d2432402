// GPU tests of the NF4 dequant-matmul kernels against the CPU references (fp32), on fresh random
// inputs, NaN-poisoned outputs and shapes that are not multiples of the tiles (128 x 128 x 64 GEMM
// tiles, 32-row decode blocks). The host-side descriptor checks run everywhere (no GPU needed).
//
// Tolerance (relative Frobenius error ‖out − ref‖/‖ref‖): the reference is computed in fp32 from the
// same bf16-rounded X, A, B, bias and the fp32 dequantized W. The GPU differs by (1) W rounded to
// bf16 in the tile (|δw| ≤ 2⁻⁹|w|, random sign: ≈ 2⁻⁹/√3 ≈ 1.1e-3 relative on a K-long dot),
// (2) the bf16 output rounding (same ≈ 1.1e-3), (3) s·(X·Aᵀ) rounded to bf16 before the expand
// (≤ 1.1e-3 of the LoRA term), (4) fp32 accumulation order (~1e-6). Combined ≈ 2e-3; the bound
// kBf16Tol = 1e-2 leaves ~5x margin while a wrong nibble order, a missing tile or a wrong absmax gives
// errors of 1e-1 .. 1. fp32 outputs of bf16-exact inputs (xa, dyb, dA, dB) differ only by summation
// order: kF32Tol = 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "graft/cpu/nf4_matmul_ref.hpp"
#include "graft/cpu/ops.hpp"
#include "graft/cuda/check.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "graft/dtype.hpp"
#include "graft/error.hpp"
#include "graft/quant/nf4.hpp"
#include "../cuda_common/cuda_test_util.hpp"

namespace {
using graft::DType;
using graft::Tensor;
namespace gc = graft::cuda;

constexpr double kBf16Tol = 1e-2;
constexpr double kF32Tol = 1e-4;
using graft::testing::cudatest::kSimt;

#define SKIP_WITHOUT_GPU() \
  if (gc::device_count() == 0) GTEST_SKIP() << "no GPU: " << gc::no_device_reason()

uint32_t g_seed = std::random_device{}();  // fresh inputs every run; printed on failure

// Random tensor whose values are exactly representable in bf16 (so host and device see the same
// inputs).
Tensor rand_bf16_exact(const graft::Dims& shape, std::mt19937& rng, float sd) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::normal_distribution<float> g(0.f, sd);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = graft::bf16_to_f32(graft::f32_to_bf16(g(rng)));
  return t;
}

template <class T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    GRAFT_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)));
    poison();
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void poison() { GRAFT_CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T))); }  // NaN for bf16 / f32
};

DevBuf<__nv_bfloat16>* upload_bf16(const Tensor& t) {
  auto* b = new DevBuf<__nv_bfloat16>(static_cast<size_t>(t.numel()));
  std::vector<uint16_t> h(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < h.size(); ++i) h[i] = graft::f32_to_bf16(t.data<float>()[i]);
  GRAFT_CUDA_CHECK(cudaMemcpy(b->p, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  return b;
}
std::vector<float> download_bf16(const __nv_bfloat16* p, size_t n) {
  std::vector<uint16_t> h(n);
  GRAFT_CUDA_CHECK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = graft::bf16_to_f32(h[i]);
  return f;
}
std::vector<float> download_f32(const float* p, size_t n) {
  std::vector<float> f(n);
  GRAFT_CUDA_CHECK(cudaMemcpy(f.data(), p, n * 4, cudaMemcpyDeviceToHost));
  return f;
}
// ‖out − ref‖/‖ref‖; NaN anywhere in out makes it NaN (and every EXPECT_LT fails).
double rel_err(const std::vector<float>& out, const float* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

graft::nf4::QuantizedWeight random_nf4(int64_t n, int64_t k, bool dq, std::mt19937& rng) {
  std::normal_distribution<float> g(0.f, 0.02f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = g(rng);
  return graft::nf4::quantize(w, {n, k}, dq);
}

struct Case {
  int64_t t, n, k;
  int r;
  bool dq, bias;
  gc::Nf4Path path = gc::Nf4Path::Auto;
};
std::string name(const Case& c) {
  return "T=" + std::to_string(c.t) + " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k) +
         " r=" + std::to_string(c.r) + (c.dq ? " dq" : " fp32-absmax") + (c.bias ? " bias" : "") +
         (c.path == gc::Nf4Path::Gemm ? " gemm" : c.path == gc::Nf4Path::Decode ? " decode" : "") +
         " seed=" + std::to_string(g_seed);
}

void run_forward(const Case& c, std::mt19937& rng) {
  SCOPED_TRACE(name(c));
  const float s = 2.0f / static_cast<float>(std::max(c.r, 1));
  Tensor x = rand_bf16_exact({c.t, c.k}, rng, 1.0f);
  Tensor a = c.r ? rand_bf16_exact({c.r, c.k}, rng, 0.05f) : Tensor();
  Tensor b = c.r ? rand_bf16_exact({c.n, c.r}, rng, 0.05f) : Tensor();
  Tensor bias = c.bias ? rand_bf16_exact({c.n}, rng, 0.5f) : Tensor();
  auto q = random_nf4(c.n, c.k, c.dq, rng);

  Tensor ref = Tensor::empty({c.t, c.n}, DType::F32);
  graft::cpu::nf4_matmul_fwd(x, q, bias, a, b, s, ref);

  gc::Nf4WeightBuffer w(q);
  std::unique_ptr<DevBuf<__nv_bfloat16>> dx(upload_bf16(x));
  std::unique_ptr<DevBuf<__nv_bfloat16>> da(c.r ? upload_bf16(a) : nullptr), db(c.r ? upload_bf16(b) : nullptr);
  std::unique_ptr<DevBuf<__nv_bfloat16>> dbias(c.bias ? upload_bf16(bias) : nullptr);
  DevBuf<__nv_bfloat16> y(static_cast<size_t>(c.t * c.n));
  DevBuf<float> xa(static_cast<size_t>(c.t * c.r));

  gc::Nf4MatmulDesc d;
  d.x = dx->p;
  d.w = w.view();
  d.bias = c.bias ? dbias->p : nullptr;
  d.lora_a = c.r ? da->p : nullptr;
  d.lora_b = c.r ? db->p : nullptr;
  d.r = c.r;
  d.scale = s;
  d.xa_out = c.r ? xa.p : nullptr;
  d.y = y.p;
  d.t = c.t;
  d.path = c.path;
  gc::nf4_matmul(d, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());

  const auto out = download_bf16(y.p, y.n);
  EXPECT_LT(rel_err(out, ref.data<float>(), out.size()), kBf16Tol);
  if (c.r) {
    Tensor xar = Tensor::empty({c.t, c.r}, DType::F32);
    graft::cpu::linear(x, a, Tensor(), xar);
    const auto got = download_f32(xa.p, xa.n);
    EXPECT_LT(rel_err(got, xar.data<float>(), got.size()), kF32Tol) << "xa_out";
  }
}

TEST(CudaNf4Matmul, ForwardOddShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(g_seed);
  const std::array<std::array<int64_t, 2>, 3> nk = {{{64, 64}, {200, 320}, {770, 2048}}};
  int i = 0;
  for (int64_t t : {1, 3, 17, 130, 1000})
    for (auto [n, k] : nk)
      for (int r : {0, 8, 64}) {
        if (kSimt && (t > 130 || (t == 130 && k > 320))) continue;  // CPU time only (the SIMT target)
        run_forward({t, n, k, r, (i % 2) == 0, (i % 3) == 0}, rng);
        ++i;
      }
}

TEST(CudaNf4Matmul, ForwardBothPathsAtSmallT) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(g_seed + 1);
  for (int64_t t : {1, 3, 8, 9, 16}) {
    run_forward({t, 200, 320, 8, true, true, gc::Nf4Path::Gemm}, rng);
    run_forward({t, 200, 320, 8, true, true, gc::Nf4Path::Decode}, rng);
    run_forward({t, 770, 2048, 0, false, false, gc::Nf4Path::Decode}, rng);
  }
}

TEST(CudaNf4Matmul, ForwardRealShapes) {
  SKIP_WITHOUT_GPU();
  GRAFT_SKIP_UNDER_SIMT("model-sized shapes");
  std::mt19937 rng(g_seed + 2);
  // Qwen3-30B-A3B attention (K = 2048, N = 4096 / 512), Llama-3-8B MLP (K = 4096, N = 14336).
  for (auto [n, k] : {std::array<int64_t, 2>{4096, 2048}, {512, 2048}, {14336, 4096}}) {
    run_forward({130, n, k, 16, true, false}, rng);
    run_forward({4, n, k, 64, true, false}, rng);
  }
  run_forward({1000, 4096, 2048, 8, true, false}, rng);
}

// dX on the GPU, then LoRA grads from the GPU's own xa / dyb, against cpu::nf4_matmul_bwd.
void run_backward(int64_t t, int64_t n, int64_t k, int r, bool dq, std::mt19937& rng) {
  SCOPED_TRACE("bwd T=" + std::to_string(t) + " N=" + std::to_string(n) + " K=" + std::to_string(k) +
               " r=" + std::to_string(r) + " seed=" + std::to_string(g_seed));
  const float s = 2.0f / static_cast<float>(std::max(r, 1));
  Tensor x = rand_bf16_exact({t, k}, rng, 1.0f);
  Tensor dy = rand_bf16_exact({t, n}, rng, 1.0f);
  Tensor a = r ? rand_bf16_exact({r, k}, rng, 0.05f) : Tensor();
  Tensor b = r ? rand_bf16_exact({n, r}, rng, 0.05f) : Tensor();
  auto q = random_nf4(n, k, dq, rng);
  Tensor rdx = Tensor::empty({t, k}, DType::F32);
  Tensor rda = r ? Tensor::empty({r, k}, DType::F32) : Tensor();
  Tensor rdb = r ? Tensor::empty({n, r}, DType::F32) : Tensor();
  graft::cpu::nf4_matmul_bwd(dy, x, q, a, b, s, rdx, r ? &rda : nullptr, r ? &rdb : nullptr);

  gc::Nf4WeightBuffer w(q);
  std::unique_ptr<DevBuf<__nv_bfloat16>> gx(upload_bf16(x)), gdy(upload_bf16(dy));
  std::unique_ptr<DevBuf<__nv_bfloat16>> ga(r ? upload_bf16(a) : nullptr), gb(r ? upload_bf16(b) : nullptr);
  DevBuf<__nv_bfloat16> gdx(static_cast<size_t>(t * k)), y(static_cast<size_t>(t * n));
  DevBuf<float> xa(static_cast<size_t>(t * r)), dyb(static_cast<size_t>(t * r));
  DevBuf<float> gda(static_cast<size_t>(r * k)), gdb(static_cast<size_t>(n * r));

  gc::Nf4MatmulBwdDxDesc d;
  d.dy = gdy->p;
  d.w = w.view();
  d.lora_a = r ? ga->p : nullptr;
  d.lora_b = r ? gb->p : nullptr;
  d.r = r;
  d.scale = s;
  d.dyb_out = r ? dyb.p : nullptr;
  d.dx = gdx.p;
  d.t = t;
  gc::nf4_matmul_bwd_dx(d, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = download_bf16(gdx.p, gdx.n);
  EXPECT_LT(rel_err(out, rdx.data<float>(), out.size()), kBf16Tol) << "dx";
  if (!r) return;

  Tensor dybr = Tensor::empty({t, r}, DType::F32);
  graft::cpu::linear(dy, b.transpose(0, 1).contiguous(), Tensor(), dybr);
  EXPECT_LT(rel_err(download_f32(dyb.p, dyb.n), dybr.data<float>(), dyb.n), kF32Tol) << "dyb_out";

  // forward (for xa), then the LoRA grads
  gc::Nf4MatmulDesc f;
  f.x = gx->p;
  f.w = w.view();
  f.lora_a = ga->p;
  f.lora_b = gb->p;
  f.r = r;
  f.scale = s;
  f.xa_out = xa.p;
  f.y = y.p;
  f.t = t;
  gc::nf4_matmul(f, nullptr);
  gc::LoraGradDesc g;
  g.x = gx->p;
  g.dy = gdy->p;
  g.xa = xa.p;
  g.dyb = dyb.p;
  g.da = gda.p;
  g.db = gdb.p;
  g.t = t;
  g.n = n;
  g.k = k;
  g.r = r;
  g.scale = s;
  gc::lora_grad(g, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_LT(rel_err(download_f32(gda.p, gda.n), rda.data<float>(), gda.n), kF32Tol) << "dA";
  EXPECT_LT(rel_err(download_f32(gdb.p, gdb.n), rdb.data<float>(), gdb.n), kF32Tol) << "dB";
  // += accumulates on top
  g.accumulate = true;
  gc::lora_grad(g, nullptr);
  GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> two(gda.n);
  for (size_t i = 0; i < two.size(); ++i) two[i] = 2 * rda.data<float>()[i];
  EXPECT_LT(rel_err(download_f32(gda.p, gda.n), two.data(), gda.n), kF32Tol) << "dA +=";
}

TEST(CudaNf4Matmul, BackwardOddShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(g_seed + 3);
  // N = 770: dY rows not 16-byte aligned (synchronous loads); N = 776: the cp.async path.
  const std::array<std::array<int64_t, 2>, 4> nk = {{{64, 64}, {200, 320}, {770, 2048}, {776, 128}}};
  int i = 0;
  for (int64_t t : {1, 17, 130, 1000})
    for (auto [n, k] : nk)
      for (int r : {0, 8, 64}) {
        const bool dq = (i++ % 2) == 0;
        if (kSimt && (t > 130 || (t == 130 && k > 320))) continue;  // CPU time only (the SIMT target)
        run_backward(t, n, k, r, dq, rng);
      }
}

TEST(CudaNf4Matmul, BackwardRealShapes) {
  SKIP_WITHOUT_GPU();
  GRAFT_SKIP_UNDER_SIMT("model-sized shapes");
  std::mt19937 rng(g_seed + 4);
  run_backward(130, 4096, 2048, 16, true, rng);
  run_backward(130, 512, 2048, 64, true, rng);
  run_backward(64, 14336, 4096, 8, true, rng);
}

TEST(CudaNf4Matmul, DequantIsBitExact) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(g_seed + 5);
  for (auto [n, k] : {std::array<int64_t, 2>{3, 37}, {200, 320}, {1, 64 * 300 + 2}})
    for (bool dq : {false, true}) {
      auto q = random_nf4(n, k, dq, rng);
      Tensor ref = graft::nf4::dequantize(q);
      gc::Nf4WeightBuffer w(q);
      DevBuf<__nv_bfloat16> out(static_cast<size_t>(n * k));
      gc::nf4_dequant_bf16(w.view(), out.p, nullptr);
      GRAFT_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<uint16_t> got(out.n);
      GRAFT_CUDA_CHECK(cudaMemcpy(got.data(), out.p, out.n * 2, cudaMemcpyDeviceToHost));
      int64_t bad = 0;
      for (size_t i = 0; i < got.size(); ++i) bad += got[i] != graft::f32_to_bf16(ref.data<float>()[i]);
      EXPECT_EQ(bad, 0) << n << "x" << k << (dq ? " dq" : "");
    }
}

// Host-side validation: runs without a GPU (no CUDA call is made before the checks fail).
TEST(CudaNf4Matmul, DescriptorsNameTheViolatedCondition) {
  alignas(16) static uint8_t fake[256];
  gc::Nf4Weight w;
  w.packed = fake;
  w.absmax = reinterpret_cast<const float*>(fake);
  w.n = 64;
  w.k = 96;  // not a multiple of 64
  gc::Nf4MatmulDesc d;
  d.w = w;
  d.x = reinterpret_cast<const __nv_bfloat16*>(fake);
  d.y = reinterpret_cast<__nv_bfloat16*>(fake);
  d.t = 4;
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const graft::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { d.validate(); }).find("K % 64"), std::string::npos);
  d.w.k = 128;
  d.w.n = 63;
  EXPECT_NE(msg([&] { d.validate(); }).find("N must be even"), std::string::npos);
  d.w.n = 64;
  d.r = 65;
  EXPECT_NE(msg([&] { d.validate(); }).find("r = 65"), std::string::npos);
  d.r = 8;
  EXPECT_NE(msg([&] { d.validate(); }).find("lora_a"), std::string::npos);
  d.r = 0;
  d.w.blocksize = 128;
  EXPECT_NE(msg([&] { d.validate(); }).find("blocksize must be 64"), std::string::npos);
  d.w.blocksize = 64;
  d.x = reinterpret_cast<const __nv_bfloat16*>(fake + 2);
  EXPECT_NE(msg([&] { d.validate(); }).find("16-byte aligned"), std::string::npos);
  d.x = reinterpret_cast<const __nv_bfloat16*>(fake);
  d.t = 17;
  d.path = gc::Nf4Path::Decode;
  EXPECT_NE(msg([&] { d.validate(); }).find("decode path"), std::string::npos);
  d.path = gc::Nf4Path::Auto;
  EXPECT_EQ(msg([&] { d.validate(); }), "no error");
  d.w.double_quant = true;
  EXPECT_NE(msg([&] { d.validate(); }).find("absmax_q"), std::string::npos);

  gc::Nf4MatmulBwdDxDesc b;
  b.w = w;
  b.w.k = 128;
  b.dy = reinterpret_cast<const __nv_bfloat16*>(fake);
  b.dx = reinterpret_cast<__nv_bfloat16*>(fake);
  b.t = 3;
  b.r = 4;
  b.lora_a = b.lora_b = reinterpret_cast<const __nv_bfloat16*>(fake);
  EXPECT_NE(msg([&] { b.validate(); }).find("dyb_out"), std::string::npos);

  gc::LoraGradDesc g;
  g.t = 5;
  g.r = 4;
  g.k = 64;
  g.da = reinterpret_cast<float*>(fake);
  EXPECT_NE(msg([&] { g.validate(); }).find("dA needs dyb"), std::string::npos);
}

}  // namespace
