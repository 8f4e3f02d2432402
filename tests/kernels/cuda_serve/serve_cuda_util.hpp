// Helpers shared by the CUDA serving tests and bench_serve_cuda: device buffers, bf16 conversion,
// adapter pools (A / B placed at arbitrary offsets of one device allocation, like paged adapter
// memory), the per-(key, slice) device table, batch popularity generators and paged KV pools.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "graft/cpu/serve_ref.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/cuda/paged_attention.hpp"
#include "graft/cuda/serve_lora.hpp"
#include "graft/dtype.hpp"
#include "../cuda_common/cuda_test_util.hpp"

namespace graft::testing::serve {

// cuda_ok, Dev, randn, to_bf16 / from_bf16, rel.
using namespace cudatest;

// ---------------------------------------------------------------- adapters
// One adapter: per slice A [r, K], B [N_i, r] (host f32 rounded to bf16) living in a device pool.
struct HostAdapter {
  std::vector<int> rank;  // per slice (0 = slice not adapted)
  float scale = 1.0f;
  std::vector<std::vector<float>> a, b;
  std::vector<size_t> a_off, b_off;  // element offsets into the pool
};

// All adapters of a test in ONE device allocation at scattered offsets (paged-memory stand-in).
// `misalign` shifts one adapter by one element so that its rows are not 16-byte aligned.
struct AdapterPool {
  std::vector<HostAdapter> ads;
  Dev<uint16_t> mem;
  int64_t K = 0;
  std::vector<int64_t> n;  // slice widths
  AdapterPool(int count, int64_t K_, const std::vector<int64_t>& slice_n, const std::vector<int>& ranks, uint32_t seed,
              bool misalign = false, bool skip_some_slices = true)
      : K(K_), n(slice_n) {
    std::mt19937 rng(seed);
    std::vector<uint16_t> host;
    auto place = [&](std::vector<float>& v, size_t gap) {
      size_t off = (host.size() + gap + 7) / 8 * 8;  // 16-byte aligned
      host.resize(off, 0x7fc0);                      // bf16 NaN between adapters: reading outside shows
      auto bits = to_bf16(v);
      host.insert(host.end(), bits.begin(), bits.end());
      return off;
    };
    for (int i = 0; i < count; ++i) {
      HostAdapter h;
      h.scale = 0.5f + 0.5f * static_cast<float>(i % 4);
      for (size_t s = 0; s < slice_n.size(); ++s) {
        int r = ranks[(static_cast<size_t>(i) + 2 * s) % ranks.size()];
        if (skip_some_slices && slice_n.size() > 1 && (i + static_cast<int>(s)) % 7 == 6) r = 0;  // unadapted slice
        h.rank.push_back(r);
        auto a = randn(static_cast<size_t>(r) * static_cast<size_t>(K), seed + 100u * static_cast<uint32_t>(i) + static_cast<uint32_t>(s),
                       1.0f / std::sqrt(static_cast<float>(K)));
        auto b = randn(static_cast<size_t>(slice_n[s] * r), seed + 100u * static_cast<uint32_t>(i) + 50u + static_cast<uint32_t>(s),
                       1.0f / std::sqrt(static_cast<float>(std::max(r, 1))));
        size_t ao = place(a, rng() % 64), bo = place(b, rng() % 64);
        if (misalign && i == 1) {  // move this adapter's A and B by one element
          host.insert(host.begin() + static_cast<int64_t>(ao), uint16_t{0});
          bo += 1;
          ao += 1;
        }
        h.a.push_back(std::move(a));
        h.b.push_back(std::move(b));
        h.a_off.push_back(ao);
        h.b_off.push_back(bo);
      }
      ads.push_back(std::move(h));
    }
    host.resize(host.size() + 64, 0x7fc0);
    mem = Dev<uint16_t>(host);
  }
};

// Device LoRA table for num_keys keys, filled from a key -> adapter map (-1 = empty key).
struct DevTable {
  int num_keys = 0, ns = 0;
  Dev<const uint16_t*> a, b;
  Dev<int32_t> rank;
  Dev<float> scale;
  std::vector<const uint16_t*> ha, hb;
  std::vector<int32_t> hr;
  std::vector<float> hs;
  DevTable(int keys, int slices)
      : num_keys(keys), ns(slices), a(static_cast<size_t>(keys * slices)), b(static_cast<size_t>(keys * slices)),
        rank(static_cast<size_t>(keys * slices)), scale(static_cast<size_t>(keys * slices)) {}
  void fill(const AdapterPool& pool, const std::vector<int>& key_adapter) {
    const size_t m = static_cast<size_t>(num_keys * ns);
    ha.assign(m, nullptr);
    hb.assign(m, nullptr);
    hr.assign(m, 0);
    hs.assign(m, 1.0f);
    for (int k = 0; k < num_keys; ++k) {
      const int ai = key_adapter[static_cast<size_t>(k)];
      if (ai < 0) continue;
      const auto& ad = pool.ads[static_cast<size_t>(ai)];
      for (int s = 0; s < ns; ++s) {
        const size_t e = static_cast<size_t>(k * ns + s);
        hr[e] = ad.rank[static_cast<size_t>(s)];
        hs[e] = ad.scale;
        ha[e] = pool.mem.p + ad.a_off[static_cast<size_t>(s)];
        hb[e] = pool.mem.p + ad.b_off[static_cast<size_t>(s)];
      }
    }
  }
  void upload(cudaStream_t st = nullptr) {
    cuda_ok(cudaMemcpyAsync(a.p, ha.data(), ha.size() * sizeof(void*), cudaMemcpyHostToDevice, st), "table a");
    cuda_ok(cudaMemcpyAsync(b.p, hb.data(), hb.size() * sizeof(void*), cudaMemcpyHostToDevice, st), "table b");
    rank.upload_async(hr, st);
    scale.upload_async(hs, st);
  }
  cuda::serve::LoraTable view() const { return {a.p, b.p, rank.p, scale.p, num_keys}; }
  // CPU reference table (host copies of the same bf16-rounded factors).
  static std::vector<cpu::serve::LoraFactorsRef> ref(const AdapterPool& pool, const std::vector<int>& key_adapter, int ns) {
    std::vector<cpu::serve::LoraFactorsRef> t(key_adapter.size() * static_cast<size_t>(ns));
    for (size_t k = 0; k < key_adapter.size(); ++k) {
      if (key_adapter[k] < 0) continue;
      const auto& ad = pool.ads[static_cast<size_t>(key_adapter[k])];
      for (int s = 0; s < ns; ++s)
        t[k * static_cast<size_t>(ns) + static_cast<size_t>(s)] = {ad.a[static_cast<size_t>(s)].data(), ad.b[static_cast<size_t>(s)].data(),
                                                                   ad.rank[static_cast<size_t>(s)], ad.scale};
    }
    return t;
  }
};

// ---------------------------------------------------------------- batch popularity (Punica's four)
enum class Popularity { Distinct, Uniform, Zipf, Identical };  // Zipf: exponent 1.5
inline const char* name_of(Popularity p) {
  switch (p) {
    case Popularity::Distinct: return "distinct";
    case Popularity::Uniform: return "uniform";
    case Popularity::Zipf: return "zipf15";
    default: return "identical";
  }
}
// Adapter index per row in [0, num_adapters): distinct (row t -> t mod n), uniform over ceil(sqrt(T))
// adapters, Zipf(1.5) over n, identical (all 0).
inline std::vector<int> popularity_rows(Popularity pop, int64_t T, int num_adapters, std::mt19937& rng) {
  std::vector<int> a(static_cast<size_t>(T), 0);
  if (pop == Popularity::Distinct) {
    for (int64_t t = 0; t < T; ++t) a[static_cast<size_t>(t)] = static_cast<int>(t % num_adapters);
  } else if (pop == Popularity::Uniform) {
    const int m = std::min(num_adapters, static_cast<int>(std::ceil(std::sqrt(static_cast<double>(T)))));
    for (auto& v : a) v = static_cast<int>(rng() % static_cast<uint32_t>(m));
  } else if (pop == Popularity::Zipf) {
    std::vector<double> w(static_cast<size_t>(num_adapters));
    for (int i = 0; i < num_adapters; ++i) w[static_cast<size_t>(i)] = 1.0 / std::pow(i + 1.0, 1.5);
    std::discrete_distribution<int> d(w.begin(), w.end());
    for (auto& v : a) v = d(rng);
  }
  return a;
}

// ---------------------------------------------------------------- paged KV pools
// Pages shuffled over the pool; host f32 copy (bf16-rounded) for the CPU reference.
struct KvPool {
  int block_size = 0, row = 0, max_blocks = 0;  // row = elements per token slot (kv_heads·head_dim)
  int64_t num_blocks = 0;
  std::vector<float> hk, hv;
  Dev<uint16_t> k, v;
  std::vector<int32_t> table;
  KvPool(const std::vector<int32_t>& ctx, int bs, int row_elems, uint32_t seed, int max_blocks_cap = 0)
      : block_size(bs), row(row_elems) {
    int64_t need = 0;
    for (int32_t c : ctx) {
      max_blocks = std::max(max_blocks, (c + bs - 1) / bs);
      need += (c + bs - 1) / bs;
    }
    max_blocks = std::max({max_blocks, max_blocks_cap, 1});
    num_blocks = need + 5;
    hk = randn(static_cast<size_t>(num_blocks * bs * row_elems), seed);
    hv = randn(hk.size(), seed + 1);
    k = Dev<uint16_t>(to_bf16(hk));
    v = Dev<uint16_t>(to_bf16(hv));
    assign(ctx, seed + 2);
  }
  // New block tables for these context lengths (pages reshuffled; entries past a sequence stay -1).
  void assign(const std::vector<int32_t>& ctx, uint32_t seed) {
    std::vector<int32_t> pages(static_cast<size_t>(num_blocks));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(seed));
    table.assign(ctx.size() * static_cast<size_t>(max_blocks), -1);
    size_t next = 0;
    for (size_t s = 0; s < ctx.size(); ++s)
      for (int b = 0; b < (ctx[s] + block_size - 1) / block_size; ++b) {
        if (next >= pages.size()) throw std::runtime_error("KvPool: not enough pages");
        table[s * static_cast<size_t>(max_blocks) + static_cast<size_t>(b)] = pages[next++];
      }
  }
};

#define GRAFT_REQUIRE_GPU() \
  if (graft::cuda::device_count() == 0) GTEST_SKIP() << "no GPU: " << graft::cuda::no_device_reason()

}  // namespace graft::testing::serve
