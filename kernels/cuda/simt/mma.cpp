// mma.cpp — warp-collective emulation of mma.sync m16n8k16 (bf16 -> f32), ldmatrix .x4 and the
// wmma m16n16k16 fragments, with the element-to-lane layouts of the PTX ISA ("Matrix Fragments for
// mma.m16n8k16 with floating point type", "Matrix fragments for ldmatrix"). Each lane publishes its
// registers, the warp meets, each lane computes its own outputs from the owners of the elements it
// needs, the warp meets again. Products are summed in fp32 in k order (hardware: wider internal
// accumulation, so results agree up to accumulation order).
#include <fmt/format.h>

#include <cstring>

#include "graft/dtype.hpp"
#include "include/mma.h"
#include "internal.hpp"

namespace graft::simt {
using namespace detail;

namespace {
float bf16_half(uint32_t reg, int half) { return bf16_to_f32(static_cast<uint16_t>(reg >> (16 * half))); }
// Injected bug (GRAFT_SIMT_INJECT=fragment_lane_xor=N): the A operand (and ldmatrix rows) read from
// lane ^ N, i.e. a wrong element-to-lane mapping of one operand.
int remap(int lane) { return (lane ^ injection().fragment_lane_xor) & 31; }
uint32_t& u32(Warp& w, int lane, int i) { return reinterpret_cast<uint32_t*>(w.slot[lane])[i]; }
float& f32(Warp& w, int lane, int i) { return reinterpret_cast<float*>(w.slot[lane])[i]; }
}  // namespace

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  for (int i = 0; i < 4; ++i) u32(w, lane, i) = a[i];
  u32(w, lane, 4) = b0;
  u32(w, lane, 5) = b1;
  syncwarp(0xffffffffu);
  const int g = lane >> 2, t = lane & 3;
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) {
      // A (row, k): lane (row % 8)·4 + (k % 8)/2, register (row >= 8) + 2·(k >= 8), half k & 1
      const int la = remap((row & 7) * 4 + ((k & 7) >> 1));
      const uint32_t ra = u32(w, la, (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0));
      // B (k, col): lane col·4 + (k % 8)/2, register k >= 8, half k & 1
      const int lb = col * 4 + ((k & 7) >> 1);
      const uint32_t rb = u32(w, lb, 4 + (k >= 8 ? 1 : 0));
      acc += bf16_half(ra, k & 1) * bf16_half(rb, k & 1);
    }
    out[i] = acc;
  }
  syncwarp(0xffffffffu);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  if (reinterpret_cast<uintptr_t>(row_addr) % 16)
    fault(fmt::format("ldmatrix row address {} is not 16-byte aligned", row_addr));
  std::memcpy(&w.slot[lane][0], &row_addr, sizeof(void*));
  syncwarp(0xffffffffu);
  uint32_t out[4];
  for (int m = 0; m < 4; ++m) {
    // matrix m, row lane/4 comes from lane 8m + lane/4; this lane gets its 32-bit column pair lane%4
    const int src = remap(8 * m + (lane >> 2));
    const unsigned char* row;
    std::memcpy(&row, &w.slot[src][0], sizeof(void*));
    std::memcpy(&out[m], row + 4 * (lane & 3), 4);
  }
  syncwarp(0xffffffffu);
  for (int m = 0; m < 4; ++m) r[m] = out[m];
}

void wmma_coord(FragUse use, int lane, int i, int& row, int& col) {
  const int g = lane >> 2, t = lane & 3, p = i >> 1, e = i & 1;
  if (use == FragUse::B) {  // (k, n)
    row = 2 * t + e + ((p & 1) ? 8 : 0);
    col = g + ((p & 2) ? 8 : 0);
  } else {  // A (m, k) and the accumulator (m, n)
    row = g + ((p & 1) ? 8 : 0);
    col = 2 * t + e + ((p & 2) ? 8 : 0);
  }
}

namespace {
// Owner (lane, element) of A (m, k) / B (k, n): the inverse of wmma_coord.
void owner_a(int m, int k, int& lane, int& i) {
  lane = (m & 7) * 4 + ((k & 7) >> 1);
  i = 2 * ((m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)) + (k & 1);
}
void owner_b(int k, int n, int& lane, int& i) {
  lane = (n & 7) * 4 + ((k & 7) >> 1);
  i = 2 * ((k >= 8 ? 1 : 0) + (n >= 8 ? 2 : 0)) + (k & 1);
}
}  // namespace

void wmma_mma(const float (&a)[8], const float (&b)[8], const float (&c)[8], float (&d)[8]) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  for (int i = 0; i < 8; ++i) {
    f32(w, lane, i) = a[i];
    f32(w, lane, 8 + i) = b[i];
  }
  syncwarp(0xffffffffu);
  float out[8];
  for (int i = 0; i < 8; ++i) {
    int m, n;
    wmma_coord(FragUse::Acc, lane, i, m, n);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) {
      int la, ia, lb, ib;
      owner_a(m, k, la, ia);
      owner_b(k, n, lb, ib);
      acc += f32(w, remap(la), ia) * f32(w, lb, 8 + ib);
    }
    out[i] = acc;
  }
  syncwarp(0xffffffffu);
  for (int i = 0; i < 8; ++i) d[i] = out[i];
}

}  // namespace graft::simt
