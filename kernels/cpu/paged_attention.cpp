// CPU reference of paged attention (graft/cpu/serve_ref.hpp): decode (GQA), prefill of a chunk of
// new tokens over the cached prefix, and DeepSeek MLA decode over a paged latent cache. Each
// sequence's keys are read through its block table one position at a time; scores, softmax and
// the weighted sums are accumulated in double. The oracle of kernels/cuda/paged_*.cu, itself
// checked against cpu::attention / cpu::mla_attention_absorbed on gathered caches (tests/kernels/cpu_serve).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "graft/cpu/serve_ref.hpp"
#include "graft/error.hpp"

namespace graft::cpu::serve {
namespace {

void check_cache(const PagedKvRef& c, const char* who) {
  GRAFT_CHECK(c.k && c.v && c.num_blocks >= 1 && c.block_size >= 1 && c.kv_heads >= 1 && c.head_dim >= 1,
              "{}: cache needs k, v and positive num_blocks / block_size / kv_heads / head_dim", who);
}

// Slot index (page·block_size + i) of position j of sequence s; checks the page.
int64_t slot_of(std::span<const int32_t> block_table, int max_blocks, int s, int64_t j, int block_size,
                int64_t num_blocks, const char* who) {
  const int64_t bi = j / block_size;
  GRAFT_CHECK(bi < max_blocks, "{}: position {} of sequence {} needs block {} of {}", who, j, s, bi, max_blocks);
  const int32_t page = block_table[static_cast<size_t>(static_cast<int64_t>(s) * max_blocks + bi)];
  GRAFT_CHECK(page >= 0 && page < num_blocks, "{}: sequence {} block {} maps to page {} outside [0, {})", who, s, bi,
              page, num_blocks);
  return static_cast<int64_t>(page) * block_size + j % block_size;
}

// out[0..dv) (=) Σ_j softmax(scores)_j · value_j over `n` keys; n == 0 -> zeros.
template <class ScoreFn, class ValueFn>
void softmax_combine(int64_t n, ScoreFn score, ValueFn value, int64_t dv, float* out) {
  if (n <= 0) {
    std::fill(out, out + dv, 0.0f);
    return;
  }
  std::vector<double> s(static_cast<size_t>(n));
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[static_cast<size_t>(j)] = score(j));
  double z = 0;
  for (auto& e : s) z += (e = std::exp(e - mx));
  std::vector<double> acc(static_cast<size_t>(dv), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const float* v = value(j);
    const double w = s[static_cast<size_t>(j)] / z;
    for (int64_t d = 0; d < dv; ++d) acc[static_cast<size_t>(d)] += w * v[d];
  }
  for (int64_t d = 0; d < dv; ++d) out[d] = static_cast<float>(acc[static_cast<size_t>(d)]);
}

}  // namespace

void paged_decode_attention(const float* q, int num_seqs, int q_heads, const PagedKvRef& c,
                            std::span<const int32_t> block_table, int max_blocks, std::span<const int32_t> context_lens,
                            float scale, float* out) {
  check_cache(c, "paged_decode_attention");
  GRAFT_CHECK(q_heads >= 1 && q_heads % c.kv_heads == 0, "paged_decode_attention: q_heads = {} vs kv_heads = {}",
              q_heads, c.kv_heads);
  GRAFT_CHECK(context_lens.size() == static_cast<size_t>(num_seqs) &&
                  block_table.size() == static_cast<size_t>(num_seqs) * static_cast<size_t>(max_blocks),
              "paged_decode_attention: {} context lengths / {} block-table entries for {} sequences x {} blocks",
              context_lens.size(), block_table.size(), num_seqs, max_blocks);
  const int64_t D = c.head_dim, G = q_heads / c.kv_heads;
  for (int s = 0; s < num_seqs; ++s) {
    const int64_t ctx = context_lens[static_cast<size_t>(s)];
    std::vector<int64_t> slots(static_cast<size_t>(std::max<int64_t>(ctx, 0)));
    for (int64_t j = 0; j < ctx; ++j)
      slots[static_cast<size_t>(j)] = slot_of(block_table, max_blocks, s, j, c.block_size, c.num_blocks, "paged_decode_attention");
    for (int h = 0; h < q_heads; ++h) {
      const float* qh = q + (static_cast<int64_t>(s) * q_heads + h) * D;
      const int64_t kvh = h / G;
      auto row = [&](const float* base, int64_t j) { return base + (slots[static_cast<size_t>(j)] * c.kv_heads + kvh) * D; };
      softmax_combine(
          ctx,
          [&](int64_t j) {
            const float* k = row(c.k, j);
            double d = 0;
            for (int64_t i = 0; i < D; ++i) d += static_cast<double>(qh[i]) * k[i];
            return d * scale;
          },
          [&](int64_t j) { return row(c.v, j); }, D, out + (static_cast<int64_t>(s) * q_heads + h) * D);
    }
  }
}

void paged_prefill_attention(const float* q, std::span<const int32_t> query_start, int q_heads, const PagedKvRef& c,
                             std::span<const int32_t> block_table, int max_blocks, std::span<const int32_t> context_lens,
                             float scale, float* out) {
  check_cache(c, "paged_prefill_attention");
  GRAFT_CHECK(q_heads >= 1 && q_heads % c.kv_heads == 0, "paged_prefill_attention: q_heads = {} vs kv_heads = {}",
              q_heads, c.kv_heads);
  GRAFT_CHECK(!query_start.empty() && query_start.front() == 0, "paged_prefill_attention: query_start must start at 0");
  const int num_seqs = static_cast<int>(query_start.size()) - 1;
  GRAFT_CHECK(context_lens.size() == static_cast<size_t>(num_seqs) &&
                  block_table.size() == static_cast<size_t>(num_seqs) * static_cast<size_t>(max_blocks),
              "paged_prefill_attention: {} context lengths / {} block-table entries for {} sequences x {} blocks",
              context_lens.size(), block_table.size(), num_seqs, max_blocks);
  const int64_t D = c.head_dim, G = q_heads / c.kv_heads;
  for (int s = 0; s < num_seqs; ++s) {
    const int64_t q0 = query_start[static_cast<size_t>(s)], qlen = query_start[static_cast<size_t>(s) + 1] - q0;
    const int64_t ctx = context_lens[static_cast<size_t>(s)];
    GRAFT_CHECK(qlen >= 0 && qlen <= ctx, "paged_prefill_attention: sequence {} has {} new tokens but context {}", s,
                qlen, ctx);
    std::vector<int64_t> slots(static_cast<size_t>(ctx));
    for (int64_t j = 0; j < ctx; ++j)
      slots[static_cast<size_t>(j)] = slot_of(block_table, max_blocks, s, j, c.block_size, c.num_blocks, "paged_prefill_attention");
    for (int64_t i = 0; i < qlen; ++i) {
      const int64_t pos = ctx - qlen + i;
      for (int h = 0; h < q_heads; ++h) {
        const float* qh = q + ((q0 + i) * q_heads + h) * D;
        const int64_t kvh = h / G;
        auto row = [&](const float* base, int64_t j) { return base + (slots[static_cast<size_t>(j)] * c.kv_heads + kvh) * D; };
        softmax_combine(
            pos + 1,
            [&](int64_t j) {
              const float* k = row(c.k, j);
              double d = 0;
              for (int64_t e = 0; e < D; ++e) d += static_cast<double>(qh[e]) * k[e];
              return d * scale;
            },
            [&](int64_t j) { return row(c.v, j); }, D, out + ((q0 + i) * q_heads + h) * D);
      }
    }
  }
}

void paged_mla_decode(const float* q_abs, const float* q_pe, int num_seqs, int heads, int L, int dr,
                      const float* c_cache, int64_t c_stride, const float* pe_cache, int64_t pe_stride,
                      int64_t num_blocks, int block_size, std::span<const int32_t> block_table, int max_blocks,
                      std::span<const int32_t> context_lens, float scale, float* out) {
  GRAFT_CHECK(c_cache && pe_cache && c_stride >= L && pe_stride >= dr && L >= 1 && dr >= 0 && block_size >= 1,
              "paged_mla_decode: bad cache description (L = {}, dr = {}, strides {} / {})", L, dr, c_stride, pe_stride);
  GRAFT_CHECK(context_lens.size() == static_cast<size_t>(num_seqs) &&
                  block_table.size() == static_cast<size_t>(num_seqs) * static_cast<size_t>(max_blocks),
              "paged_mla_decode: {} context lengths / {} block-table entries for {} sequences x {} blocks",
              context_lens.size(), block_table.size(), num_seqs, max_blocks);
  for (int s = 0; s < num_seqs; ++s) {
    const int64_t ctx = context_lens[static_cast<size_t>(s)];
    std::vector<int64_t> slots(static_cast<size_t>(std::max<int64_t>(ctx, 0)));
    for (int64_t j = 0; j < ctx; ++j)
      slots[static_cast<size_t>(j)] = slot_of(block_table, max_blocks, s, j, block_size, num_blocks, "paged_mla_decode");
    for (int h = 0; h < heads; ++h) {
      const int64_t sh = static_cast<int64_t>(s) * heads + h;
      const float* qa = q_abs + sh * L;
      const float* qp = q_pe + sh * dr;
      softmax_combine(
          ctx,
          [&](int64_t j) {
            const float* c = c_cache + slots[static_cast<size_t>(j)] * c_stride;
            const float* pe = pe_cache + slots[static_cast<size_t>(j)] * pe_stride;
            double d = 0;
            for (int i = 0; i < L; ++i) d += static_cast<double>(qa[i]) * c[i];
            for (int i = 0; i < dr; ++i) d += static_cast<double>(qp[i]) * pe[i];
            return d * scale;
          },
          [&](int64_t j) { return c_cache + slots[static_cast<size_t>(j)] * c_stride; }, L, out + sh * L);
    }
  }
}

}  // namespace graft::cpu::serve
