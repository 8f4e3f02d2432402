// cuda_backend.cu — graft::Backend on a CUDA device (graft/cuda/cuda_backend.hpp). Host code: it
// validates each op's tensors at the boundary (errors name the op, the tensor and the fix), then
// enqueues graft's kernels and cuBLAS on the backend's stream.
// Contract per op (the CPU backend is the oracle; tests/kernels/cuda_backend checks every op):
//   * activations: contiguous BF16 tensors on this device (activation_dtype()); ids I32, router
//     weights F32, on this device; host spans (ids, positions, labels, row slots) are uploaded;
//   * frozen weights (LinearWeight, norm weights, embedding table): host tensors, cached on the
//     device (WeightCache); LoRA factors: F32 (host or device), uploaded per call, never cached;
//   * GEMMs: cuBLAS bf16 x bf16 -> bf16 with fp32 accumulation for the base, fp32 for LoRA and its
//     gradients; NF4: graft's fused nf4_matmul / nf4_matmul_bwd_dx when K % 64 == 0 and N is even
//     (rows 16-byte aligned), else nf4_dequant_bf16 into a scratch + cuBLAS (the baseline path);
//   * dA/dB (+=) are F32 device tensors, or host F32 tensors (accumulated on the host after a sync);
//   * deterministic: no float atomics; cuBLAS's default algorithms are run-to-run deterministic on
//     one device and stream.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include <cublas_v2.h>

#include "graft/cpu/ops.hpp"
#include "graft/cuda/attention.hpp"
#include "graft/cuda/backend_ops.hpp"
#include "graft/cuda/check.hpp"
#include "graft/cuda/cuda_backend.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/moe.hpp"
#include "graft/cuda/nf4_matmul.hpp"
#include "graft/cuda/train_ops.hpp"
#include "graft/cuda/weight_cache.hpp"

namespace graft::cuda {
namespace {

using bf16 = __nv_bfloat16;
using ops::AttentionMask;
using ops::RopeTable;
using ops::RouterParams;

const bf16* cb(const Tensor& t) { return static_cast<const bf16*>(t.raw()); }
bf16* mb(const Tensor& t) { return static_cast<bf16*>(t.raw()); }
const float* cf(const Tensor& t) { return static_cast<const float*>(t.raw()); }
float* mf(const Tensor& t) { return static_cast<float*>(t.raw()); }
int as_int(int64_t v, const char* what) {
  GRAFT_CHECK(v >= 0 && v <= INT32_MAX, "cuda backend: {} = {} does not fit cuBLAS's int dimensions", what, v);
  return static_cast<int>(v);
}
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int dev) : dev_(dev), alloc_(DeviceAllocator::create(dev)), weights_(alloc_) {
    GRAFT_CUDA_CHECK(cudaSetDevice(dev_));
    GRAFT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    GRAFT_CUBLAS_CHECK(cublasCreate(&blas_));
    GRAFT_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  }
  ~CudaBackend() override {
    (void)cudaStreamSynchronize(stream_);
    (void)cublasDestroy(blas_);
    (void)cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  Device device() const override { return {DeviceKind::CUDA, dev_}; }
  Tensor empty(const Dims& shape, DType dtype) override { return alloc_->tensor(shape, dtype); }
  DType activation_dtype() const override { return DType::BF16; }
  void synchronize() override { GRAFT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  CudaBackendMemory memory() const { return {alloc_->stats(), weights_.device_bytes(), weights_.entries()}; }

  Tensor to_device(const Tensor& t, DType dtype) override {
    if (t.device().is_cpu()) return upload(*alloc_, t, dtype, stream_);
    here("to_device", "t", t);
    if (t.dtype() == dtype) return t;
    Tensor o = empty(t.shape(), dtype);
    if (t.dtype() == DType::F32 && dtype == DType::BF16) cuda::cast_f32_to_bf16(cf(t), t.numel(), mb(o), stream_);
    else if (t.dtype() == DType::BF16 && dtype == DType::F32) cuda::cast_bf16_to_f32(cb(t), t.numel(), mf(o), stream_);
    else GRAFT_FAIL("convert on the host", "to_device: {} -> {} is not supported on cuda", t.describe(), dtype_name(dtype));
    return o;
  }
  Tensor to_host(const Tensor& t) override {
    if (t.device().is_cpu()) return t.dtype() == DType::BF16 ? t.to(DType::F32) : t;
    here("to_host", "t", t);
    Tensor h = Tensor::empty(t.shape(), t.dtype());
    if (t.nbytes()) GRAFT_CUDA_CHECK(cudaMemcpyAsync(h.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, stream_));
    synchronize();
    return t.dtype() == DType::BF16 || t.dtype() == DType::F16 ? h.to(DType::F32) : h;
  }

  // ---------------------------------------------------------------- forward ops
  void linear(const Tensor& x, const LinearWeight& w, const LoraBatch& lora, Tensor& y) override {
    act("linear", "x", x, 2);
    act("linear", "y", y, 2);
    GRAFT_CHECK(x.size(1) == w.in && y.size(0) == x.size(0) && y.size(1) == w.out,
                "linear: x {} / y {} do not fit a [{} -> {}] projection", x.describe(), y.describe(), w.in, w.out);
    base_linear(x, w, y);
    if (!lora.empty()) lora_rows(x, lora, y);
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    act("rmsnorm", "x", x);
    act("rmsnorm", "y", y);
    const int64_t H = x.size(-1);
    GRAFT_CHECK(w.numel() == H && y.numel() == x.numel(), "rmsnorm: x {}, w {}, y {} must share [.., {}]", x.describe(),
                w.describe(), y.describe(), H);
    const Tensor wd = weights_.dense(w, DType::BF16, stream_);
    cuda::rmsnorm_fwd(cb(x), cb(wd), eps, x.numel() / H, H, mb(y), nullptr, stream_);
  }
  void swiglu(const Tensor& g, const Tensor& u, Tensor& o) override {
    act("swiglu", "gate", g);
    act("swiglu", "up", u);
    act("swiglu", "out", o);
    GRAFT_CHECK(u.numel() == g.numel() && o.numel() == g.numel(), "swiglu: gate {}, up {}, out {} differ", g.describe(),
                u.describe(), o.describe());
    cuda::swiglu_fwd(cb(g), cb(u), g.numel(), mb(o), stream_);
  }
  void embedding(std::span<const int32_t> ids, const Tensor& table, Tensor& out) override {
    GRAFT_CHECK(table.ndim() == 2, "embedding: table {} must be [V, H]", table.describe());
    const int64_t V = table.size(0), H = table.size(1), T = static_cast<int64_t>(ids.size());
    act("embedding", "out", out);
    GRAFT_CHECK(out.numel() == T * H, "embedding: out {} must be [{}, {}]", out.describe(), T, H);
    for (int64_t t = 0; t < T; ++t)
      GRAFT_CHECK_FIX(ids[static_cast<size_t>(t)] >= 0 && ids[static_cast<size_t>(t)] < V,
                      "check that the tokenizer matches the model",
                      "token id {} at position {} is outside the vocabulary [0, {})", ids[static_cast<size_t>(t)], t, V);
    if (T == 0) return;
    const Tensor td = weights_.dense(table, DType::BF16, stream_);
    const Tensor id = ints(ids);
    cuda::embedding_fwd(cb(td), static_cast<const int32_t*>(id.raw()), T, H, mb(out), stream_);
  }
  void rope(Tensor& x, std::span<const int32_t> pos, const RopeTable& t, int rot_dim, bool interleaved) override {
    act("rope", "x", x, 3);
    GRAFT_CHECK(static_cast<int64_t>(pos.size()) == x.size(0) && static_cast<int64_t>(t.inv_freq.size()) * 2 >= rot_dim,
                "rope: x {} needs {} positions (got {}) and {} inverse frequencies", x.describe(), x.size(0), pos.size(),
                rot_dim / 2);
    if (x.numel() == 0) return;
    const Tensor p = ints(pos), f = floats(t.inv_freq);
    cuda::rope_fwd(cb(x), static_cast<const int32_t*>(p.raw()), cf(f), t.attention_scaling, x.size(0), x.size(1), x.size(2),
             rot_dim, interleaved, mb(x), stream_);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
                 std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out) override {
    act("attention", "q", q, 3);
    act("attention", "k", k, 3);
    act("attention", "v", v, 3);
    act("attention", "out", out, 3);
    const AttnDev m = attn_inputs(q, k, q_pos, k_pos, mask);
    AttentionFwdDesc d;
    fill_attn(d, q, k, v, m, mask, scale);
    d.out = mb(out);
    cuda::attention_fwd(d, stream_);
  }
  void mla_attention(const Tensor& q_nope, const Tensor& q_pe, const Tensor& c, const Tensor& k_pe,
                     const LinearWeight& kv_b, int64_t dv, std::span<const int32_t> q_pos,
                     std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out) override {
    // The expanded form (equal to the absorbed one in exact arithmetic): kv = c·kv_bᵀ split per head into
    // k_nope and v; k = [k_nope, k_pe], q = [q_nope, q_pe]; then attention.
    act("mla_attention", "q_nope", q_nope, 3);
    act("mla_attention", "q_pe", q_pe, 3);
    act("mla_attention", "c", c, 2);
    act("mla_attention", "k_pe", k_pe, 2);
    const int64_t T = q_nope.size(0), H = q_nope.size(1), dn = q_nope.size(2), dr = q_pe.size(2), S = c.size(0);
    GRAFT_CHECK(kv_b.out == H * (dn + dv) && kv_b.in == c.size(1) && k_pe.size(0) == S && k_pe.size(1) == dr,
                "mla_attention: kv_b [{}, {}], c {}, k_pe {} do not fit {} heads of {} + {} dims", kv_b.out, kv_b.in,
                c.describe(), k_pe.describe(), H, dn, dv);
    Tensor kv = empty({S, H * (dn + dv)}, DType::BF16);
    base_linear(c, kv_b, kv);
    Tensor q = empty({T, H, dn + dr}, DType::BF16), k = empty({S, H, dn + dr}, DType::BF16),
           v = empty({S, H, dv}, DType::BF16);
    cols(cb(q_nope), dn, 0, 1, mb(q), dn + dr, 0, T * H, dn);
    cols(cb(q_pe), dr, 0, 1, mb(q), dn + dr, dn, T * H, dr);
    cols(cb(kv), dn + dv, 0, 1, mb(k), dn + dr, 0, S * H, dn);
    cols(cb(k_pe), dr, 0, H, mb(k), dn + dr, dn, S * H, dr);
    cols(cb(kv), dn + dv, dn, 1, mb(v), dv, 0, S * H, dv);
    attention(q, k, v, q_pos, k_pos, mask, scale, out);
  }
  void moe_route(const Tensor& logits, const RouterParams& p, Tensor& ids, Tensor& weights) override {
    act("moe_route", "logits", logits, 2);
    here("moe_route", "ids", ids);
    here("moe_route", "weights", weights);
    const int64_t T = logits.size(0), E = logits.size(1);
    GRAFT_CHECK(ids.dtype() == DType::I32 && weights.dtype() == DType::F32 && ids.numel() == T * p.top_k &&
                    weights.numel() == T * p.top_k,
                "moe_route: ids {} (i32) and weights {} (f32) must be [{}, {}]", ids.describe(), weights.describe(), T,
                p.top_k);
    if (T == 0) return;
    Tensor lf = to_device(logits, DType::F32);
    Tensor bias;
    RouterParams dp = p;
    if (p.correction_bias) {
      bias = floats(std::span<const float>(p.correction_bias, static_cast<size_t>(E)));
      dp.correction_bias = cf(bias);
    }
    moe::route({cf(lf), T, static_cast<int>(E), dp, static_cast<int32_t*>(ids.raw()), mf(weights)}, stream_);
  }
  void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const ExpertWeights& ex,
                   const ExpertLora* lora, std::span<const int32_t> row_slot, bool scale_input, Tensor& out) override;

  // ---------------------------------------------------------------- backward ops
  void linear_bwd(const Tensor& x, const Tensor& dy, const LinearWeight& w, const LoraFactors* lora,
                  const Tensor& lora_mask, Tensor& dx, Tensor* da, Tensor* db) override;
  void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& dy, float eps, Tensor& dx) override {
    act("rmsnorm_bwd", "x", x);
    act("rmsnorm_bwd", "dy", dy);
    act("rmsnorm_bwd", "dx", dx);
    const int64_t H = x.size(-1), T = x.numel() / std::max<int64_t>(H, 1);
    GRAFT_CHECK(w.numel() == H && dy.numel() == x.numel() && dx.numel() == x.numel(),
                "rmsnorm_bwd: x {}, w {}, dy {}, dx {} must share [.., {}]", x.describe(), w.describe(), dy.describe(),
                dx.describe(), H);
    const Tensor wd = weights_.dense(w, DType::BF16, stream_);
    Tensor y = empty(x.shape(), DType::BF16), rstd = empty({T}, DType::F32);
    cuda::rmsnorm_fwd(cb(x), cb(wd), eps, T, H, mb(y), mf(rstd), stream_);  // recomputes rstd (not saved)
    cuda::rmsnorm_bwd(cb(x), cb(wd), cb(dy), cf(rstd), T, H, mb(dx), nullptr, stream_);
  }
  void swiglu_bwd(const Tensor& g, const Tensor& u, const Tensor& dout, Tensor& dg, Tensor& du) override {
    for (const Tensor* t : std::initializer_list<const Tensor*>{&g, &u, &dout, &dg, &du}) act("swiglu_bwd", "tensor", *t);
    GRAFT_CHECK(u.numel() == g.numel() && dout.numel() == g.numel() && dg.numel() == g.numel() && du.numel() == g.numel(),
                "swiglu_bwd: gate {}, up {}, dout {}, dgate {}, dup {} must have equal sizes", g.describe(), u.describe(),
                dout.describe(), dg.describe(), du.describe());
    cuda::swiglu_bwd(cb(g), cb(u), cb(dout), g.numel(), mb(dg), mb(du), stream_);
  }
  void rope_bwd(Tensor& dx, std::span<const int32_t> pos, const RopeTable& t, int rot_dim, bool interleaved) override {
    act("rope_bwd", "dx", dx, 3);
    GRAFT_CHECK(static_cast<int64_t>(pos.size()) == dx.size(0), "rope_bwd: dx {} needs {} positions (got {})",
                dx.describe(), dx.size(0), pos.size());
    if (dx.numel() == 0) return;
    const Tensor p = ints(pos), f = floats(t.inv_freq);
    cuda::rope_bwd(cb(dx), static_cast<const int32_t*>(p.raw()), cf(f), t.attention_scaling, dx.size(0), dx.size(1),
                   dx.size(2), rot_dim, interleaved, mb(dx), stream_);
  }
  void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                     std::span<const int32_t> q_pos, std::span<const int32_t> k_pos, const AttentionMask& mask,
                     float scale, Tensor& dq, Tensor& dk, Tensor& dv) override {
    for (const Tensor* t : std::initializer_list<const Tensor*>{&q, &k, &v, &dout, &dq, &dk, &dv}) act("attention_bwd", "tensor", *t, 3);
    const AttnDev m = attn_inputs(q, k, q_pos, k_pos, mask);
    AttentionBwdDesc d;
    fill_attn(d, q, k, v, m, mask, scale);
    d.dout = cb(dout);
    d.dq = mb(dq);
    d.dk = mb(dk);
    d.dv = mb(dv);
    // No saved lse/out: the kernel recomputes the row statistics (Backend::attention_bwd's contract).
    const size_t ws = attention_bwd_workspace_bytes(q.size(0), q.size(1));
    Tensor w = empty({static_cast<int64_t>(std::max<size_t>(ws, 1))}, DType::U8);
    d.workspace = w.raw();
    d.workspace_bytes = ws;
    cuda::attention_bwd(d, stream_);
  }
  double cross_entropy(const Tensor& logits, std::span<const int32_t> labels, Tensor* dlogits) override {
    act("cross_entropy", "logits", logits, 2);
    const int64_t T = logits.size(0), V = logits.size(1);
    GRAFT_CHECK(static_cast<int64_t>(labels.size()) == T && (!dlogits || dlogits->numel() == logits.numel()),
                "cross_entropy: logits {} need {} labels (got {}) and dlogits of the same shape", logits.describe(), T,
                labels.size());
    if (dlogits) act("cross_entropy", "dlogits", *dlogits, 2);
    const int64_t n_valid = std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != -100; });
    if (T == 0) return 0.0;
    const Tensor lab = ints(labels);
    Tensor loss = empty({T}, DType::F32);
    cuda::cross_entropy_fwd_bwd(cb(logits), static_cast<const int32_t*>(lab.raw()), T, V,
                          n_valid ? 1.0f / static_cast<float>(n_valid) : 0.0f, mf(loss), dlogits ? mb(*dlogits) : nullptr,
                          stream_);
    const Tensor h = to_host(loss);
    double sum = 0.0;
    for (int64_t t = 0; t < T; ++t) sum += h.data<float>()[t];
    return n_valid ? sum / static_cast<double>(n_valid) : 0.0;
  }
  void add_acc(const Tensor& x, Tensor& y) override {
    act("add_acc", "x", x);
    act("add_acc", "y", y);
    GRAFT_CHECK(x.numel() == y.numel(), "add_acc: {} and {} differ", x.describe(), y.describe());
    cuda::add_acc(cb(x), x.numel(), mb(y), stream_);
  }
  void scale_rows(Tensor& y, const Tensor& s) override {
    act("scale_rows", "y", y);
    const int64_t T = y.ndim() ? y.size(0) : 1, H = y.numel() / std::max<int64_t>(T, 1);
    GRAFT_CHECK(s.numel() == T, "scale_rows: {} scales for {} rows", s.numel(), T);
    if (y.numel() == 0) return;
    const Tensor sd = to_device(s, DType::F32);
    cuda::scale_rows(mb(y), T, H, cf(sd), 1.0f, stream_);
  }

  // ---------------------------------------------------------------- the training step's extra ops
  void fill(Tensor& y, float v) override {
    here("fill", "y", y);
    if (y.dtype() == DType::F32) return cuda::fill_f32(mf(y), y.numel(), v, stream_);
    act("fill", "y", y);
    cuda::fill_bf16(mb(y), y.numel(), v, stream_);
  }
  void mul(const Tensor& x, const Tensor& m, Tensor& y) override {
    act("mul", "x", x);
    act("mul", "y", y);
    GRAFT_CHECK(x.numel() == m.numel() && y.numel() == x.numel(), "mul: x {}, m {}, y {} must have equal sizes",
                x.describe(), m.describe(), y.describe());
    const Tensor md = to_device(m, DType::F32);
    cuda::mul_f32_mask(cb(x), cf(md), x.numel(), mb(y), stream_);
  }
  void lora_acc(const Tensor& x, const LoraFactors& f, Tensor& y) override {
    act("lora_acc", "x", x, 2);
    act("lora_acc", "y", y, 2);
    GRAFT_CHECK(y.size(0) == x.size(0), "lora_acc: x {} and y {} differ in rows", x.describe(), y.describe());
    const LoraFactors* one[] = {&f};
    const std::vector<int32_t> rows(static_cast<size_t>(x.size(0)), 0);
    lora_rows(x, LoraBatch{one, rows}, y);
  }
  void dropout_mask(uint64_t key, std::span<const int32_t> rows, double p, Tensor& out) override {
    here("dropout_mask", "out", out);
    GRAFT_CHECK(out.dtype() == DType::F32 && out.ndim() == 2 && (rows.empty() || static_cast<int64_t>(rows.size()) == out.size(0)),
                "dropout_mask: out {} must be f32 [n, cols] with n = {} rows", out.describe(), rows.size());
    const Tensor r = rows.empty() ? Tensor() : ints(rows);
    cuda::dropout_mask_f32(key, rows.empty() ? nullptr : static_cast<const int32_t*>(r.raw()), out.size(0), out.size(1), p,
                           mf(out), stream_);
  }
  // bf16 activations, or fp32 x and out (router combine weights).
  void gather_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& s, Tensor& out) override {
    here("gather_rows", "x", x);
    here("gather_rows", "out", out);
    const bool fp32 = x.dtype() == DType::F32 && out.dtype() == DType::F32;
    if (!fp32) {
      act("gather_rows", "x", x);
      act("gather_rows", "out", out);
    }
    const int64_t H = x.size(-1), R = x.numel() / std::max<int64_t>(H, 1);
    const int64_t n = rows.empty() ? R : static_cast<int64_t>(rows.size());
    GRAFT_CHECK(out.numel() == n * H, "gather_rows: out {} must be [{}, {}]", out.describe(), n, H);
    const Tensor idx = rows.empty() ? ints(iota(R)) : checked_rows("gather_rows", rows, R);
    const Tensor sc = scales("gather_rows", s, n);
    if (fp32)
      cuda::gather_rows_f32(cf(x), H, static_cast<const int32_t*>(idx.raw()), sc.defined() ? cf(sc) : nullptr, n, mf(out),
                            stream_);
    else
      cuda::gather_rows(cb(x), H, static_cast<const int32_t*>(idx.raw()), sc.defined() ? cf(sc) : nullptr, n, mb(out),
                        stream_);
  }
  // bf16 activations, or fp32 x and out (router weight gradients).
  void scatter_add_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& s, Tensor& out) override {
    here("scatter_add_rows", "x", x);
    here("scatter_add_rows", "out", out);
    const bool fp32 = x.dtype() == DType::F32 && out.dtype() == DType::F32;
    if (!fp32) {
      act("scatter_add_rows", "x", x);
      act("scatter_add_rows", "out", out);
    }
    const int64_t H = x.size(-1), n = x.numel() / std::max<int64_t>(H, 1), R = out.numel() / std::max<int64_t>(H, 1);
    GRAFT_CHECK(out.size(-1) == H && (rows.empty() ? n == R : static_cast<int64_t>(rows.size()) == n),
                "scatter_add_rows: {} row ids for x {} into out {}", rows.size(), x.describe(), out.describe());
    // CSR of sources per destination row, sources in increasing i (the CPU's summation order).
    std::vector<std::vector<int32_t>> by_row(static_cast<size_t>(R));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = rows.empty() ? i : rows[static_cast<size_t>(i)];
      GRAFT_CHECK(r >= 0 && r < R, "scatter_add_rows: row id {} at {} is outside [0, {})", r, i, R);
      by_row[static_cast<size_t>(r)].push_back(static_cast<int32_t>(i));
    }
    std::vector<int32_t> dst, ptr{0}, src;
    for (int64_t r = 0; r < R; ++r) {
      if (by_row[static_cast<size_t>(r)].empty()) continue;
      dst.push_back(static_cast<int32_t>(r));
      src.insert(src.end(), by_row[static_cast<size_t>(r)].begin(), by_row[static_cast<size_t>(r)].end());
      ptr.push_back(static_cast<int32_t>(src.size()));
    }
    if (dst.empty()) return;
    const Tensor sc = scales("scatter_add_rows", s, n), d = ints(dst), pt = ints(ptr), sr = ints(src);
    if (fp32)
      cuda::scatter_add_csr_f32(cf(x), H, static_cast<const int32_t*>(d.raw()), static_cast<const int32_t*>(pt.raw()),
                                static_cast<const int32_t*>(sr.raw()), static_cast<int64_t>(dst.size()),
                                sc.defined() ? cf(sc) : nullptr, mf(out), stream_);
    else
      cuda::scatter_add_csr(cb(x), H, static_cast<const int32_t*>(d.raw()), static_cast<const int32_t*>(pt.raw()),
                            static_cast<const int32_t*>(sr.raw()), static_cast<int64_t>(dst.size()),
                            sc.defined() ? cf(sc) : nullptr, mb(out), stream_);
  }
  void rows_dot(const Tensor& x, std::span<const int32_t> rows, const Tensor& y, Tensor& out) override {
    act("rows_dot", "x", x);
    act("rows_dot", "y", y);
    here("rows_dot", "out", out);
    const int64_t H = x.size(-1), R = x.numel() / std::max<int64_t>(H, 1), n = y.numel() / std::max<int64_t>(H, 1);
    GRAFT_CHECK(y.size(-1) == H && out.numel() == n && out.dtype() == DType::F32 &&
                    (rows.empty() ? n == R : static_cast<int64_t>(rows.size()) == n),
                "rows_dot: x {}, {} row ids, y {}, out {} (f32) do not fit [R, H], [n], [n, H], [n]", x.describe(),
                rows.size(), y.describe(), out.describe());
    const Tensor idx = rows.empty() ? Tensor() : checked_rows("rows_dot", rows, R);
    cuda::rows_dot(cb(x), rows.empty() ? nullptr : static_cast<const int32_t*>(idx.raw()), cb(y), n, H, mf(out), stream_);
  }
  void copy_cols(const Tensor& src, int64_t src_col, int64_t width, Tensor& dst, int64_t dst_col) override {
    act("copy_cols", "src", src);
    act("copy_cols", "dst", dst);
    const int64_t Cs = src.size(-1), Cd = dst.size(-1), R = src.numel() / std::max<int64_t>(Cs, 1);
    GRAFT_CHECK(dst.numel() / std::max<int64_t>(Cd, 1) == R, "copy_cols: src {} and dst {} differ in rows",
                src.describe(), dst.describe());
    cols(cb(src), Cs, src_col, 1, mb(dst), Cd, dst_col, R, width);
  }
  void set_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override {
    act("set_rows", "x", x);
    act("set_rows", "out", out);
    const int64_t C = x.size(-1), n = x.numel() / std::max<int64_t>(C, 1), R = out.numel() / std::max<int64_t>(C, 1);
    GRAFT_CHECK(out.size(-1) == C && static_cast<int64_t>(rows.size()) == n,
                "set_rows: x {} ({} row ids) and out {} must share the last dim", x.describe(), rows.size(),
                out.describe());
    std::vector<char> seen(static_cast<size_t>(R), 0);
    for (size_t i = 0; i < rows.size(); ++i) {
      GRAFT_CHECK(rows[i] >= 0 && rows[i] < R && !seen[static_cast<size_t>(rows[i])],
                  "set_rows: row id {} at {} is outside [0, {}) or repeated", rows[i], i, R);
      seen[static_cast<size_t>(rows[i])] = 1;
    }
    if (n == 0) return;
    const Tensor idx = ints(rows);
    cuda::scatter_rows(cb(x), C, static_cast<const int32_t*>(idx.raw()), n, mb(out), stream_);
  }
  void sigmoid(const Tensor& x, Tensor& y) override {
    act("sigmoid", "x", x);
    act("sigmoid", "y", y);
    GRAFT_CHECK(x.numel() == y.numel(), "sigmoid: x {} and y {} differ", x.describe(), y.describe());
    cuda::sigmoid_fwd(cb(x), x.numel(), mb(y), stream_);
  }
  void sigmoid_bwd(const Tensor& y, const Tensor& dy, Tensor& dx) override {
    for (const Tensor* t : std::initializer_list<const Tensor*>{&y, &dy, &dx}) act("sigmoid_bwd", "tensor", *t);
    GRAFT_CHECK(dy.numel() == y.numel() && dx.numel() == y.numel(), "sigmoid_bwd: y {}, dy {}, dx {} differ",
                y.describe(), dy.describe(), dx.describe());
    cuda::sigmoid_bwd(cb(y), cb(dy), y.numel(), mb(dx), stream_);
  }
  void moe_route_bwd(const Tensor& logits, const RouterParams& p, const Tensor& ids, const Tensor& dweights,
                     Tensor& dlogits) override {
    act("moe_route_bwd", "logits", logits, 2);
    act("moe_route_bwd", "dlogits", dlogits, 2);
    here("moe_route_bwd", "ids", ids);
    const int64_t T = logits.size(0), E = logits.size(1);
    GRAFT_CHECK(ids.dtype() == DType::I32 && ids.numel() == T * p.top_k && dweights.numel() == T * p.top_k &&
                    dlogits.numel() == T * E,
                "moe_route_bwd: ids {} / dweights {} must be [{}, {}], dlogits {} [{}, {}]", ids.describe(),
                dweights.describe(), T, p.top_k, dlogits.describe(), T, E);
    if (T == 0) return;
    const Tensor lf = to_device(logits, DType::F32);
    const Tensor dw = to_device(dweights, DType::F32);
    Tensor dl = empty({T, E}, DType::F32);
    RouterParams dp = p;
    dp.correction_bias = nullptr;  // selection only: no gradient
    moe::route_bwd({cf(lf), T, static_cast<int>(E), dp, static_cast<const int32_t*>(ids.raw()), cf(dw), mf(dl)}, stream_);
    cuda::cast_f32_to_bf16(cf(dl), T * E, mb(dlogits), stream_);
  }
  ops::MoePermutation moe_permute_plan(const Tensor& ids, int num_experts) override {
    return cpu::moe_permute_plan(ids.device().is_cpu() ? ids : to_host(ids), num_experts);
  }

 private:
  // ---- boundary checks
  void here(const char* op, const char* what, const Tensor& t) const {
    GRAFT_CHECK_FIX(t.device() == device() && t.is_contiguous(), "move it with Backend::to_device",
                    "{}: {} {} must be a contiguous tensor on {}", op, what, t.describe(), device().str());
  }
  void act(const char* op, const char* what, const Tensor& t, int ndim = 0) const {
    here(op, what, t);
    GRAFT_CHECK_FIX(t.dtype() == DType::BF16 && (ndim == 0 || t.ndim() == ndim),
                    "allocate activations with Backend::empty(shape, activation_dtype())",
                    "{}: {} {} must be a {}bf16 activation", op, what, t.describe(),
                    ndim ? std::to_string(ndim) + "-d " : std::string());
  }
  Tensor ints(std::span<const int32_t> v) {
    Tensor d = empty({static_cast<int64_t>(v.size())}, DType::I32);
    if (!v.empty()) GRAFT_CUDA_CHECK(cudaMemcpyAsync(d.raw(), v.data(), v.size_bytes(), cudaMemcpyHostToDevice, stream_));
    return d;
  }
  Tensor ints(const std::vector<int32_t>& v) { return ints(std::span<const int32_t>(v.data(), v.size())); }
  Tensor floats(std::span<const float> v) {
    Tensor d = empty({static_cast<int64_t>(v.size())}, DType::F32);
    if (!v.empty()) GRAFT_CUDA_CHECK(cudaMemcpyAsync(d.raw(), v.data(), v.size_bytes(), cudaMemcpyHostToDevice, stream_));
    return d;
  }
  static std::vector<int32_t> iota(int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    std::iota(v.begin(), v.end(), 0);
    return v;
  }
  Tensor checked_rows(const char* op, std::span<const int32_t> rows, int64_t R) {
    for (size_t i = 0; i < rows.size(); ++i)
      GRAFT_CHECK(rows[i] >= 0 && rows[i] < R, "{}: row id {} at {} is outside [0, {})", op, rows[i], i, R);
    return ints(rows);
  }
  // Row scales [n] (or [n, 1]) as a device f32 tensor; undefined in, undefined out (scale 1).
  Tensor scales(const char* op, const Tensor& s, int64_t n) {
    if (!s.defined() || (s.numel() == 0 && n != 0)) return Tensor();
    GRAFT_CHECK(s.numel() == n, "{}: {} row scales for {} rows", op, s.numel(), n);
    return to_device(s, DType::F32);
  }
  Tensor floats(const std::vector<float>& v) { return floats(std::span<const float>(v.data(), v.size())); }

  // ---- GEMMs (column-major cuBLAS on row-major data; see docs/kernels.md "CudaBackend")
  // C = alpha·op(A)·op(B) + beta·C with the types given.
  void gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A,
            cudaDataType at, int64_t lda, const void* B, cudaDataType bt, int64_t ldb, float beta, void* C,
            cudaDataType ct, int64_t ldc) {
    if (m == 0 || n == 0) return;
    GRAFT_CUBLAS_CHECK(cublasGemmEx(blas_, ta, tb, as_int(m, "m"), as_int(n, "n"), as_int(k, "k"), &alpha, A, at,
                                    as_int(lda, "lda"), B, bt, as_int(ldb, "ldb"), &beta, C, ct, as_int(ldc, "ldc"),
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  // y[T, out] = x[T, in] · W[out, in]ᵀ, bf16.
  void gemm_xwt(const bf16* x, int64_t T, int64_t in, const bf16* W, int64_t out, bf16* y) {
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, 1.0f, W, CUDA_R_16BF, in, x, CUDA_R_16BF, in, 0.0f, y, CUDA_R_16BF, out);
  }
  // dx[T, in] = dy[T, out] · W[out, in], bf16.
  void gemm_dyw(const bf16* dy, int64_t T, int64_t out, const bf16* W, int64_t in, bf16* dx) {
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, in, T, out, 1.0f, W, CUDA_R_16BF, in, dy, CUDA_R_16BF, out, 0.0f, dx, CUDA_R_16BF, in);
  }
  bool nf4_fused_ok(const LinearWeight& w, const Nf4Weight& nw, const void* a, const void* b) const {
    return w.in % 64 == 0 && w.out % 2 == 0 && nw.blocksize == 64 && aligned16(a) && aligned16(b);
  }
  // copy_cols with the descriptor's fields in order (src, src_ld, src_col0, src_row_div, out, out_ld, out_col0, rows, width).
  void cols(const bf16* src, int64_t src_ld, int64_t src_col0, int64_t div, bf16* out, int64_t out_ld, int64_t out_col0,
            int64_t rows, int64_t width) {
    CopyColsDesc d;
    d.src = src;
    d.src_ld = src_ld;
    d.src_col0 = src_col0;
    d.src_row_div = div;
    d.out = out;
    d.out_ld = out_ld;
    d.out_col0 = out_col0;
    d.rows = rows;
    d.width = width;
    cuda::copy_cols(d, stream_);
  }
  Tensor dequant(const Nf4Weight& nw) {
    Tensor wd = empty({nw.n, nw.k}, DType::BF16);
    cuda::nf4_dequant_bf16(nw, mb(wd), stream_);
    return wd;
  }

  void base_linear(const Tensor& x, const LinearWeight& w, Tensor& y) {
    GRAFT_CHECK(w.defined(), "linear: weight [{}, {}] is not loaded", w.out, w.in);
    GRAFT_CHECK_FIX(!w.q8 && !w.q6, "run on the CPU backend (--device cpu) or pass --lm-head-dtype f32 or nf4",
                    "linear: the {}-bit lm_head [{}, {}] (--lm-head-dtype {}) has no CUDA kernel", w.q8 ? 8 : 6, w.out,
                    w.in, w.q8 ? "q8" : "q6");
    const int64_t T = x.size(0);
    if (T == 0) return;
    const Tensor bias = w.bias.defined() ? weights_.dense(w.bias, DType::BF16, stream_) : Tensor();
    if (w.quantized()) {
      const Nf4Weight& nw = weights_.nf4(w.nf4);
      if (nf4_fused_ok(w, nw, x.raw(), y.raw())) {
        Nf4MatmulDesc d;
        d.x = cb(x);
        d.w = nw;
        d.bias = bias.defined() ? cb(bias) : nullptr;
        d.y = mb(y);
        d.t = T;
        cuda::nf4_matmul(d, stream_);
        return;
      }
      const Tensor wd = dequant(nw);
      gemm_xwt(cb(x), T, w.in, cb(wd), w.out, mb(y));
    } else {
      const Tensor wd = weights_.dense(w.dense, DType::BF16, stream_);
      gemm_xwt(cb(x), T, w.in, cb(wd), w.out, mb(y));
    }
    if (bias.defined()) cuda::add_bias_rows(mb(y), cb(bias), T, w.out, stream_);
  }

  // Row-grouped LoRA: per slot, the rows that use it (host metadata), shrink then expand.
  void lora_rows(const Tensor& x, const LoraBatch& lora, Tensor& y) {
    const int64_t T = x.size(0), in = x.size(1), out = y.size(1);
    GRAFT_CHECK(static_cast<int64_t>(lora.row_slot.size()) == T, "LoRA batch: {} row slots for {} rows",
                lora.row_slot.size(), T);
    const int64_t S = static_cast<int64_t>(lora.slots.size());
    std::vector<std::vector<int32_t>> rows(static_cast<size_t>(S));
    for (int64_t t = 0; t < T; ++t) {
      const int32_t s = lora.row_slot[static_cast<size_t>(t)];
      GRAFT_CHECK(s < S, "LoRA batch: row {} uses slot {} of {}", t, s, S);
      if (s >= 0 && lora.slots[static_cast<size_t>(s)]) rows[static_cast<size_t>(s)].push_back(static_cast<int32_t>(t));
    }
    for (int64_t s = 0; s < S; ++s) {
      const auto& r = rows[static_cast<size_t>(s)];
      const LoraFactors& f = *lora.slots[static_cast<size_t>(s)];
      if (r.empty() || f.rank() == 0) continue;
      GRAFT_CHECK(f.a.ndim() == 2 && f.b.ndim() == 2 && f.a.size(1) == in && f.b.size(0) == out &&
                      f.b.size(1) == f.a.size(0),
                  "LoRA factors A {} / B {} do not fit a [{} -> {}] projection", f.a.describe(), f.b.describe(), in, out);
      const int rank = static_cast<int>(f.rank());
      const auto n = static_cast<int64_t>(r.size());
      // Every row on this adapter (the training step, a single-adapter batch): no row list to upload.
      const Tensor a = to_device(f.a, DType::F32), b = to_device(f.b, DType::F32), idx = n == T ? Tensor() : ints(r);
      const auto* rp = n == T ? nullptr : static_cast<const int32_t*>(idx.raw());
      Tensor xa = empty({n, rank}, DType::F32);
      cuda::lora_rows_shrink(cb(x), in, rp, n, cf(a), rank, mf(xa), stream_);
      cuda::lora_rows_expand(cf(xa), rp, n, cf(b), out, rank, f.scale, mb(y), stream_);
    }
  }

  // ---- attention plumbing
  struct AttnDev {
    Tensor q_pos, k_pos, q_seg, k_seg;
  };
  AttnDev attn_inputs(const Tensor& q, const Tensor& k, std::span<const int32_t> q_pos, std::span<const int32_t> k_pos,
                      const AttentionMask& mask) {
    GRAFT_CHECK(static_cast<int64_t>(q_pos.size()) == q.size(0) && static_cast<int64_t>(k_pos.size()) == k.size(0),
                "attention: q {} / k {} need {} / {} positions (got {} / {})", q.describe(), k.describe(), q.size(0),
                k.size(0), q_pos.size(), k_pos.size());
    GRAFT_CHECK(mask.q_segments.empty() == mask.k_segments.empty() &&
                    (mask.q_segments.empty() || (static_cast<int64_t>(mask.q_segments.size()) == q.size(0) &&
                                                 static_cast<int64_t>(mask.k_segments.size()) == k.size(0))),
                "attention: segment ids must be given for every query ({}) and key ({}) or for none (got {} / {})",
                q.size(0), k.size(0), mask.q_segments.size(), mask.k_segments.size());
    AttnDev d{ints(q_pos), ints(k_pos), {}, {}};
    if (!mask.q_segments.empty()) {
      d.q_seg = ints(mask.q_segments);
      d.k_seg = ints(mask.k_segments);
    }
    return d;
  }
  template <class Desc>
  void fill_attn(Desc& d, const Tensor& q, const Tensor& k, const Tensor& v, const AttnDev& m, const AttentionMask& mask,
                 float scale) {
    d.q = cb(q);
    d.k = cb(k);
    d.v = cb(v);
    d.q_pos = static_cast<const int32_t*>(m.q_pos.raw());
    d.k_pos = static_cast<const int32_t*>(m.k_pos.raw());
    d.mask.causal = mask.causal;
    d.mask.sliding_window = mask.sliding_window;
    d.mask.chunk_size = mask.chunk_size;
    d.mask.q_segments = m.q_seg.defined() && m.q_seg.numel() ? static_cast<const int32_t*>(m.q_seg.raw()) : nullptr;
    d.mask.k_segments = m.k_seg.defined() && m.k_seg.numel() ? static_cast<const int32_t*>(m.k_seg.raw()) : nullptr;
    d.dims = {q.size(0), k.size(0), q.size(1), k.size(1), q.size(2), v.size(2)};
    d.scale = scale;
  }

  int dev_;
  std::shared_ptr<DeviceAllocator> alloc_;
  WeightCache weights_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
};

void CudaBackend::moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const ExpertWeights& ex,
                              const ExpertLora* lora, std::span<const int32_t> row_slot, bool scale_input, Tensor& out) {
  act("moe_experts", "x", x, 2);
  act("moe_experts", "out", out, 2);
  here("moe_experts", "ids", ids);
  here("moe_experts", "weights", weights);
  const int64_t T = x.size(0), H = x.size(1), k = ids.numel() / std::max<int64_t>(T, 1);
  const int E = static_cast<int>(ex.num_experts());
  GRAFT_CHECK(ids.dtype() == DType::I32 && weights.dtype() == DType::F32 && ids.numel() == T * k &&
                  weights.numel() == T * k,
              "moe_experts: ids {} (i32) / weights {} (f32) for {} tokens", ids.describe(), weights.describe(), T);
  GRAFT_CHECK(out.size(0) == T && out.size(1) == H, "moe_experts: out {} must be [{}, {}]", out.describe(), T, H);
  GRAFT_CHECK(!lora || row_slot.size() == static_cast<size_t>(T), "moe_experts: {} row slots for {} tokens",
              row_slot.size(), T);
  if (T == 0) return;
  // Dispatch metadata on the host (one small download per layer): the same (expert, token, slot) order
  // as the CPU backend, so per-expert row groups and results match it.
  const Tensor ids_h = to_host(ids), w_h = to_host(weights);
  const ops::MoePermutation plan = cpu::moe_permute_plan(ids_h, E);
  Tensor results = empty({T * k, H}, DType::BF16);
  for (int e = 0; e < E; ++e) {
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    std::vector<int32_t> flat(static_cast<size_t>(n)), tok(static_cast<size_t>(n)), slots;
    std::vector<float> sc;
    for (int32_t i = 0; i < n; ++i) {
      flat[static_cast<size_t>(i)] = plan.order[static_cast<size_t>(plan.offsets[static_cast<size_t>(e)] + i)];
      tok[static_cast<size_t>(i)] = static_cast<int32_t>(flat[static_cast<size_t>(i)] / k);
      if (scale_input) sc.push_back(w_h.data<float>()[flat[static_cast<size_t>(i)]]);
    }
    const Tensor tok_d = ints(tok), flat_d = ints(flat), sc_d = scale_input ? floats(sc) : Tensor();
    Tensor xs = empty({n, H}, DType::BF16);
    cuda::gather_rows(cb(x), H, static_cast<const int32_t*>(tok_d.raw()), scale_input ? cf(sc_d) : nullptr, n, mb(xs), stream_);
    const LinearWeight& G = ex.gate[static_cast<size_t>(e)];
    const LinearWeight& U = ex.up[static_cast<size_t>(e)];
    const LinearWeight& D = ex.down[static_cast<size_t>(e)];
    Tensor g = empty({n, G.out}, DType::BF16), u = empty({n, U.out}, DType::BF16), y = empty({n, D.out}, DType::BF16);
    base_linear(xs, G, g);
    base_linear(xs, U, u);
    const ExpertLora::Slots es = lora ? lora->of_expert(e) : ExpertLora::Slots{};
    if (lora) {
      slots.resize(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) slots[static_cast<size_t>(i)] = row_slot[static_cast<size_t>(tok[static_cast<size_t>(i)])];
      lora_rows(xs, LoraBatch{es.gate, slots}, g);
      lora_rows(xs, LoraBatch{es.up, slots}, u);
    }
    cuda::swiglu_fwd(cb(g), cb(u), g.numel(), mb(g), stream_);
    base_linear(g, D, y);
    if (lora) lora_rows(g, LoraBatch{es.down, slots}, y);
    cuda::scatter_rows(cb(y), H, static_cast<const int32_t*>(flat_d.raw()), n, mb(results), stream_);
  }
  cuda::moe_combine(cb(results), scale_input ? nullptr : cf(weights), T, k, H, mb(out), stream_);
}

void CudaBackend::linear_bwd(const Tensor& x, const Tensor& dy, const LinearWeight& w, const LoraFactors* lora,
                             const Tensor& lora_mask, Tensor& dx, Tensor* da, Tensor* db) {
  GRAFT_CHECK(w.defined(), "linear_bwd: weight [{}, {}] is not loaded", w.out, w.in);
  act("linear_bwd", "x", x, 2);
  act("linear_bwd", "dy", dy, 2);
  act("linear_bwd", "dx", dx, 2);
  const int64_t T = x.size(0), in = w.in, out = w.out;
  GRAFT_CHECK(x.size(1) == in && dy.size(0) == T && dy.size(1) == out && dx.size(0) == T && dx.size(1) == in,
              "linear_bwd: x {} / dy {} / dx {} do not fit a [{} -> {}] projection", x.describe(), dy.describe(),
              dx.describe(), in, out);
  if (lora) {
    GRAFT_CHECK(da && db, "linear_bwd: a LoRA needs dA and dB outputs");
    GRAFT_CHECK(lora->a.ndim() == 2 && lora->b.ndim() == 2 && lora->a.size(1) == in && lora->b.size(0) == out &&
                    lora->b.size(1) == lora->a.size(0),
                "LoRA factors A {} / B {} do not fit a [{} -> {}] projection", lora->a.describe(), lora->b.describe(),
                in, out);
    GRAFT_CHECK(da->dtype() == DType::F32 && db->dtype() == DType::F32 && da->numel() == lora->a.numel() &&
                    db->numel() == lora->b.numel(),
                "linear_bwd: dA {} / dB {} must be f32 like A {} / B {}", da->describe(), db->describe(),
                lora->a.describe(), lora->b.describe());
  }
  if (T == 0) return;
  // dx = dy · W
  if (w.quantized()) {
    const Nf4Weight& nw = weights_.nf4(w.nf4);
    if (nf4_fused_ok(w, nw, dx.raw(), dy.raw())) {
      Nf4MatmulBwdDxDesc d;
      d.dy = cb(dy);
      d.w = nw;
      d.dx = mb(dx);
      d.t = T;
      cuda::nf4_matmul_bwd_dx(d, stream_);
    } else {
      const Tensor wd = dequant(nw);
      gemm_dyw(cb(dy), T, out, cb(wd), in, mb(dx));
    }
  } else {
    const Tensor wd = weights_.dense(w.dense, DType::BF16, stream_);
    gemm_dyw(cb(dy), T, out, cb(wd), in, mb(dx));
  }
  if (!lora || lora->rank() == 0) return;
  // LoRA in fp32: xd = x ⊙ m, xa = xd·Aᵀ, dyb = dy·B; dx += (s·dyb·A) ⊙ m; dA += s·dybᵀ·xd; dB += s·dyᵀ·xa.
  const int64_t r = lora->rank();
  const float s = lora->scale;
  const Tensor A = to_device(lora->a, DType::F32), B = to_device(lora->b, DType::F32);
  Tensor mask;
  if (lora_mask.defined()) {
    GRAFT_CHECK(lora_mask.numel() == T * in, "linear_bwd: dropout mask {} must be [{}, {}]", lora_mask.describe(), T, in);
    mask = to_device(lora_mask, DType::F32);
  }
  Tensor xd = empty({T, in}, DType::F32), dyf = empty({T, out}, DType::F32), xa = empty({T, r}, DType::F32),
         dyb = empty({T, r}, DType::F32), dxl = empty({T, in}, DType::F32);
  cuda::mul_mask_to_f32(cb(x), mask.defined() ? cf(mask) : nullptr, T * in, mf(xd), stream_);
  cuda::cast_bf16_to_f32(cb(dy), T * out, mf(dyf), stream_);
  gemm(CUBLAS_OP_T, CUBLAS_OP_N, r, T, in, 1.0f, cf(A), CUDA_R_32F, in, cf(xd), CUDA_R_32F, in, 0.0f, mf(xa), CUDA_R_32F, r);
  gemm(CUBLAS_OP_N, CUBLAS_OP_N, r, T, out, 1.0f, cf(B), CUDA_R_32F, r, cf(dyf), CUDA_R_32F, out, 0.0f, mf(dyb),
       CUDA_R_32F, r);
  gemm(CUBLAS_OP_N, CUBLAS_OP_N, in, T, r, s, cf(A), CUDA_R_32F, in, cf(dyb), CUDA_R_32F, r, 0.0f, mf(dxl), CUDA_R_32F, in);
  cuda::add_masked_acc(cf(dxl), mask.defined() ? cf(mask) : nullptr, T * in, mb(dx), stream_);
  // Gradients accumulate into device tensors directly; host tensors get a device partial added after a sync.
  auto grad_into = [&](Tensor* g, auto&& compute) {
    if (!g->device().is_cpu()) {
      here("linear_bwd", "dA/dB", *g);
      compute(mf(*g), 1.0f);
      return;
    }
    Tensor part = empty(g->shape(), DType::F32);
    compute(mf(part), 0.0f);
    const Tensor h = to_host(part);
    float* gp = g->data<float>();
    const float* hp = h.data<float>();
    for (int64_t i = 0; i < g->numel(); ++i) gp[i] += hp[i];
  };
  grad_into(da, [&](float* C, float beta) {
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, in, r, T, s, cf(xd), CUDA_R_32F, in, cf(dyb), CUDA_R_32F, r, beta, C, CUDA_R_32F, in);
  });
  grad_into(db, [&](float* C, float beta) {
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, r, out, T, s, cf(xa), CUDA_R_32F, r, cf(dyf), CUDA_R_32F, out, beta, C, CUDA_R_32F, r);
  });
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int n = device_count();
  GRAFT_CHECK_FIX(n > 0, "run on a machine with an NVIDIA GPU and driver, or use --device cpu",
                  "CUDA was requested but no CUDA device is usable: {}", no_device_reason());
  GRAFT_CHECK_FIX(device >= 0 && device < n, "pick a device index from `graft devices`",
                  "cuda:{} does not exist: this machine has {} CUDA device(s) (cuda:0..cuda:{})", device, n, n - 1);
  return std::make_unique<CudaBackend>(device);
}

CudaBackendMemory cuda_backend_memory(const Backend& be) {
  const auto* c = dynamic_cast<const CudaBackend*>(&be);
  GRAFT_CHECK(c != nullptr, "cuda_backend_memory: backend '{}' is not a CUDA backend", be.name());
  return c->memory();
}

}  // namespace graft::cuda
