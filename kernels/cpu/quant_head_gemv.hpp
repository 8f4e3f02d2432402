// The part of q8_gemv and q6_gemv that does not depend on the weight format: the T and Int8 checks, the empty
// cases, x quantized once for the Int8 dot, and the split of the output rows over the thread pool.
#pragma once

#include <algorithm>
#include <cstdint>

#include "graft/cpu/q8_gemv.hpp"
#include "graft/error.hpp"
#include "graft/parallel.hpp"
#include "parallel_for.hpp"
#include "x_int8.hpp"

namespace graft::cpu {

inline constexpr int64_t kQuantHeadMaxT = 16;  // rows of x the decode kernels take
inline constexpr int64_t kQuantHeadRows = 16;  // output rows per parallel chunk

// y[T, N] (=) x[T, K] · Wᵀ for a weight whose own checks the caller made (`isa` already resolved for it).
// int8_ok: the layout suits the Int8 kernels, whose x blocks are `x_block` long and whose unsigned weight codes are
// q + `offset`. int8_rows(level, xq, n0, n1) runs the Int8 dot on output rows [n0, n1) at int8_dot_level's level;
// exact_rows(n0, n1) the exact product.
template <class Int8Rows, class ExactRows>
void quant_head_gemv(const char* what, const float* x, int64_t T, int64_t K, int64_t N, float* y, Nf4Isa isa,
                     Nf4Isa requested_isa, Q8Dot dot, bool int8_ok, int64_t x_block, int32_t offset,
                     Int8Rows&& int8_rows, ExactRows&& exact_rows) {
  GRAFT_CHECK(T >= 0 && T <= kQuantHeadMaxT, "{}: T = {} rows, at most {} (linear_q8 and linear_q6 take more)", what, T,
              kQuantHeadMaxT);
  GRAFT_CHECK(dot != Q8Dot::Int8 || q8_int8_dot_supported(requested_isa),
              "{}: Q8Dot::Int8 needs AVX2 (or AVX-512 VNNI) at the requested ISA, which this CPU lacks; use "
              "Q8Dot::Auto", what);
  if (dot == Q8Dot::Auto) dot = q8_dot_detect();
  if (T == 0 || N == 0) return;
  if (K == 0) {
    std::fill(y, y + T * N, 0.0f);
    return;
  }
  const int64_t chunks = (N + kQuantHeadRows - 1) / kQuantHeadRows;
  const bool parallel = graft::parallel_worth(T * N * K);
  const Nf4Isa int8 = dot == Q8Dot::Int8 && int8_ok ? int8_dot_level(isa) : Nf4Isa::Portable;
  if (int8 != Nf4Isa::Portable) {
    thread_local XInt8 buf;  // this (calling) thread's; the workers must see it through `xq`, not by name
    quantize_x(x, T, K, x_block, offset, buf);
    const XInt8& xq = buf;
    parallel_for(chunks, parallel, [&](int64_t c) {
      int8_rows(int8, xq, c * kQuantHeadRows, std::min(N, (c + 1) * kQuantHeadRows));
    });
    return;
  }
  parallel_for(chunks, parallel,
               [&](int64_t c) { exact_rows(c * kQuantHeadRows, std::min(N, (c + 1) * kQuantHeadRows)); });
}

}  // namespace graft::cpu
