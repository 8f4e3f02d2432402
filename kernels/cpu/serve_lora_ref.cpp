// CPU reference of the multi-LoRA serving ops (graft/cpu/serve_ref.hpp): per-row adapter keys,
// fused slices, mixed ranks, the grouping plan and the MoE-LoRA virtual-expert keys. Plain loops
// with double accumulation: this is the oracle of kernels/cuda/{sgmv,bgmv}_*.cu, lora_plan.cu and
// moe_lora_keys.cu, and is itself checked against cpu::lora_acc (tests/kernels/cpu_serve).
#include <algorithm>
#include <vector>

#include "graft/cpu/serve_ref.hpp"
#include "graft/dtype.hpp"
#include "graft/error.hpp"

namespace graft::cpu::serve {
namespace {

void check_table(std::span<const LoraFactorsRef> table, int num_keys, int num_slices, const char* who) {
  GRAFT_CHECK(num_keys >= 1 && num_slices >= 1, "{}: num_keys = {} and num_slices = {} must be >= 1", who, num_keys,
              num_slices);
  GRAFT_CHECK(table.size() == static_cast<size_t>(num_keys) * static_cast<size_t>(num_slices),
              "{}: table has {} entries for {} keys x {} slices", who, table.size(), num_keys, num_slices);
}

const LoraFactorsRef* active(std::span<const LoraFactorsRef> table, std::span<const int32_t> row_key, int64_t t,
                             int num_keys, int num_slices, int slice) {
  const int32_t key = row_key[static_cast<size_t>(t)];
  if (key < 0 || key >= num_keys) return nullptr;
  const LoraFactorsRef& f = table[static_cast<size_t>(key) * static_cast<size_t>(num_slices) + static_cast<size_t>(slice)];
  if (f.rank <= 0 || !f.a || !f.b) return nullptr;
  return &f;
}

// xa[j] = Σ_k x[k]·A[j, k] in double
void shrink_row(const float* x, int64_t K, const LoraFactorsRef& f, std::vector<double>& xa) {
  xa.assign(static_cast<size_t>(f.rank), 0.0);
  for (int j = 0; j < f.rank; ++j) {
    const float* a = f.a + static_cast<int64_t>(j) * K;
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[k]) * a[k];
    xa[static_cast<size_t>(j)] = s;
  }
}

}  // namespace

void multi_lora_acc(const float* x, int64_t T, int64_t K, int64_t ldx, std::span<const int32_t> row_key, int num_keys,
                    std::span<const LoraFactorsRef> table, std::span<const LoraSliceRef> slices, float* y, int64_t ldy,
                    bool bf16_intermediate) {
  const int ns = static_cast<int>(slices.size());
  check_table(table, num_keys, ns, "multi_lora_acc");
  GRAFT_CHECK(static_cast<int64_t>(row_key.size()) == T, "multi_lora_acc: {} row keys for {} rows", row_key.size(), T);
  GRAFT_CHECK(ldx >= K, "multi_lora_acc: ldx = {} < K = {}", ldx, K);
  for (const auto& s : slices)
    GRAFT_CHECK(s.y_offset >= 0 && s.y_offset + s.n <= ldy, "multi_lora_acc: slice [{}, {}) exceeds ldy = {}",
                s.y_offset, s.y_offset + s.n, ldy);
  std::vector<double> xa;
  for (int64_t t = 0; t < T; ++t) {
    for (int i = 0; i < ns; ++i) {
      const LoraFactorsRef* f = active(table, row_key, t, num_keys, ns, i);
      if (!f) continue;
      shrink_row(x + t * ldx, K, *f, xa);
      for (auto& v : xa) {
        v *= f->scale;
        if (bf16_intermediate) v = bf16_to_f32(f32_to_bf16(static_cast<float>(v)));
      }
      float* yr = y + t * ldy + slices[static_cast<size_t>(i)].y_offset;
      for (int64_t n = 0; n < slices[static_cast<size_t>(i)].n; ++n) {
        const float* b = f->b + n * f->rank;
        double s = 0;
        for (int j = 0; j < f->rank; ++j) s += xa[static_cast<size_t>(j)] * b[j];
        yr[n] = static_cast<float>(yr[n] + s);
      }
    }
  }
}

void lora_shrink(const float* x, int64_t T, int64_t K, int64_t ldx, std::span<const int32_t> row_key, int num_keys,
                 std::span<const LoraFactorsRef> table, int num_slices, int64_t ldv, float* v) {
  check_table(table, num_keys, num_slices, "lora_shrink");
  GRAFT_CHECK(static_cast<int64_t>(row_key.size()) == T, "lora_shrink: {} row keys for {} rows", row_key.size(), T);
  std::vector<double> xa;
  for (int i = 0; i < num_slices; ++i)
    for (int64_t t = 0; t < T; ++t) {
      const LoraFactorsRef* f = active(table, row_key, t, num_keys, num_slices, i);
      if (!f) continue;
      GRAFT_CHECK(f->rank <= ldv, "lora_shrink: rank {} exceeds ldv = {}", f->rank, ldv);
      shrink_row(x + t * ldx, K, *f, xa);
      for (int j = 0; j < f->rank; ++j) v[(static_cast<int64_t>(i) * T + t) * ldv + j] = static_cast<float>(xa[static_cast<size_t>(j)]);
    }
}

LoraPlanRef lora_plan(std::span<const int32_t> keys, int num_keys, int tile_m) {
  GRAFT_CHECK(num_keys >= 1 && tile_m >= 1, "lora_plan: num_keys = {}, tile_m = {} must be >= 1", num_keys, tile_m);
  const size_t nb = static_cast<size_t>(num_keys) + 1;
  auto bucket = [&](int32_t k) { return (k >= 0 && k < num_keys) ? static_cast<size_t>(k) : nb - 1; };
  LoraPlanRef p;
  p.counts.assign(nb, 0);
  for (int32_t k : keys) ++p.counts[bucket(k)];
  p.offsets.assign(nb + 1, 0);
  p.tile_offsets.assign(nb, 0);
  for (size_t b = 0; b < nb; ++b) {
    p.offsets[b + 1] = p.offsets[b] + p.counts[b];
    if (b + 1 < nb) p.tile_offsets[b + 1] = p.tile_offsets[b] + (p.counts[b] + tile_m - 1) / tile_m;
  }
  std::vector<int32_t> cursor(p.offsets.begin(), p.offsets.end() - 1);
  p.sorted_rows.assign(keys.size(), -1);
  for (size_t i = 0; i < keys.size(); ++i) p.sorted_rows[static_cast<size_t>(cursor[bucket(keys[i])]++)] = static_cast<int32_t>(i);
  return p;
}

std::vector<int32_t> moe_lora_keys(std::span<const int32_t> order, std::span<const int32_t> expert_ids,
                                   std::span<const int32_t> token_slot, int k, int E, int num_slots) {
  GRAFT_CHECK(k >= 1 && E >= 1 && num_slots >= 1, "moe_lora_keys: k = {}, E = {}, num_slots = {} must be >= 1", k, E,
              num_slots);
  GRAFT_CHECK(order.size() == expert_ids.size() && order.size() == token_slot.size() * static_cast<size_t>(k),
              "moe_lora_keys: order {} / expert_ids {} rows for {} tokens x top-{}", order.size(), expert_ids.size(),
              token_slot.size(), k);
  const int64_t n = static_cast<int64_t>(order.size());
  std::vector<int32_t> keys(order.size(), -1);
  for (int64_t p = 0; p < n; ++p) {
    const int32_t f = order[static_cast<size_t>(p)];
    if (f < 0 || f >= n) continue;
    const int32_t slot = token_slot[static_cast<size_t>(f / k)], e = expert_ids[static_cast<size_t>(f)];
    if (slot >= 0 && slot < num_slots && e >= 0 && e < E) keys[static_cast<size_t>(p)] = slot * E + e;
  }
  return keys;
}

}  // namespace graft::cpu::serve
