// Internal to kernels/cuda/moe_grouped_nf4_matmul*.cu: the grouped GEMM kernel template shared by
// the forward and backward expert GEMMs, plus small helpers for the MoE kernels.
//
//   out[p, c] = epilogue( alpha1 · Σ_kk A1[p, kk]·B1(e)[c, kk]  +  Σ_kk A2[p, kk]·B2(e)[c, kk] )
//
// for the rows p of expert e (expert-major, offsets[e] <= p < offsets[e+1]). B1 is an NF4 expert
// weight read "NT" (W_e [N, K], B1[c, kk] = W_e[c, kk]: y = x·Wᵀ) or "TN" (W_e [Kred, N],
// B1[c, kk] = W_e[kk, c]: dx = dy·W), or a dense bf16 per-expert matrix in the same two
// orientations; B2 (the LoRA expand/dX phase) is dense bf16 in the same orientation as B1, with
// k2 = 0 meaning "no second phase". The K loop runs phase 1 then phase 2 through one accumulator.
//
// Tiles: 128 (rows) x 128 (cols) x 32 (k), 256 threads = 8 warps as 2 (m) x 4 (n), each warp
// 64 x 32 = 4 x 4 mma.sync.m16n8k16 (bf16 in, f32 accumulate; sm_80 and sm_90a). Operands are
// staged global -> registers (NF4 dequantized here: code[nibble]·absmax -> bf16, as bitsandbytes'
// dequantize_4bit does) -> shared memory (double-buffered, one __syncthreads per k tile); the bf16
// W tile only ever exists in shared memory. Grid: x = column tiles, y = row tiles over all
// experts (max_row_tiles bound); a block finds its expert by binary search in tile_offsets and
// exits when past the last tile, so no host-side knowledge of the counts is needed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "graft/cuda/moe.hpp"
#include "launch.cuh"

namespace graft::cuda::moe::detail {

constexpr int BM = kTileM, BN = 128, BK = 32, LDS = BK + 8;  // padded smem row: conflict-free frags
constexpr int kGemmThreads = 256;

enum class BKind { Nf4NT, Nf4TN, DenseNT, DenseTN };
enum class Epi { Store, SwiGLU, SwiGLUBwd };

__device__ __forceinline__ float bf2f(bf16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }
__device__ __forceinline__ bf16_t f2bf(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
__device__ __forceinline__ uint32_t pack_bf2(float lo, float hi) {
  return static_cast<uint32_t>(f2bf(lo)) | (static_cast<uint32_t>(f2bf(hi)) << 16);
}
__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + expf(-x)); }

// The 16 NF4 values (bitsandbytes' NF4 code table; same as graft::nf4::code()).
__device__ __forceinline__ float nf4_code_value(int q) {
  constexpr float kCode[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                               -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                               0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                               0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                               0.7229568362236023f, 1.0f};
  return kCode[q];
}
// Per-block shared table: byte -> (code[high nibble], code[low nibble]). Call with all threads
// of a 256-thread block, then __syncthreads() before use.
__device__ __forceinline__ void nf4_init_pair_table(float2* table) {
  const int b = threadIdx.x;
  if (b < 256) table[b] = make_float2(nf4_code_value(b >> 4), nf4_code_value(b & 15));
}

struct Nf4View {
  const uint8_t* packed;
  const float* absmax;
  const uint8_t* absmax_q;
  const float* nested_absmax;
  const float* nested_offset;
  const float* dynamic_map;
  int64_t rows, cols;
};
inline Nf4View view_of(const Nf4Experts& w) {
  return {w.packed, w.absmax, w.absmax_q, w.nested_absmax, w.nested_offset, w.dynamic_map, w.rows, w.cols};
}

// absmax of block b of expert e (decodes double quantization exactly like nf4::block_absmax:
// dynamic_map[q]·nested + offset in fp32, no FMA contraction).
__device__ __forceinline__ float nf4_absmax(const Nf4View& w, int e, int64_t b) {
  const int64_t nb = w.rows * w.cols / 64;
  if (w.absmax) return __ldg(w.absmax + e * nb + b);
  const int64_t nnb = (nb + 255) / 256;
  const float q = __ldg(w.dynamic_map + w.absmax_q[e * nb + b]);
  return __fadd_rn(__fmul_rn(q, __ldg(w.nested_absmax + e * nnb + b / 256)), __ldg(w.nested_offset + e));
}

// 16 consecutive NF4 elements starting at flat element index `flat` (multiple of 16) of expert e.
__device__ __forceinline__ uint2 nf4_load16(const Nf4View& w, int e, int64_t flat, float& amax) {
  amax = nf4_absmax(w, e, flat / 64);
  const uint8_t* p = w.packed + e * (w.rows * w.cols / 2) + flat / 2;
  return __ldg(reinterpret_cast<const uint2*>(p));
}
// Dequantizes 8 bytes (16 elements, high nibble = even element) into 8 packed bf16 pairs:
// bf16(code·absmax) in fp32, like bitsandbytes' dequantize_4bit.
__device__ __forceinline__ void nf4_dequant16(const float2* table, uint2 q, float amax, uint32_t out[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t byte = ((i < 4 ? q.x : q.y) >> (8 * (i & 3))) & 0xffu;
    const float2 c = table[byte];
    out[i] = pack_bf2(c.x * amax, c.y * amax);
  }
}

struct GemmParams {
  const int32_t* offsets;
  const int32_t* tile_offsets;
  int E;
  int64_t ncols;        // output columns (Store / SwiGLUBwd); features I (SwiGLU)
  // phase 1
  const bf16_t* a1;     // [n, k1]
  int64_t k1;
  Nf4View w;            // NF4 B1
  const bf16_t* d1;     // dense B1, expert stride d1_stride
  int64_t d1_stride;
  float alpha1;
  // phase 2 (k2 = 0: none)
  const bf16_t* a2;     // [n, k2]
  int64_t k2;
  const bf16_t* d2;
  int64_t d2_stride;
  // epilogue
  bf16_t* out;          // Store: [n, ncols]; SwiGLU: h [n, I]; SwiGLUBwd: dgu [n, 2I]
  bf16_t* aux;          // SwiGLU: gu [n, 2I] out (or null); SwiGLUBwd: gu [n, 2I] in
};

// Weight row (NT orientation) held by tile row c of column tile `bx`. SwiGLU tiles interleave 8
// gate rows and 8 up rows: tile rows [16q, 16q+8) = gate features bx*64 + 8q.., [16q+8, 16q+16) = up.
template <Epi EPI>
__device__ __forceinline__ int64_t tile_row(int c, int bx, int64_t ncols, bool& valid) {
  if constexpr (EPI == Epi::SwiGLU) {
    const int nb = c >> 3;
    const int64_t feat = static_cast<int64_t>(bx) * 64 + (nb >> 1) * 8 + (c & 7);
    valid = feat < ncols;
    return ((nb & 1) ? ncols : 0) + feat;
  } else {
    const int64_t r = static_cast<int64_t>(bx) * BN + c;
    valid = r < ncols;
    return r;
  }
}

struct Stage {
  uint4 a[2];
  uint4 b[2];
  float amax;
};

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef GRAFT_SIMT
  ::graft::simt::mma_m16n8k16_bf16(*reinterpret_cast<float(*)[4]>(c), *reinterpret_cast<const uint32_t(*)[4]>(a), b[0], b[1]);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <BKind B1, Epi EPI>
__global__ void __launch_bounds__(kGemmThreads) grouped_gemm_kernel(const GemmParams p) {
  constexpr BKind B2 = (B1 == BKind::Nf4NT || B1 == BKind::DenseNT) ? BKind::DenseNT : BKind::DenseTN;
  __shared__ __align__(16) bf16_t As[2][BM * LDS];
  __shared__ __align__(16) bf16_t Bs[2][BN * LDS];
  __shared__ float2 code2[256];

  // ---- which expert / row tile
  const int mt = blockIdx.y;
  if (mt >= p.tile_offsets[p.E]) return;
  nf4_init_pair_table(code2);  // visible after the __syncthreads below, before the first store()
  __syncthreads();
  int lo = 0, hi = p.E - 1;  // largest e with tile_offsets[e] <= mt
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (p.tile_offsets[mid] <= mt) lo = mid; else hi = mid - 1;
  }
  const int e = lo;
  const int64_t row0 = p.offsets[e] + static_cast<int64_t>(mt - p.tile_offsets[e]) * BM;
  const int64_t row_end = p.offsets[e + 1];
  const int bx = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3, g = lane >> 2, cq = lane & 3;

  const int nk1 = static_cast<int>((p.k1 + BK - 1) / BK);
  const int nk = nk1 + static_cast<int>((p.k2 + BK - 1) / BK);

  // ---- global -> registers for k tile kt
  auto load = [&](int kt, Stage& s) {
    const bool ph1 = kt < nk1;
    const bf16_t* A = ph1 ? p.a1 : p.a2;
    const int64_t K = ph1 ? p.k1 : p.k2;
    const int64_t k0 = static_cast<int64_t>(ph1 ? kt : kt - nk1) * BK;
#pragma unroll
    for (int i = 0; i < 2; ++i) {  // A: 128 rows x 4 vectors of 8
      const int v = tid + i * kGemmThreads, r = v >> 2, cv = v & 3;
      const int64_t row = row0 + r, kk = k0 + cv * 8;
      s.a[i] = (row < row_end && kk < K) ? __ldg(reinterpret_cast<const uint4*>(A + row * K + kk)) : make_uint4(0, 0, 0, 0);
    }
    const BKind kind = ph1 ? B1 : B2;
    if (kind == BKind::Nf4NT) {  // 128 weight rows x 2 groups of 16
      const int c = tid >> 1, half = tid & 1;
      bool valid;
      const int64_t wr = tile_row<EPI>(c, bx, p.ncols, valid);
      const int64_t kk = k0 + half * 16;
      s.amax = 0.f;
      s.b[0] = make_uint4(0, 0, 0, 0);
      if (valid && kk < K) {
        const uint2 q = nf4_load16(p.w, e, wr * p.w.cols + kk, s.amax);
        s.b[0].x = q.x;
        s.b[0].y = q.y;
      }
    } else if (kind == BKind::Nf4TN) {  // 32 reduction rows (lanes) x 8 groups of 16 columns (warps)
      const int rr = tid & 31, seg = tid >> 5;
      const int64_t kr = k0 + rr, col = static_cast<int64_t>(bx) * BN + seg * 16;
      s.amax = 0.f;
      s.b[0] = make_uint4(0, 0, 0, 0);
      if (kr < K && col < p.ncols) {
        const uint2 q = nf4_load16(p.w, e, kr * p.w.cols + col, s.amax);
        s.b[0].x = q.x;
        s.b[0].y = q.y;
      }
    } else if (kind == BKind::DenseNT) {  // M_e [rows, K]: 128 tile rows x 4 vectors
      const bf16_t* M = (ph1 ? p.d1 + e * p.d1_stride : p.d2 + e * p.d2_stride);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kGemmThreads, c = v >> 2, cv = v & 3;
        bool valid;
        const int64_t wr = tile_row<EPI>(c, bx, p.ncols, valid);
        const int64_t kk = k0 + cv * 8;
        s.b[i] = (valid && kk < K) ? __ldg(reinterpret_cast<const uint4*>(M + wr * K + kk)) : make_uint4(0, 0, 0, 0);
      }
    } else {  // DenseTN: M_e [K, ncols]: 32 reduction rows (lanes) x 16 vectors of 8 columns
      const bf16_t* M = (ph1 ? p.d1 + e * p.d1_stride : p.d2 + e * p.d2_stride);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kGemmThreads, rr = v & 31, cv = v >> 5;
        const int64_t kr = k0 + rr, col = static_cast<int64_t>(bx) * BN + cv * 8;
        s.b[i] = (kr < K && col < p.ncols) ? __ldg(reinterpret_cast<const uint4*>(M + kr * p.ncols + col))
                                           : make_uint4(0, 0, 0, 0);
      }
    }
  };
  // ---- registers -> shared buffer `buf` (Bs rows = output columns, k contiguous)
  auto store = [&](int kt, const Stage& s, int buf) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int v = tid + i * kGemmThreads, r = v >> 2, cv = v & 3;
      *reinterpret_cast<uint4*>(&As[buf][r * LDS + cv * 8]) = s.a[i];
    }
    const BKind kind = kt < nk1 ? B1 : B2;
    bf16_t* B = Bs[buf];
    if (kind == BKind::Nf4NT) {
      const int c = tid >> 1, half = tid & 1;
      uint32_t d[8];
      nf4_dequant16(code2, make_uint2(s.b[0].x, s.b[0].y), s.amax, d);
      *reinterpret_cast<uint4*>(&B[c * LDS + half * 16]) = make_uint4(d[0], d[1], d[2], d[3]);
      *reinterpret_cast<uint4*>(&B[c * LDS + half * 16 + 8]) = make_uint4(d[4], d[5], d[6], d[7]);
    } else if (kind == BKind::Nf4TN) {  // lanes write consecutive k: no bank conflicts
      const int rr = tid & 31, seg = tid >> 5;
      uint32_t d[8];
      nf4_dequant16(code2, make_uint2(s.b[0].x, s.b[0].y), s.amax, d);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        B[(seg * 16 + 2 * i) * LDS + rr] = static_cast<bf16_t>(d[i] & 0xffffu);
        B[(seg * 16 + 2 * i + 1) * LDS + rr] = static_cast<bf16_t>(d[i] >> 16);
      }
    } else if (kind == BKind::DenseNT) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kGemmThreads, c = v >> 2, cv = v & 3;
        *reinterpret_cast<uint4*>(&B[c * LDS + cv * 8]) = s.b[i];
      }
    } else {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int v = tid + i * kGemmThreads, rr = v & 31, cv = v >> 5;
        const uint32_t w4[4] = {s.b[i].x, s.b[i].y, s.b[i].z, s.b[i].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          B[(cv * 8 + 2 * j) * LDS + rr] = static_cast<bf16_t>(w4[j] & 0xffffu);
          B[(cv * 8 + 2 * j + 1) * LDS + rr] = static_cast<bf16_t>(w4[j] >> 16);
        }
      }
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

  Stage st;
  if (nk > 0) {
    load(0, st);
    store(0, st, 0);
  }
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const int buf = kt & 1;
    if (kt + 1 < nk) load(kt + 1, st);  // global loads in flight during the MMAs below
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks) {
      uint32_t af[4][4], bfr[4][2];
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const bf16_t* base = &As[buf][(wm * 64 + mi * 16 + g) * LDS + ks * 16 + 2 * cq];
        af[mi][0] = *reinterpret_cast<const uint32_t*>(base);
        af[mi][1] = *reinterpret_cast<const uint32_t*>(base + 8 * LDS);
        af[mi][2] = *reinterpret_cast<const uint32_t*>(base + 8);
        af[mi][3] = *reinterpret_cast<const uint32_t*>(base + 8 * LDS + 8);
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const bf16_t* base = &Bs[buf][(wn * 32 + ni * 8 + g) * LDS + ks * 16 + 2 * cq];
        bfr[ni][0] = *reinterpret_cast<const uint32_t*>(base);
        bfr[ni][1] = *reinterpret_cast<const uint32_t*>(base + 8);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma_bf16(acc[mi][ni], af[mi], bfr[ni]);
    }
    if (kt == nk1 - 1 && p.alpha1 != 1.0f) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[i][j][q] *= p.alpha1;
    }
    if (kt + 1 < nk) store(kt + 1, st, buf ^ 1);  // the other buffer: last read before the previous sync
    __syncthreads();
  }

  // ---- epilogue. Thread holds acc[mi][ni][2h + {0,1}] at tile row wm*64 + mi*16 + g + 8h,
  // tile column wn*32 + ni*8 + 2cq + {0,1}.
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row0 + wm * 64 + mi * 16 + g + 8 * h;
      if (row >= row_end) continue;
      if constexpr (EPI == Epi::SwiGLU) {
        const int64_t I = p.ncols;
#pragma unroll
        for (int ni = 0; ni < 4; ni += 2) {
          const int nb = wn * 4 + ni;  // even: gate block; nb + 1: the matching up block
          const int64_t feat = static_cast<int64_t>(bx) * 64 + (nb >> 1) * 8 + 2 * cq;
          if (feat >= I) continue;
          const float g0 = acc[mi][ni][2 * h], g1 = acc[mi][ni][2 * h + 1];
          const float u0 = acc[mi][ni + 1][2 * h], u1 = acc[mi][ni + 1][2 * h + 1];
          *reinterpret_cast<uint32_t*>(p.out + row * I + feat) = pack_bf2(silu_f(g0) * u0, silu_f(g1) * u1);
          if (p.aux) {
            *reinterpret_cast<uint32_t*>(p.aux + row * 2 * I + feat) = pack_bf2(g0, g1);
            *reinterpret_cast<uint32_t*>(p.aux + row * 2 * I + I + feat) = pack_bf2(u0, u1);
          }
        }
      } else {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
          const int64_t col = static_cast<int64_t>(bx) * BN + wn * 32 + ni * 8 + 2 * cq;
          if (col >= p.ncols) continue;
          const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
          if constexpr (EPI == Epi::Store) {
            *reinterpret_cast<uint32_t*>(p.out + row * p.ncols + col) = pack_bf2(v0, v1);
          } else {  // SwiGLUBwd: v = dh; gu saved by the forward
            const int64_t I = p.ncols;
            const uint32_t gg = *reinterpret_cast<const uint32_t*>(p.aux + row * 2 * I + col);
            const uint32_t uu = *reinterpret_cast<const uint32_t*>(p.aux + row * 2 * I + I + col);
            const float ga[2] = {bf2f(static_cast<bf16_t>(gg & 0xffffu)), bf2f(static_cast<bf16_t>(gg >> 16))};
            const float ua[2] = {bf2f(static_cast<bf16_t>(uu & 0xffffu)), bf2f(static_cast<bf16_t>(uu >> 16))};
            const float dv[2] = {v0, v1};
            float dg[2], du[2];
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              const float sg = 1.0f / (1.0f + expf(-ga[q]));
              dg[q] = dv[q] * ua[q] * sg * (1.0f + ga[q] * (1.0f - sg));
              du[q] = dv[q] * ga[q] * sg;
            }
            *reinterpret_cast<uint32_t*>(p.out + row * 2 * I + col) = pack_bf2(dg[0], dg[1]);
            *reinterpret_cast<uint32_t*>(p.out + row * 2 * I + I + col) = pack_bf2(du[0], du[1]);
          }
        }
      }
    }
}

// Column tiles of an output of `ncols` columns (SwiGLU: features per tile = 64).
template <Epi EPI>
inline unsigned col_tiles(int64_t ncols) {
  const int64_t per = EPI == Epi::SwiGLU ? 64 : BN;
  return static_cast<unsigned>((ncols + per - 1) / per);
}

}  // namespace graft::cuda::moe::detail

// ---------------------------------------------------------------- host helpers (both .cu files)
#include "graft/cuda/check.hpp"

namespace graft::cuda::moe::detail {

inline void check_nf4(const Nf4Experts& w, int64_t rows, int64_t cols, const char* what) {
  GRAFT_CHECK(w.packed != nullptr, "moe grouped GEMM: {} has no packed NF4 data", what);
  GRAFT_CHECK(w.rows == rows && w.cols == cols, "moe grouped GEMM: {} is [{}, {}] per expert, expected [{}, {}]", what,
              w.rows, w.cols, rows, cols);
  GRAFT_CHECK((rows * cols) % 64 == 0, "moe grouped GEMM: {} has {} elements per expert, not a multiple of the NF4 block 64",
              what, rows * cols);
  GRAFT_CHECK(cols % 16 == 0, "moe grouped GEMM: {} has {} columns, not a multiple of 16", what, cols);
  GRAFT_CHECK(w.absmax != nullptr || (w.absmax_q && w.nested_absmax && w.nested_offset && w.dynamic_map),
              "moe grouped GEMM: {} needs absmax (f32) or the full double-quant state (absmax_q, nested_absmax, "
              "nested_offset, dynamic_map)",
              what);
}
inline void check_lora(const ExpertLoraDev& l, const char* what) {
  if (l.rank == 0) return;
  GRAFT_CHECK(l.rank > 0 && l.rank % 8 == 0 && l.rank <= kMaxLoraRank,
              "moe grouped GEMM: {} LoRA rank {} must be a multiple of 8 in [8, {}] (zero-pad smaller ranks)", what,
              l.rank, kMaxLoraRank);
  GRAFT_CHECK(l.a != nullptr && l.b != nullptr, "moe grouped GEMM: {} LoRA has rank {} but null factors", what, l.rank);
}
inline void check_rows(int64_t n, int E, const int32_t* offsets, const int32_t* tile_offsets) {
  GRAFT_CHECK(E >= 1 && E <= kMaxPlanExperts, "moe grouped GEMM: {} experts outside [1, {}]", E, kMaxPlanExperts);
  GRAFT_CHECK(n >= 0 && max_row_tiles(n, E) <= 65535, "moe grouped GEMM: {} rows need more than 65535 row tiles", n);
  GRAFT_CHECK(offsets != nullptr && tile_offsets != nullptr, "moe grouped GEMM: offsets / tile_offsets are null");
}

inline GemmParams gemm_params(const int32_t* offsets, const int32_t* tile_offsets, int E) {
  GemmParams p{};
  p.offsets = offsets;
  p.tile_offsets = tile_offsets;
  p.E = E;
  p.alpha1 = 1.0f;
  return p;
}

template <BKind B1, Epi EPI>
void launch_gemm(const GemmParams& p, int64_t n, cudaStream_t stream) {
  const dim3 grid(col_tiles<EPI>(p.ncols), static_cast<unsigned>(max_row_tiles(n, p.E)));
  if (grid.x == 0 || grid.y == 0) return;
  GRAFT_LAUNCH(grid, kGemmThreads, 0, stream, grouped_gemm_kernel<B1, EPI>)(p);
  GRAFT_CUDA_CHECK_LAUNCH();
}

}  // namespace graft::cuda::moe::detail
