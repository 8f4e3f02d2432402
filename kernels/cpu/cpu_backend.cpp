// graft::Backend on the CPU: fp32 reference ops, Eigen + OpenMP.
#include "graft/cpu/cpu_backend.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "graft/cpu/ops.hpp"
#include "graft/cpu/moe_ref.hpp"
#include "graft/cpu/nf4_gemv.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/cpu/train_step_ops.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"
#include "parallel_gemm.hpp"

namespace graft::cpu {
namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMat>;
using Map = Eigen::Map<RowMat>;

void base_linear(const Tensor& x, const LinearWeight& w, Tensor& y) {
  GRAFT_CHECK(w.defined(), "linear: weight [{}, {}] is not loaded", w.out, w.in);
  if (w.quantized() || w.q8 || w.q6) {
    if (w.q8) linear_q8(x, *w.q8, y);
    else if (w.q6) linear_q6(x, *w.q6, y);
    else linear_nf4(x, *w.nf4, y);
    if (w.bias.defined()) {
      Map Y(y.data<float>(), y.size(0), y.size(1));
      Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(w.bias.data<float>(), w.out);
    }
  } else {
    linear(x, w.dense, w.bias, y);
  }
}

void check_factors(const LoraFactors& f, int64_t in, int64_t out);

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }
  Device device() const override { return {}; }
  Tensor empty(const Dims& shape, DType dtype) override { return Tensor::empty(shape, dtype); }
  DType activation_dtype() const override { return DType::F32; }
  Tensor to_device(const Tensor& t, DType dtype) override {
    GRAFT_CHECK(t.device().is_cpu(), "cpu backend: to_device({}) from another device; copy it to the host first",
                t.describe());
    if (t.dtype() == dtype && t.is_contiguous()) return t;
    return t.dtype() == dtype ? t.contiguous() : t.to(dtype);
  }
  Tensor to_host(const Tensor& t) override {
    GRAFT_CHECK(t.device().is_cpu(), "cpu backend: to_host({}) of another backend's tensor", t.describe());
    const bool is_float = t.dtype() == DType::F64 || t.dtype() == DType::F32 || t.dtype() == DType::F16 ||
                          t.dtype() == DType::BF16;
    if (!is_float || t.dtype() == DType::F32) return t.is_contiguous() ? t : t.contiguous();
    return t.to(DType::F32);
  }
  void synchronize() override {}

  void linear(const Tensor& x, const LinearWeight& w, const LoraBatch& lora, Tensor& y) override {
    base_linear(x, w, y);
    if (!lora.empty()) lora_rows_acc(x, lora, y);
  }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override { cpu::rmsnorm(x, w, eps, y); }
  void swiglu(const Tensor& g, const Tensor& u, Tensor& o) override { cpu::swiglu(g, u, o); }
  void embedding(std::span<const int32_t> ids, const Tensor& table, Tensor& out) override {
    cpu::embedding(ids, table, out);
  }
  void rope(Tensor& x, std::span<const int32_t> pos, const RopeTable& t, int rot_dim, bool interleaved) override {
    if (interleaved) rope_interleaved(x, pos, t, rot_dim);
    else rope_rotate_half(x, pos, t, rot_dim);
  }
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, std::span<const int32_t> q_pos,
                 std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out) override {
    cpu::attention(q, k, v, q_pos, k_pos, mask, scale, out);
  }
  void mla_attention(const Tensor& q_nope, const Tensor& q_pe, const Tensor& c, const Tensor& k_pe,
                     const LinearWeight& kv_b, int64_t dv, std::span<const int32_t> q_pos,
                     std::span<const int32_t> k_pos, const AttentionMask& mask, float scale, Tensor& out) override {
    const Tensor w = kv_b.quantized() ? nf4::dequantize(*kv_b.nf4) : kv_b.dense;
    mla_attention_absorbed(q_nope, q_pe, c, k_pe, w, dv, q_pos, k_pos, mask, scale, out);
  }
  void moe_route(const Tensor& logits, const RouterParams& p, Tensor& ids, Tensor& weights) override {
    cpu::moe_route(logits, p, ids, weights);
  }
  void moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const ExpertWeights& ex,
                   const ExpertLora* lora, std::span<const int32_t> row_slot, bool scale_input, Tensor& out) override;
  void rmsnorm_bwd(const Tensor& x, const Tensor& w, const Tensor& dy, float eps, Tensor& dx) override {
    const int64_t D = x.size(-1);
    GRAFT_CHECK(dy.numel() == x.numel() && dx.numel() == x.numel() && w.numel() == D,
                "rmsnorm_bwd: x {}, w {}, dy {}, dx {} must share the shape [.., {}]", x.describe(), w.describe(),
                dy.describe(), dx.describe(), D);
    ref::rmsnorm_bwd<float>(x.data<float>(), w.data<float>(), dy.data<float>(), eps, x.numel() / D, D,
                            dx.data<float>());
  }
  void swiglu_bwd(const Tensor& g, const Tensor& u, const Tensor& dout, Tensor& dg, Tensor& du) override {
    GRAFT_CHECK(u.numel() == g.numel() && dout.numel() == g.numel() && dg.numel() == g.numel() &&
                    du.numel() == g.numel(),
                "swiglu_bwd: gate {}, up {}, dout {}, dgate {}, dup {} must have equal sizes", g.describe(),
                u.describe(), dout.describe(), dg.describe(), du.describe());
    ref::swiglu_bwd<float>(g.data<float>(), u.data<float>(), dout.data<float>(), g.numel(), dg.data<float>(),
                           du.data<float>());
  }
  void rope_bwd(Tensor& dx, std::span<const int32_t> pos, const RopeTable& t, int rot_dim, bool interleaved) override {
    GRAFT_CHECK(dx.ndim() == 3, "rope_bwd: dx {} must be [T, heads, head_dim]", dx.describe());
    ref::rope_bwd<float>(dx.data<float>(), dx.size(0), dx.size(1), dx.size(2), rot_dim, t.inv_freq,
                         t.attention_scaling, pos, interleaved);
  }
  void attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                     std::span<const int32_t> q_pos, std::span<const int32_t> k_pos, const AttentionMask& mask,
                     float scale, Tensor& dq, Tensor& dk, Tensor& dv) override {
    cpu::attention_bwd(q, k, v, dout, q_pos, k_pos, mask, scale, dq, dk, dv);
  }
  void linear_bwd(const Tensor& x, const Tensor& dy, const LinearWeight& w, const LoraFactors* lora,
                  const Tensor& lora_mask, Tensor& dx, Tensor* da, Tensor* db) override;
  double cross_entropy(const Tensor& logits, std::span<const int32_t> labels, Tensor* dlogits) override {
    const int64_t T = logits.size(0), V = logits.size(1);
    GRAFT_CHECK(static_cast<int64_t>(labels.size()) == T && (!dlogits || dlogits->numel() == logits.numel()),
                "cross_entropy: logits {} need {} labels (got {}) and dlogits of the same shape", logits.describe(),
                T, labels.size());
    return ref::cross_entropy<float>(logits.data<float>(), labels, T, V, dlogits ? dlogits->data<float>() : nullptr);
  }
  void add_acc(const Tensor& x, Tensor& y) override {
    GRAFT_CHECK(x.numel() == y.numel() && x.dtype() == DType::F32 && y.dtype() == DType::F32,
                "add_acc: {} and {} differ", x.describe(), y.describe());
    const float* a = x.data<float>();
    float* b = y.data<float>();
    const int64_t n = x.numel();
    parallel_for(n, graft::parallel_worth(n), [&](int64_t i) { b[i] += a[i]; });
  }
  void scale_rows(Tensor& y, const Tensor& s) override {
    const int64_t T = y.size(0), H = y.numel() / std::max<int64_t>(T, 1);
    GRAFT_CHECK(s.numel() == T, "scale_rows: {} scales for {} rows", s.numel(), T);
    float* p = y.data<float>();
    const float* sp = s.data<float>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) p[t * H + h] *= sp[t];
  }
  void fill(Tensor& y, float v) override { cpu::fill(y, v); }
  void mul(const Tensor& x, const Tensor& m, Tensor& y) override { cpu::mul(x, m, y); }
  void lora_acc(const Tensor& x, const LoraFactors& f, Tensor& y) override {
    check_factors(f, x.size(1), y.size(1));
    cpu::lora_acc(x, f.a, f.b, f.scale, y);
  }
  void dropout_mask(uint64_t key, std::span<const int32_t> rows, double p, Tensor& out) override {
    cpu::dropout_mask(key, rows, p, out);
  }
  void gather_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& s, Tensor& out) override {
    cpu::gather_rows(x, rows, s, out);
  }
  void scatter_add_rows(const Tensor& x, std::span<const int32_t> rows, const Tensor& s, Tensor& out) override {
    cpu::scatter_add_rows(x, rows, s, out);
  }
  void rows_dot(const Tensor& x, std::span<const int32_t> rows, const Tensor& y, Tensor& out) override {
    cpu::rows_dot(x, rows, y, out);
  }
  void copy_cols(const Tensor& src, int64_t src_col, int64_t width, Tensor& dst, int64_t dst_col) override {
    cpu::copy_cols(src, src_col, width, dst, dst_col);
  }
  void set_rows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override { cpu::set_rows(x, rows, out); }
  void sigmoid(const Tensor& x, Tensor& y) override { cpu::sigmoid(x, y); }
  void sigmoid_bwd(const Tensor& y, const Tensor& dy, Tensor& dx) override { cpu::sigmoid_bwd(y, dy, dx); }
  void moe_route_bwd(const Tensor& logits, const RouterParams& p, const Tensor& ids, const Tensor& dweights,
                     Tensor& dlogits) override {
    cpu::moe_route_bwd(logits, p, ids, dweights, dlogits);
  }
  MoePermutation moe_permute_plan(const Tensor& ids, int num_experts) override {
    return cpu::moe_permute_plan(ids, num_experts);
  }
};

// Gathers rows `rows` of x into a dense matrix.
RowMat gather(const float* x, int64_t cols, const std::vector<int64_t>& rows) {
  RowMat m(static_cast<Eigen::Index>(rows.size()), cols);
  for (size_t i = 0; i < rows.size(); ++i) std::memcpy(m.row(static_cast<Eigen::Index>(i)).data(), x + rows[i] * cols, sizeof(float) * static_cast<size_t>(cols));
  return m;
}

void lora_into(const RowMat& xs, const LoraFactors& f, RowMat& ys) {
  if (f.rank() == 0) return;
  RowMat xa = xs * MapC(f.a.data<float>(), f.a.size(0), f.a.size(1)).transpose();
  ys.noalias() += f.scale * (xa * MapC(f.b.data<float>(), f.b.size(0), f.b.size(1)).transpose());
}

void check_factors(const LoraFactors& f, int64_t in, int64_t out) {
  GRAFT_CHECK(f.a.dtype() == DType::F32 && f.b.dtype() == DType::F32 && f.a.ndim() == 2 && f.b.ndim() == 2,
              "LoRA factors must be 2-d f32: A {}, B {}", f.a.describe(), f.b.describe());
  GRAFT_CHECK(f.a.size(1) == in && f.b.size(0) == out && f.b.size(1) == f.a.size(0),
              "LoRA factors A {} / B {} do not fit a [{} -> {}] projection", f.a.describe(), f.b.describe(), in, out);
}
}  // namespace

void lora_rows_acc(const Tensor& x, const LoraBatch& lora, Tensor& y) {
  const int64_t T = x.size(0), in = x.size(1), out = y.size(1);
  GRAFT_CHECK(static_cast<int64_t>(lora.row_slot.size()) == T, "LoRA batch: {} row slots for {} rows",
              lora.row_slot.size(), T);
  const int64_t S = static_cast<int64_t>(lora.slots.size());
  std::vector<std::vector<int64_t>> rows(static_cast<size_t>(S));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t s = lora.row_slot[static_cast<size_t>(t)];
    GRAFT_CHECK(s < S, "LoRA batch: row {} uses slot {} of {}", t, s, S);
    if (s >= 0 && lora.slots[static_cast<size_t>(s)]) rows[static_cast<size_t>(s)].push_back(t);
  }
  for (int64_t s = 0; s < S; ++s) {
    const auto& r = rows[static_cast<size_t>(s)];
    if (r.empty()) continue;
    const LoraFactors& f = *lora.slots[static_cast<size_t>(s)];
    check_factors(f, in, out);
    if (static_cast<int64_t>(r.size()) == T) {  // whole batch on one adapter: no gather
      cpu::lora_acc(x, f.a, f.b, f.scale, y);
      continue;
    }
    RowMat xs = gather(x.data<float>(), in, r);
    RowMat ys = RowMat::Zero(xs.rows(), out);
    lora_into(xs, f, ys);
    float* yp = y.data<float>();
    for (size_t i = 0; i < r.size(); ++i)
      for (int64_t o = 0; o < out; ++o) yp[r[i] * out + o] += ys(static_cast<Eigen::Index>(i), o);
  }
}

void CpuBackend::moe_experts(const Tensor& x, const Tensor& ids, const Tensor& weights, const ExpertWeights& ex,
                             const ExpertLora* lora, std::span<const int32_t> row_slot, bool scale_input, Tensor& out) {
  const int64_t T = x.size(0), H = x.size(1), k = ids.numel() / std::max<int64_t>(T, 1);
  const int E = static_cast<int>(ex.num_experts());
  GRAFT_CHECK(ids.numel() == T * k && weights.numel() == T * k, "moe_experts: ids {} / weights {} for {} tokens",
              ids.describe(), weights.describe(), T);
  GRAFT_CHECK(out.size(0) == T && out.size(1) == H, "moe_experts: out {} must be [{}, {}]", out.describe(), T, H);
  GRAFT_CHECK(!lora || row_slot.size() == static_cast<size_t>(T), "moe_experts: {} row slots for {} tokens",
              row_slot.size(), T);
  const MoePermutation plan = moe_permute_plan(ids, E);
  const float* w = weights.data<float>();
  RowMat results(T * k, H);  // per (token, slot j) expert output, then reduced in slot order
  // Experts by decreasing row count, handed out one at a time: the largest start first and the small ones fill in
  // at the end (longest-processing-time first). A prefill's routing is skewed (the small Qwen3-MoE at 128 tokens:
  // 125, 83, 19, 12, 11 and 6 rows in one layer), and index order could leave one thread the two largest.
  std::vector<int> by_rows(static_cast<size_t>(E));
  std::iota(by_rows.begin(), by_rows.end(), 0);
  std::stable_sort(by_rows.begin(), by_rows.end(), [&](int a, int b) {
    return plan.counts[static_cast<size_t>(a)] > plan.counts[static_cast<size_t>(b)];
  });
  parallel_for(E, graft::parallel_worth(T * k * H * 3 * ex.gate.front().out), [&](int64_t i) {
    const int e = by_rows[static_cast<size_t>(i)];
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) return;  // this expert has no rows
    std::vector<int64_t> flat(static_cast<size_t>(n)), tok(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) {
      flat[static_cast<size_t>(i)] = plan.order[static_cast<size_t>(plan.offsets[static_cast<size_t>(e)] + i)];
      tok[static_cast<size_t>(i)] = flat[static_cast<size_t>(i)] / k;
    }
    RowMat xs = gather(x.data<float>(), H, tok);
    if (scale_input)
      for (int32_t i = 0; i < n; ++i) xs.row(i) *= w[flat[static_cast<size_t>(i)]];
    Tensor xt = Tensor::wrap(xs.data(), {n, H}, DType::F32);
    const LinearWeight& G = ex.gate[static_cast<size_t>(e)];
    const LinearWeight& U = ex.up[static_cast<size_t>(e)];
    const LinearWeight& D = ex.down[static_cast<size_t>(e)];
    Tensor g = Tensor::empty({n, G.out}, DType::F32), u = Tensor::empty({n, U.out}, DType::F32);
    base_linear(xt, G, g);
    base_linear(xt, U, u);
    std::vector<int32_t> slots;
    const ExpertLora::Slots es = lora ? lora->of_expert(e) : ExpertLora::Slots{};
    if (lora) {
      slots.resize(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) slots[static_cast<size_t>(i)] = row_slot[static_cast<size_t>(tok[static_cast<size_t>(i)])];
      lora_rows_acc(xt, LoraBatch{es.gate, slots}, g);
      lora_rows_acc(xt, LoraBatch{es.up, slots}, u);
    }
    cpu::swiglu(g, u, g);
    Tensor y = Tensor::empty({n, D.out}, DType::F32);
    base_linear(g, D, y);
    if (lora) lora_rows_acc(g, LoraBatch{es.down, slots}, y);
    const float* yp = y.data<float>();
    for (int32_t i = 0; i < n; ++i) std::memcpy(results.row(flat[static_cast<size_t>(i)]).data(), yp + i * H, sizeof(float) * static_cast<size_t>(H));
  }, Schedule::Dynamic);
  float* op = out.data<float>();
  parallel_for(T, graft::parallel_worth(T * k * H), [&](int64_t t) {
    float* o = op + t * H;
    std::fill(o, o + H, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float c = scale_input ? 1.0f : w[t * k + j];
      const float* r = results.row(t * k + j).data();
      for (int64_t h = 0; h < H; ++h) o[h] += c * r[h];
    }
  });
}

void CpuBackend::linear_bwd(const Tensor& x, const Tensor& dy, const LinearWeight& w, const LoraFactors* lora,
                            const Tensor& lora_mask, Tensor& dx, Tensor* da, Tensor* db) {
  GRAFT_CHECK(w.defined(), "linear_bwd: weight [{}, {}] is not loaded", w.out, w.in);
  const int64_t T = x.size(0), in = w.in, out = w.out;
  GRAFT_CHECK(x.size(1) == in && dy.size(0) == T && dy.size(1) == out && dx.size(0) == T && dx.size(1) == in,
              "linear_bwd: x {} / dy {} / dx {} do not fit a [{} -> {}] projection", x.describe(), dy.describe(),
              dx.describe(), in, out);
  Map DX(dx.data<float>(), T, in);
  MapC DY(dy.data<float>(), T, out);
  // dX = dY · W on the pool (parallel_gemm.hpp); an NF4 weight is dequantized whole first (nf4_dequant_rows splits
  // its rows over the pool).
  if (w.quantized()) {
    Tensor wd = Tensor::empty({out, in}, DType::F32);
    nf4_dequant_rows(*w.nf4, 0, out, wd.data<float>());
    parallel_gemm(DY, MapC(wd.data<float>(), out, in), DX, 1.0f, false);
  } else {
    parallel_gemm(DY, MapC(w.dense.data<float>(), out, in), DX, 1.0f, false);
  }
  if (!lora) return;
  check_factors(*lora, in, out);
  GRAFT_CHECK(da && db, "linear_bwd: a LoRA needs dA and dB outputs");
  const int64_t r = lora->rank();
  const float s = lora->scale;
  MapC A(lora->a.data<float>(), r, in), B(lora->b.data<float>(), out, r), X(x.data<float>(), T, in);
  RowMat dyb = DY * B;  // [T, r]
  if (!lora_mask.defined()) {
    RowMat xa = X * A.transpose();  // [T, r]
    DX.noalias() += s * dyb * A;
    Map(da->data<float>(), r, in).noalias() += s * dyb.transpose() * X;
    Map(db->data<float>(), out, r).noalias() += s * DY.transpose() * xa;
    return;
  }
  GRAFT_CHECK(lora_mask.numel() == T * in, "linear_bwd: dropout mask {} must be [{}, {}]", lora_mask.describe(), T, in);
  const MapC m(lora_mask.data<float>(), T, in);
  const RowMat xd = X.cwiseProduct(m);
  RowMat xa = xd * A.transpose();
  RowMat dxl = s * dyb * A;
  DX += dxl.cwiseProduct(m);
  Map(da->data<float>(), r, in).noalias() += s * dyb.transpose() * xd;
  Map(db->data<float>(), out, r).noalias() += s * DY.transpose() * xa;
}

std::unique_ptr<Backend> make_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace graft::cpu
