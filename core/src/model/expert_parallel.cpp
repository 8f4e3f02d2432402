// Expert shards and the sharded inference MoE (expert_parallel.hpp).
#include "graft/model/expert_parallel.hpp"

#include "graft/model/model.hpp"

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

Tensor host_f32(Backend& be, const Tensor& t) {
  Tensor h = t.device().is_cpu() ? t : be.to_host(t);
  return h.dtype() == DType::F32 ? h.contiguous() : h.to(DType::F32);
}

// The wire record of one routed row (inference): expert, adapter slot, combine weight; then its x row.
struct RowHead {
  int32_t expert;
  int32_t slot;
  float w;
};

template <class T>
void append(std::string& s, const T* p, size_t n) {
  s.append(reinterpret_cast<const char*>(p), n * sizeof(T));
}

}  // namespace

void moe_experts_sharded(Backend& be, ExpertParallel& ep, const Tensor& x, const Tensor& ids, const Tensor& weights,
                         const ExpertWeights& experts, const ExpertLora* lora, std::span<const int32_t> row_slot,
                         bool scale_input, Tensor& out) {
  const int64_t T = x.size(0), H = x.size(1), E = experts.num_experts();
  const int64_t k = ids.ndim() == 2 ? ids.size(1) : (T ? ids.numel() / T : 0);
  const int P = ep.size();
  GRAFT_CHECK(ids.numel() == T * k && weights.numel() == T * k, "moe_experts_sharded: ids {} / weights {} for {} tokens",
              ids.describe(), weights.describe(), T);
  GRAFT_CHECK(!lora || row_slot.size() == static_cast<size_t>(T), "moe_experts_sharded: {} row slots for {} tokens",
              row_slot.size(), T);
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
  for (int r = 0; r < P; ++r) {
    const int64_t n = static_cast<int64_t>(sent[static_cast<size_t>(r)].size());
    append(send[static_cast<size_t>(r)], &n, 1);
    send[static_cast<size_t>(r)] += heads[static_cast<size_t>(r)];
    send[static_cast<size_t>(r)] += rows[static_cast<size_t>(r)];
  }
  const std::vector<std::string> got = ep.exchange(send);

  // Owner side: every received row is one (token, slot) of one of this rank's experts.
  std::vector<int64_t> n_from(static_cast<size_t>(P));
  int64_t n = 0;
  for (int r = 0; r < P; ++r) {
    const std::string& b = got[static_cast<size_t>(r)];
    GRAFT_CHECK(b.size() >= sizeof(int64_t), "moe_experts_sharded: rank {} sent a truncated block ({} bytes)", r, b.size());
    std::memcpy(&n_from[static_cast<size_t>(r)], b.data(), sizeof(int64_t));
    GRAFT_CHECK(static_cast<int64_t>(b.size()) ==
                    static_cast<int64_t>(sizeof(int64_t)) + n_from[static_cast<size_t>(r)] * static_cast<int64_t>(sizeof(RowHead) + H * sizeof(float)),
                "moe_experts_sharded: rank {} sent {} bytes for {} rows of width {} (do the ranks load the same model?)", r,
                b.size(), n_from[static_cast<size_t>(r)], H);
    n += n_from[static_cast<size_t>(r)];
  }
  std::vector<std::string> reply(static_cast<size_t>(P));
  if (n > 0) {
    Tensor xr = Tensor::empty({n, H}, DType::F32), ir = Tensor::empty({n, 1}, DType::I32), wr = Tensor::empty({n, 1}, DType::F32);
    std::vector<int32_t> slots(static_cast<size_t>(n));
    int64_t at = 0;
    for (int r = 0; r < P; ++r) {
      const char* b = got[static_cast<size_t>(r)].data() + sizeof(int64_t);
      const int64_t m = n_from[static_cast<size_t>(r)];
      for (int64_t i = 0; i < m; ++i, ++at) {
        RowHead h;
        std::memcpy(&h, b + i * sizeof(RowHead), sizeof h);
        GRAFT_CHECK(ep.owns(h.expert, E), "moe_experts_sharded: rank {} sent expert {}, which rank {} does not hold", r,
                    h.expert, ep.rank());
        ir.data<int32_t>()[at] = h.expert;
        wr.data<float>()[at] = h.w;
        slots[static_cast<size_t>(at)] = h.slot;
      }
      std::memcpy(xr.data<float>() + (at - m) * H, b + m * sizeof(RowHead), static_cast<size_t>(m * H) * sizeof(float));
    }
    Tensor yr = be.empty({n, H}, be.activation_dtype());
    const bool any_lora = lora && std::any_of(slots.begin(), slots.end(), [](int32_t s) { return s >= 0; });
    be.moe_experts(be.to_device(xr, be.activation_dtype()), be.to_device(ir, DType::I32), be.to_device(wr, DType::F32),
                   experts, any_lora ? lora : nullptr, any_lora ? std::span<const int32_t>(slots) : std::span<const int32_t>(),
                   scale_input, yr);
    const Tensor yh = host_f32(be, yr);
    at = 0;
    for (int r = 0; r < P; ++r) {
      const int64_t m = n_from[static_cast<size_t>(r)];
      append(reply[static_cast<size_t>(r)], yh.data<float>() + at * H, static_cast<size_t>(m * H));
      at += m;
    }
  }
  const std::vector<std::string> back = ep.exchange(reply);

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

}  // namespace graft::model

namespace graft::model {

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
