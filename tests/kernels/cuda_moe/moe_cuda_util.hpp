// Helpers shared by the CUDA MoE test and benchmark: device buffers, bf16 conversion, NF4 expert
// stacks (per-expert bitsandbytes quantization, concatenated in the layout graft::cuda::moe reads).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "graft/cuda/moe.hpp"
#include "graft/dtype.hpp"
#include "graft/quant/nf4.hpp"
#include "../cuda_common/cuda_test_util.hpp"

namespace graft::testing::moe {

// cuda_ok, Dev, randn, to_bf16 / from_bf16, rel.
using namespace cudatest;

// E experts [rows, cols], quantized one by one; `ref` gets the dequantized weights rounded to bf16
// (what the kernels' tiles hold).
struct Nf4Stack {
  int E = 0;
  int64_t rows = 0, cols = 0;
  bool dq = false;
  Dev<uint8_t> packed, absmax_q;
  Dev<float> absmax, nested, offset, dynmap;
  std::vector<float> ref;  // [E, rows, cols]
  cuda::moe::Nf4Experts view() const {
    cuda::moe::Nf4Experts w;
    w.packed = packed.p;
    w.absmax = dq ? nullptr : absmax.p;
    w.absmax_q = dq ? absmax_q.p : nullptr;
    w.nested_absmax = dq ? nested.p : nullptr;
    w.nested_offset = dq ? offset.p : nullptr;
    w.dynamic_map = dq ? dynmap.p : nullptr;
    w.rows = rows;
    w.cols = cols;
    return w;
  }
};

inline Nf4Stack make_nf4_stack(int E, int64_t rows, int64_t cols, bool dq, uint32_t seed, float sd, bool want_ref = true) {
  Nf4Stack s;
  s.E = E;
  s.rows = rows;
  s.cols = cols;
  s.dq = dq;
  const int64_t per = rows * cols;
  std::vector<nf4::QuantizedWeight> q(static_cast<size_t>(E));
  const unsigned nt = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> th;
  for (unsigned w = 0; w < nt; ++w)
    th.emplace_back([&, w] {
      for (int e = static_cast<int>(w); e < E; e += static_cast<int>(nt)) {
        const auto v = randn(static_cast<size_t>(per), seed + static_cast<uint32_t>(e) * 7919u, sd);
        q[static_cast<size_t>(e)] = nf4::quantize(std::span<const float>(v), Dims{rows, cols}, dq);
      }
    });
  for (auto& t : th) t.join();
  const int64_t nb = per / 64, nnb = (nb + 255) / 256;
  std::vector<uint8_t> packed(static_cast<size_t>(E * per / 2)), aq;
  std::vector<float> am, nested, offset;
  for (int e = 0; e < E; ++e) {
    const auto& qe = q[static_cast<size_t>(e)];
    std::memcpy(packed.data() + e * per / 2, qe.packed.data(), static_cast<size_t>(per / 2));
    if (dq) {
      aq.insert(aq.end(), qe.absmax_q.begin(), qe.absmax_q.end());
      nested.insert(nested.end(), qe.nested_absmax.begin(), qe.nested_absmax.end());
      if (static_cast<int64_t>(qe.nested_absmax.size()) != nnb) throw std::runtime_error("unexpected nested size");
      offset.push_back(qe.nested_offset);
    } else {
      am.insert(am.end(), qe.absmax.begin(), qe.absmax.end());
    }
  }
  s.packed = Dev<uint8_t>(packed);
  if (dq) {
    s.absmax_q = Dev<uint8_t>(aq);
    s.nested = Dev<float>(nested);
    s.offset = Dev<float>(offset);
    const auto& m = nf4::dynamic_map_signed();
    s.dynmap = Dev<float>(std::vector<float>(m.begin(), m.end()));
  } else {
    s.absmax = Dev<float>(am);
  }
  if (want_ref) {
    s.ref.resize(static_cast<size_t>(E * per));
    for (int e = 0; e < E; ++e) {
      nf4::dequantize(q[static_cast<size_t>(e)], std::span<float>(s.ref.data() + e * per, static_cast<size_t>(per)));
      for (int64_t i = 0; i < per; ++i) {
        float& x = s.ref[static_cast<size_t>(e * per + i)];
        x = bf16_to_f32(f32_to_bf16(x));
      }
    }
  }
  return s;
}

// Device plan buffers for n rows, E experts.
struct DevPlan {
  Dev<int32_t> order, pos, counts, offsets, tile_offsets;
  Dev<uint8_t> ws;
  DevPlan(int64_t n, int E)
      : order(static_cast<size_t>(n)), pos(static_cast<size_t>(n)), counts(static_cast<size_t>(E)),
        offsets(static_cast<size_t>(E) + 1), tile_offsets(static_cast<size_t>(E) + 1),
        ws(cuda::moe::plan_workspace_bytes(n, E)) {}
  cuda::moe::Plan plan() const { return {order.p, pos.p, counts.p, offsets.p, tile_offsets.p}; }
  void poison() {
    order.poison();
    pos.poison();
    counts.poison();
    offsets.poison();
    tile_offsets.poison();
  }
};

}  // namespace graft::testing::moe
