// SIMT build only: nvcuda::wmma for the shapes and types graft uses (m16n16k16, bf16 / f16 inputs,
// f32 accumulator). Fragments keep NVIDIA's element-to-lane mapping on sm_80+ (two m16n8k16
// mma.sync fragments side by side, PTX ISA "Matrix Fragments for mma.m16n8k16"), so code that
// touches frag.x[i] directly sees the same elements as on hardware; tests/kernels/simt_gpu checks
// the mapping against a GPU. g = lane / 4, t = lane % 4, element i = 2·p + e (p = pair, e = 0/1):
//   matrix_a (m, k):    p0 (g, 2t+e)   p1 (g+8, 2t+e)   p2 (g, 2t+8+e)   p3 (g+8, 2t+8+e)
//   matrix_b (k, n):    p0 (2t+e, g)   p1 (2t+8+e, g)   p2 (2t+e, g+8)   p3 (2t+8+e, g+8)
//   accumulator (m, n): p0 (g, 2t+e)   p1 (g+8, 2t+e)   p2 (g, 2t+8+e)   p3 (g+8, 2t+8+e)
// load / store move each lane's own elements; mma_sync is warp-collective (all 32 lanes).
#pragma once

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace graft::simt {
enum class FragUse { A, B, Acc };
// (row, col) of element i of lane `lane` in a 16x16 fragment: (m, k) for A, (k, n) for B, (m, n) for Acc.
void wmma_coord(FragUse use, int lane, int i, int& row, int& col);
// D = A·B + C over the whole warp; a, b: 8 floats per lane (the inputs' values), c, d: 8 floats.
void wmma_mma(const float (&a)[8], const float (&b)[8], const float (&c)[8], float (&d)[8]);
}  // namespace graft::simt

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "SIMT wmma: only m16n16k16 is emulated");
  static constexpr int num_elements = 8;
  using element_type = T;
  T x[8];
};

namespace detail {
template <class Use>
constexpr ::graft::simt::FragUse use_of() {
  if constexpr (std::is_same_v<Use, matrix_a>) return ::graft::simt::FragUse::A;
  else if constexpr (std::is_same_v<Use, matrix_b>) return ::graft::simt::FragUse::B;
  else return ::graft::simt::FragUse::Acc;
}
template <class T>
float to_f(T v) { return static_cast<float>(v); }
}  // namespace detail

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const T& v) {
  for (auto& e : f.x) e = v;
}
template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) requires(!std::is_same_v<T, float>) {
  for (auto& e : f.x) e = T(v);
}

// A / B from memory with the fragment's own layout (row_major / col_major).
template <class Use, class T, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_void_v<L>, "matrix_a / matrix_b fragments need a layout");
  ::graft::simt::syncwarp(0xffffffffu);
  const int lane = ::graft::simt::t_cur->lane;
  for (int i = 0; i < 8; ++i) {
    int r, c;
    ::graft::simt::wmma_coord(detail::use_of<Use>(), lane, i, r, c);
    const bool row_major_mem = std::is_same_v<L, row_major>;
    f.x[i] = row_major_mem ? p[static_cast<size_t>(r) * ldm + c] : p[static_cast<size_t>(c) * ldm + r];
  }
}
// Accumulator from memory.
template <class T>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& f, const T* p, unsigned ldm, layout_t layout) {
  ::graft::simt::syncwarp(0xffffffffu);
  const int lane = ::graft::simt::t_cur->lane;
  for (int i = 0; i < 8; ++i) {
    int r, c;
    ::graft::simt::wmma_coord(::graft::simt::FragUse::Acc, lane, i, r, c);
    f.x[i] = layout == mem_row_major ? p[static_cast<size_t>(r) * ldm + c] : p[static_cast<size_t>(c) * ldm + r];
  }
}
template <class T>
void store_matrix_sync(T* p, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm, layout_t layout) {
  ::graft::simt::syncwarp(0xffffffffu);
  const int lane = ::graft::simt::t_cur->lane;
  for (int i = 0; i < 8; ++i) {
    int r, c;
    ::graft::simt::wmma_coord(::graft::simt::FragUse::Acc, lane, i, r, c);
    (layout == mem_row_major ? p[static_cast<size_t>(r) * ldm + c] : p[static_cast<size_t>(c) * ldm + r]) = f.x[i];
  }
}
template <class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, 16, 16, 16, TC>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b, const fragment<accumulator, 16, 16, 16, TC>& c) {
  float fa[8], fb[8], fc[8], fd[8];
  for (int i = 0; i < 8; ++i) {
    fa[i] = detail::to_f(a.x[i]);
    fb[i] = detail::to_f(b.x[i]);
    fc[i] = static_cast<float>(c.x[i]);
  }
  ::graft::simt::wmma_mma(fa, fb, fc, fd);
  for (int i = 0; i < 8; ++i) d.x[i] = static_cast<TC>(fd[i]);
}
}  // namespace nvcuda::wmma
