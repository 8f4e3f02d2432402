// Expert shards and the sharded inference MoE (expert_parallel.hpp).
#include "graft/model/expert_parallel.hpp"

#include "graft/model/model.hpp"
#include "family_spec.hpp"

#include <algorithm>
#include <cstring>

#include "graft/error.hpp"

namespace graft::model {

std::pair<int64_t, int64_t> expert_shard(int64_t num_experts, int rank, int size) {
  GRAFT_CHECK(size >= 1 && rank >= 0 && rank < size, "expert_shard: rank {} of {}", rank, size);
  const int64_t base = num_experts / size, extra = num_experts % size;
  const int64_t first = rank * base + std::min<int64_t>(rank, extra);
  return {first, first + base + (rank < extra ? 1 : 0)};
}

int expert_owner(int64_t expert, int64_t num_experts, int size) {
  GRAFT_CHECK(expert >= 0 && expert < num_experts, "expert {} is outside [0, {})", expert, num_experts);
  const int64_t base = num_experts / size, extra = num_experts % size;
  const int64_t big = extra * (base + 1);  // experts held by the first `extra` ranks (one more each)
  if (expert < big) return static_cast<int>(expert / (base + 1));
  return static_cast<int>(extra + (expert - big) / base);
}

namespace {

template <class T>
void append(std::string& s, const T* p, size_t n) {
  s.append(reinterpret_cast<const char*>(p), n * sizeof(T));
}

// One rank's block of an exchange: a head, each adapter slot's origin (int32 length + bytes), a RowHead
// per row, then the rows [rows, H] f32. layer -1 releases the workers of a driven group.
struct BlockHead {
  int64_t rows;
  int32_t layer;
  int32_t slots;
};
struct RowHead {  // one routed row: expert, adapter slot (-1 = base), combine weight
  int32_t expert;
  int32_t slot;
  float w;
};
constexpr int32_t kStop = -1;

struct Block {
  BlockHead head{0, 0, 0};
  std::vector<std::string> origins;
  std::vector<RowHead> rows;
  const float* x = nullptr;  // [rows, H] inside the received string
};

std::string make_block(int32_t layer, std::span<const std::string> origins, const std::string& heads, const std::string& rows,
                       int64_t n) {
  std::string b;
  const BlockHead h{n, layer, static_cast<int32_t>(origins.size())};
  append(b, &h, 1);
  for (const auto& o : origins) {
    const auto len = static_cast<int32_t>(o.size());
    append(b, &len, 1);
    b += o;
  }
  b += heads;
  b += rows;
  return b;
}

Block parse_block(const std::string& b, int64_t H, int r) {
  Block k;
  const auto need = [&](size_t at, size_t bytes) {
    GRAFT_CHECK_FIX(at + bytes <= b.size(), "start every rank with the same model and options",
                    "expert parallel: rank {} sent a truncated block ({} bytes)", r, b.size());
  };
  need(0, sizeof(BlockHead));
  std::memcpy(&k.head, b.data(), sizeof k.head);
  size_t at = sizeof k.head;
  GRAFT_CHECK(k.head.rows >= 0 && k.head.slots >= 0, "expert parallel: rank {} sent a malformed block", r);
  for (int32_t s = 0; s < k.head.slots; ++s) {
    int32_t len = 0;
    need(at, sizeof len);
    std::memcpy(&len, b.data() + at, sizeof len);
    at += sizeof len;
    GRAFT_CHECK(len >= 0, "expert parallel: rank {} sent a malformed block", r);
    need(at, static_cast<size_t>(len));
    k.origins.push_back(b.substr(at, static_cast<size_t>(len)));
    at += static_cast<size_t>(len);
  }
  k.rows.resize(static_cast<size_t>(k.head.rows));
  need(at, k.rows.size() * sizeof(RowHead));
  std::memcpy(k.rows.data(), b.data() + at, k.rows.size() * sizeof(RowHead));
  at += k.rows.size() * sizeof(RowHead);
  const size_t xbytes = static_cast<size_t>(k.head.rows * H) * sizeof(float);
  GRAFT_CHECK_FIX(at + xbytes == b.size(), "start every rank with the same model and options",
                  "expert parallel: rank {} sent {} bytes for {} rows of width {}", r, b.size(), k.head.rows, H);
  k.x = reinterpret_cast<const float*>(b.data() + at);
  return k;
}

// Owner side: every received row runs this rank's expert (one Backend::moe_experts call over all of
// them); the reply to each rank holds its rows' weighted outputs in the order they came.
std::vector<std::string> run_owned_rows(Backend& be, const ExpertParallel& ep, const std::vector<Block>& blocks, int64_t H,
                                        const ExpertWeights& experts, const ExpertLora* lora, bool scale_input) {
  const int P = ep.size();
  const int64_t E = experts.num_experts();
  int64_t n = 0;
  for (const Block& k : blocks) n += k.head.rows;
  std::vector<std::string> reply(static_cast<size_t>(P));
  if (n == 0) return reply;
  Tensor xr = Tensor::empty({n, H}, DType::F32), ir = Tensor::empty({n, 1}, DType::I32), wr = Tensor::empty({n, 1}, DType::F32);
  std::vector<int32_t> slots(static_cast<size_t>(n));
  int64_t at = 0;
  for (int r = 0; r < P; ++r) {
    const Block& k = blocks[static_cast<size_t>(r)];
    for (const RowHead& h : k.rows) {
      GRAFT_CHECK_FIX(h.expert >= 0 && h.expert < E && ep.owns(h.expert, E), "start every rank with the same model and options",
                      "expert parallel: rank {} sent a row of expert {}, which rank {} does not hold", r, h.expert, ep.rank());
      ir.data<int32_t>()[at] = h.expert;
      wr.data<float>()[at] = h.w;
      slots[static_cast<size_t>(at)] = h.slot;
      ++at;
    }
    std::memcpy(xr.data<float>() + (at - k.head.rows) * H, k.x, static_cast<size_t>(k.head.rows * H) * sizeof(float));
  }
  const bool any_lora = lora && std::any_of(slots.begin(), slots.end(), [](int32_t s) { return s >= 0; });
  Tensor yr = be.empty({n, H}, be.activation_dtype());
  be.moe_experts(be.to_device(xr, be.activation_dtype()), be.to_device(ir, DType::I32), be.to_device(wr, DType::F32),
                 experts, any_lora ? lora : nullptr, any_lora ? std::span<const int32_t>(slots) : std::span<const int32_t>(),
                 scale_input, yr);
  const Tensor yh = host_f32(be, yr);
  at = 0;
  for (int r = 0; r < P; ++r) {
    const int64_t m = blocks[static_cast<size_t>(r)].head.rows;
    append(reply[static_cast<size_t>(r)], yh.data<float>() + at * H, static_cast<size_t>(m * H));
    at += m;
  }
  return reply;
}

std::vector<Block> parse_all(const std::vector<std::string>& got, int64_t H) {
  std::vector<Block> blocks;
  for (size_t r = 0; r < got.size(); ++r) blocks.push_back(parse_block(got[r], H, static_cast<int>(r)));
  return blocks;
}

}  // namespace

void moe_experts_sharded(Backend& be, ExpertParallel& ep, int layer, const Tensor& x, const Tensor& ids,
                         const Tensor& weights, const ExpertWeights& experts, const ExpertLora* lora,
                         std::span<const std::string> adapter_origins, std::span<const int32_t> row_slot,
                         bool scale_input, Tensor& out) {
  const int64_t T = x.size(0), H = x.size(1), E = experts.num_experts();
  const int64_t k = ids.ndim() == 2 ? ids.size(1) : (T ? ids.numel() / T : 0);
  const int P = ep.size();
  GRAFT_CHECK(ids.numel() == T * k && weights.numel() == T * k, "moe_experts_sharded: ids {} / weights {} for {} tokens",
              ids.describe(), weights.describe(), T);
  GRAFT_CHECK(!lora || row_slot.size() == static_cast<size_t>(T), "moe_experts_sharded: {} row slots for {} tokens",
              row_slot.size(), T);
  GRAFT_CHECK(!ep.driven() || ep.rank() == 0, "moe_experts_sharded: rank {} of a driven expert group runs no model", ep.rank());
  if (ep.driven() && lora)  // the workers rebuild each slot's adapter from its origin
    for (size_t s = 0; s < lora->gate.size(); ++s) {
      const bool has = std::any_of(lora->gate[s].begin(), lora->gate[s].end(), [](auto* f) { return f != nullptr; }) ||
                       std::any_of(lora->up[s].begin(), lora->up[s].end(), [](auto* f) { return f != nullptr; }) ||
                       std::any_of(lora->down[s].begin(), lora->down[s].end(), [](auto* f) { return f != nullptr; });
      GRAFT_CHECK_FIX(!has || (s < adapter_origins.size() && !adapter_origins[s].empty()),
                      "serve adapters loaded from PEFT directories (or combinations of them) when experts are sharded",
                      "adapter slot {} has expert LoRA but no origin the other ranks can load it from", s);
    }
  const Tensor xh = host_f32(be, x), wh = host_f32(be, weights);
  const Tensor idh = ids.device().is_cpu() ? ids.contiguous() : be.to_host(ids);
  const int32_t* id = idh.data<int32_t>();
  const float* wp = wh.data<float>();
  const float* xp = xh.data<float>();
  // This rank's rows in (expert, token, slot) order, so each owner's block is contiguous.
  std::vector<int32_t> order(static_cast<size_t>(T * k));
  for (int64_t f = 0; f < T * k; ++f) {
    GRAFT_CHECK(id[f] >= 0 && id[f] < E, "moe_experts_sharded: routed expert {} is outside [0, {})", id[f], E);
    order[static_cast<size_t>(f)] = static_cast<int32_t>(f);
  }
  std::stable_sort(order.begin(), order.end(), [id](int32_t a, int32_t b) { return id[a] < id[b]; });
  std::vector<std::string> heads(static_cast<size_t>(P)), rows(static_cast<size_t>(P));
  std::vector<std::vector<int32_t>> sent(static_cast<size_t>(P));  // flat index of each row sent to r
  for (int32_t f : order) {
    const int r = expert_owner(id[f], E, P);
    const RowHead h{id[f], row_slot.empty() ? -1 : row_slot[static_cast<size_t>(f / k)], wp[f]};
    append(heads[static_cast<size_t>(r)], &h, 1);
    append(rows[static_cast<size_t>(r)], xp + (f / k) * H, static_cast<size_t>(H));
    sent[static_cast<size_t>(r)].push_back(f);
  }
  std::vector<std::string> send(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r)
    send[static_cast<size_t>(r)] = make_block(layer, adapter_origins, heads[static_cast<size_t>(r)], rows[static_cast<size_t>(r)],
                                              static_cast<int64_t>(sent[static_cast<size_t>(r)].size()));
  const std::vector<std::string> got = ep.exchange(send);  // the parsed blocks point into it
  const std::vector<std::string> back = ep.exchange(run_owned_rows(be, ep, parse_all(got, H), H, experts, lora, scale_input));

  // Origin side: each row's weighted expert output, summed per token in slot order.
  Tensor res = Tensor::empty({std::max<int64_t>(T * k, 1), H}, DType::F32);
  for (int r = 0; r < P; ++r) {
    const auto& fl = sent[static_cast<size_t>(r)];
    const std::string& b = back[static_cast<size_t>(r)];
    GRAFT_CHECK(b.size() == fl.size() * static_cast<size_t>(H) * sizeof(float),
                "moe_experts_sharded: rank {} returned {} bytes for {} rows", r, b.size(), fl.size());
    for (size_t i = 0; i < fl.size(); ++i)
      std::memcpy(res.data<float>() + fl[i] * H, b.data() + i * static_cast<size_t>(H) * sizeof(float),
                  static_cast<size_t>(H) * sizeof(float));
  }
  Tensor oh = Tensor::zeros({T, H}, DType::F32);
  float* o = oh.data<float>();
  const float* rp = res.data<float>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t h = 0; h < H; ++h) o[t * H + h] += rp[(t * k + j) * H + h];
  out = be.to_device(oh, be.activation_dtype());
}

int64_t serve_expert_rows(const Model& m, Backend& be, ExpertParallel& ep,
                          const std::function<const LoraSource*(const std::string& origin)>& adapter) {
  GRAFT_CHECK(ep.driven() && ep.rank() > 0, "serve_expert_rows: rank {} is not a worker of a driven expert group", ep.rank());
  const int P = ep.size();
  const int64_t H = m.config().hidden_size;
  const bool scale_input = family_spec(m.config()).scale_expert_input;
  const std::vector<std::string> idle(static_cast<size_t>(P), make_block(0, {}, {}, {}, 0));
  for (int64_t served = 0;; ++served) {
    const std::vector<std::string> got = ep.exchange(idle);
    const std::vector<Block> blocks = parse_all(got, H);
    const Block& lead = blocks[0];
    if (lead.head.layer == kStop) return served;
    for (int r = 1; r < P; ++r)
      GRAFT_CHECK(blocks[static_cast<size_t>(r)].head.rows == 0, "expert parallel: worker rank {} sent rows in a driven group", r);
    const int l = lead.head.layer;
    GRAFT_CHECK_FIX(l >= 0 && l < static_cast<int>(m.layers().size()) && m.layers()[static_cast<size_t>(l)].kind.moe,
                    "start every rank with the same model", "expert parallel: rank 0 sent rows of layer {}, not a MoE layer here", l);
    const ExpertWeights& ex = m.layers()[static_cast<size_t>(l)].moe.experts;
    std::vector<const LoraSource*> slots;
    for (const std::string& o : lead.origins) slots.push_back(o.empty() ? nullptr : adapter(o));
    bool any = false;
    const ExpertLora el = expert_lora(slots, l, ex.num_experts(), any);
    ep.exchange(run_owned_rows(be, ep, blocks, H, ex, any ? &el : nullptr, scale_input));
  }
}

void stop_expert_workers(ExpertParallel& ep) {
  GRAFT_CHECK(ep.driven() && ep.rank() == 0, "stop_expert_workers: rank {} does not drive its expert group", ep.rank());
  const int P = ep.size();
  ep.exchange(std::vector<std::string>(static_cast<size_t>(P), make_block(kStop, {}, {}, {}, 0)));
}

ExpertLora expert_lora(std::span<const LoraSource* const> adapters, int layer, int64_t num_experts, bool& any) {
  ExpertLora el;
  for (const LoraSource* a : adapters) {
    const auto E = static_cast<size_t>(num_experts);
    std::vector<const LoraFactors*> g(E), u(E), d(E);
    for (size_t e = 0; a && e < E; ++e) {
      g[e] = a->find_expert(layer, ExpertProj::Gate, static_cast<int>(e));
      u[e] = a->find_expert(layer, ExpertProj::Up, static_cast<int>(e));
      d[e] = a->find_expert(layer, ExpertProj::Down, static_cast<int>(e));
      any |= g[e] || u[e] || d[e];
    }
    el.gate.push_back(std::move(g));
    el.up.push_back(std::move(u));
    el.down.push_back(std::move(d));
  }
  return el;
}

void Model::set_expert_parallel(std::shared_ptr<ExpertParallel> ep) {
  if (ep) {
    GRAFT_CHECK_FIX(ep->size() == shard_count_ && ep->rank() == shard_rank_,
                    "load the model with LoadOptions::expert_shard_rank / expert_shard_count equal to the expert group's "
                    "rank and size",
                    "the model holds expert shard {} of {}, but the expert group is rank {} of {}", shard_rank_,
                    shard_count_, ep->rank(), ep->size());
    GRAFT_CHECK_FIX(cfg_.moe.num_experts >= ep->size(), "use at most as many expert-parallel ranks as the model has experts",
                    "{} expert-parallel ranks for a model with {} routed experts per layer", ep->size(),
                    cfg_.moe.num_experts);
  } else {
    GRAFT_CHECK(shard_count_ == 1, "a model holding expert shard {} of {} needs its expert group", shard_rank_,
                shard_count_);
  }
  ep_ = std::move(ep);
}

}  // namespace graft::model
