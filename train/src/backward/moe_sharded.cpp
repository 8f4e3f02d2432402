// The routed experts of the training step with the experts sharded over the model's expert group
// (expert parallel, docs/distributed.md). The origin (the rank whose sequence it is) gathers each
// expert's rows exactly as the unsharded loop does and sends them, with their token indices and its
// sequence's dropout draw, to the expert's rank; the owner runs the expert (SwiGLU + LoRA) on each
// (origin, expert) group — the rows a single process would give that expert for that sequence — and
// returns the outputs, which the origin combines with the same backend ops in the same order. The
// backward mirrors it: output gradients out, input gradients back; the owner flushes its expert's LoRA
// gradient after each group (StepOptions::flush_expert_grads), so the step's gradient sum equals the
// single-process one. Two all-to-alls per direction; the exchanged rows travel as host f32.
#include <algorithm>
#include <cstring>

#include "backward_internal.hpp"
#include "graft/model/expert_parallel.hpp"

namespace graft::train::detail {
namespace {
using model::ExpertProj;

template <class V>
void put(std::string& s, const V* p, size_t n) {
  s.append(reinterpret_cast<const char*>(p), n * sizeof(V));
}
void put_rows(std::string& s, Backend& be, const Tensor& t) {
  const Tensor h = host_f32(be, t);
  put(s, h.data<float>(), static_cast<size_t>(h.numel()));
}
// Rows [at, at + n) of a received block of [*, H] f32 rows, as a backend activation.
Tensor take_rows(Backend& be, const std::string& b, size_t& at, int64_t n, int64_t H, int r, const char* what) {
  const size_t bytes = static_cast<size_t>(n * H) * sizeof(float);
  GRAFT_CHECK_FIX(at + bytes <= b.size(), "start every rank with the same recipe and model",
                  "expert parallel: rank {} sent {} bytes of {}, fewer than its rows need", r, b.size(), what);
  Tensor h = Tensor::empty({n, H}, DType::F32);
  std::memcpy(h.data<float>(), b.data() + at, bytes);
  at += bytes;
  return be.to_device(h, be.activation_dtype());
}
void check_used(const std::string& b, size_t used, int r, const char* what) {
  GRAFT_CHECK_FIX(b.size() == used, "start every rank with the same recipe and model",
                  "expert parallel: rank {} sent {} bytes of {}, expected {}", r, b.size(), what, used);
}

struct BlockHead {  // one origin's block: its sequence's dropout draw and its number of (expert, rows) groups
  uint64_t draw;
  int64_t groups;
};
struct GroupHead {  // then per group: the expert and its row count, the token of each row, the rows
  int32_t expert;
  int32_t rows;
};
}  // namespace

Tensor moe_routed_fwd_sharded(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, MoeActs& A) {
  model::ExpertParallel& ep = *c.m.expert_parallel();
  const int P = ep.size();
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  const int k = static_cast<int>(A.ids.size(1));
  const bool scale_in = c.spec.scale_expert_input;
  const ops::MoePermutation plan = c.be.moe_permute_plan(A.ids, static_cast<int>(E));
  A.experts.assign(static_cast<size_t>(E), {});
  const Tensor w_flat = A.w.reshape({T * k, 1});

  // ---- origin: each expert's rows (gathered as the unsharded loop does) to the expert's rank
  std::vector<std::string> groups(static_cast<size_t>(P));
  std::vector<int64_t> ngroups(static_cast<size_t>(P), 0);
  for (int64_t e = 0; e < E; ++e) {
    const int32_t n = plan.counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const Tensor xe = expert_rows(c, plan, e, k, x, w_flat, X);
    const int r = model::expert_owner(e, E, P);
    std::string& g = groups[static_cast<size_t>(r)];
    const GroupHead gh{static_cast<int32_t>(e), n};
    put(g, &gh, 1);
    put(g, X.tok.data(), X.tok.size());
    put_rows(g, c.be, xe);
    ++ngroups[static_cast<size_t>(r)];
  }
  std::vector<std::string> send(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r) {
    const BlockHead bh{c.opt.dropout_draw, ngroups[static_cast<size_t>(r)]};
    put(send[static_cast<size_t>(r)], &bh, 1);
    send[static_cast<size_t>(r)] += groups[static_cast<size_t>(r)];
  }
  const std::vector<std::string> got = ep.exchange(send);

  // ---- owner: run this rank's experts on each (origin, expert) group; reply with the outputs
  A.remote.clear();
  std::vector<std::string> reply(static_cast<size_t>(P));
  const auto& ex = LW.moe.experts;
  for (int r = 0; r < P; ++r) {
    const std::string& b = got[static_cast<size_t>(r)];
    GRAFT_CHECK(b.size() >= sizeof(BlockHead), "expert parallel: rank {} sent a truncated block ({} bytes)", r, b.size());
    BlockHead bh;
    std::memcpy(&bh, b.data(), sizeof bh);
    size_t at = sizeof bh;
    for (int64_t gi = 0; gi < bh.groups; ++gi) {
      GRAFT_CHECK(at + sizeof(GroupHead) <= b.size(), "expert parallel: rank {} sent a truncated block", r);
      GroupHead gh;
      std::memcpy(&gh, b.data() + at, sizeof gh);
      at += sizeof gh;
      const int e = gh.expert;
      GRAFT_CHECK_FIX(e >= 0 && e < E && ep.owns(e, E) && gh.rows > 0, "start every rank with the same recipe and model",
                      "expert parallel: rank {} sent {} rows of expert {}, which rank {} does not hold", r, gh.rows, e,
                      ep.rank());
      RemoteExpertActs R{e, r, bh.draw, {}};
      ExpertActs& X = R.acts;
      X.tok.resize(static_cast<size_t>(gh.rows));
      GRAFT_CHECK(at + X.tok.size() * sizeof(int32_t) <= b.size(), "expert parallel: rank {} sent a truncated block", r);
      std::memcpy(X.tok.data(), b.data() + at, X.tok.size() * sizeof(int32_t));
      at += X.tok.size() * sizeof(int32_t);
      X.x = take_rows(c.be, b, at, gh.rows, H, r, "expert inputs");
      const auto sz = static_cast<size_t>(e);
      X.g = lin_fwd(c.be, X.x, c.expert_lin(l, ex.gate[sz], ExpertProj::Gate, e, X.tok, bh.draw));
      X.u = lin_fwd(c.be, X.x, c.expert_lin(l, ex.up[sz], ExpertProj::Up, e, X.tok, bh.draw));
      X.a = act(c.be, gh.rows, X.g.size(1));
      c.be.swiglu(X.g, X.u, X.a);
      X.y = lin_fwd(c.be, X.a, c.expert_lin(l, ex.down[sz], ExpertProj::Down, e, X.tok, bh.draw));
      put_rows(reply[static_cast<size_t>(r)], c.be, X.y);
      A.remote.push_back(std::move(R));
    }
    check_used(b, at, r, "routed rows");
  }
  const std::vector<std::string> back = ep.exchange(reply);

  // ---- origin: the outputs, combined in expert order exactly as the unsharded loop
  Tensor out = act_zeros(c.be, T, H);
  std::vector<size_t> at(static_cast<size_t>(P), 0);
  for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    if (X.flat.empty()) continue;
    const int r = model::expert_owner(e, E, P);
    X.y = take_rows(c.be, back[static_cast<size_t>(r)], at[static_cast<size_t>(r)], static_cast<int64_t>(X.flat.size()), H, r,
                    "expert outputs");
    c.be.scatter_add_rows(X.y, X.tok, scale_in ? Tensor() : X.w, out);  // out[t] += (w or 1)·y
  }
  for (int r = 0; r < P; ++r) check_used(back[static_cast<size_t>(r)], at[static_cast<size_t>(r)], r, "expert outputs");
  return out;
}

Tensor moe_routed_bwd_sharded(const Ctx& c, int l, const model::LayerWeights& LW, const Tensor& x, const Tensor& dout,
                              MoeActs& A, Tensor& dw) {
  model::ExpertParallel& ep = *c.m.expert_parallel();
  const int P = ep.size();
  const int64_t T = c.T, H = x.size(1), E = LW.moe.experts.num_experts();
  const bool scale_in = c.spec.scale_expert_input;
  GRAFT_CHECK(A.experts.size() == static_cast<size_t>(E), "expert parallel: backward without its forward (layer {})", l);

  // ---- origin: dy = (w or 1)·dout[t] of each expert's rows; dw = <dout[t], y> (output-side weight)
  std::vector<std::string> send(static_cast<size_t>(P));
  for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(X.flat.size());
    if (n == 0) continue;
    Tensor dy = act(c.be, n, H);
    c.be.gather_rows(dout, X.tok, scale_in ? Tensor() : X.w, dy);
    put_rows(send[static_cast<size_t>(model::expert_owner(e, E, P))], c.be, dy);
    if (!scale_in) {
      Tensor dwe = f32(c.be, n, 1);
      c.be.rows_dot(dout, X.tok, X.y, dwe);
      c.be.scatter_add_rows(dwe, X.flat, Tensor(), dw);
    }
  }
  const std::vector<std::string> got = ep.exchange(send);

  // ---- owner: back-propagate each group in forward order; reply with the input gradients
  std::vector<size_t> at(static_cast<size_t>(P), 0);
  std::vector<std::string> reply(static_cast<size_t>(P));
  const auto& ex = LW.moe.experts;
  for (RemoteExpertActs& R : A.remote) {
    ExpertActs& X = R.acts;
    const int64_t m = static_cast<int64_t>(X.tok.size());
    const Tensor dy = take_rows(c.be, got[static_cast<size_t>(R.origin)], at[static_cast<size_t>(R.origin)], m, H, R.origin,
                                "output gradients");
    const int e = R.expert;
    const auto sz = static_cast<size_t>(e);
    const Lin ld = c.expert_lin(l, ex.down[sz], ExpertProj::Down, e, X.tok, R.draw);
    const Lin lg = c.expert_lin(l, ex.gate[sz], ExpertProj::Gate, e, X.tok, R.draw);
    const Lin lu = c.expert_lin(l, ex.up[sz], ExpertProj::Up, e, X.tok, R.draw);
    Tensor da = lin_bwd(c.be, X.a, dy, ld);
    Tensor dg = act(c.be, m, X.g.size(1)), du = act(c.be, m, X.g.size(1));
    c.be.swiglu_bwd(X.g, X.u, da, dg, du);
    Tensor dxe = lin_bwd(c.be, X.x, dg, lg);
    c.be.add_acc(lin_bwd(c.be, X.x, du, lu), dxe);
    put_rows(reply[static_cast<size_t>(R.origin)], c.be, dxe);
    if (c.opt.flush_expert_grads)  // this group's gradient alone into the step's sum
      for (const Lin* q : {&ld, &lg, &lu})
        if (q->p) c.opt.flush_expert_grads(*q->p);
  }
  for (int r = 0; r < P; ++r) check_used(got[static_cast<size_t>(r)], at[static_cast<size_t>(r)], r, "output gradients");
  const std::vector<std::string> back = ep.exchange(reply);

  // ---- origin: dx[t] += (w or 1)·dx_e in expert order; Llama 4: dw = <x[t], dx_e>
  Tensor dx = act_zeros(c.be, T, H);
  std::fill(at.begin(), at.end(), 0);
  for (int64_t e = 0; e < E; ++e) {
    ExpertActs& X = A.experts[static_cast<size_t>(e)];
    const int64_t n = static_cast<int64_t>(X.flat.size());
    if (n == 0) continue;
    const int r = model::expert_owner(e, E, P);
    const Tensor dxe = take_rows(c.be, back[static_cast<size_t>(r)], at[static_cast<size_t>(r)], n, H, r, "input gradients");
    c.be.scatter_add_rows(dxe, X.tok, scale_in ? X.w : Tensor(), dx);
    if (scale_in) {
      Tensor dwe = f32(c.be, n, 1);
      c.be.rows_dot(x, X.tok, dxe, dwe);
      c.be.scatter_add_rows(dwe, X.flat, Tensor(), dw);
    }
  }
  for (int r = 0; r < P; ++r) check_used(back[static_cast<size_t>(r)], at[static_cast<size_t>(r)], r, "input gradients");
  return dx;
}

}  // namespace graft::train::detail
