// The counter-based dropout generator every backend uses (Backend::dropout_mask; PEFT-style LoRA
// dropout, train/include/graft/train/lora_dropout.hpp). A mask element is a pure function of
// (key, row, column) — no RNG state, no thread or launch order — so any device, any grid and any
// recomputation (activation checkpointing, a resumed run) draws bit-identical masks:
//   u(row, c) = (mix64(key ^ (row << 32 | c)) >> 11) · 2⁻⁵³      (uniform in [0, 1), exact in double)
//   m(row, c) = u ≥ p ? 1/(1−p) : 0                              (1/(1−p) rounded to the element type)
// mix64 is splitmix64's finaliser (64-bit integer multiply/xor/shift only; identical in CUDA code).
// The comparison u ≥ p is made in double (p as given, not rounded to float).
#pragma once

#include <cstdint>
#include <span>

namespace graft {

inline constexpr uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// True when element (row, c) of the stream `key` is kept at drop probability p.
inline constexpr bool dropout_keep(uint64_t key, uint64_t row, uint64_t c, double p) {
  return static_cast<double>(mix64(key ^ (row << 32 | c)) >> 11) * 0x1.0p-53 >= p;
}

// m[i, c] (=) 0 or 1/(1−p).   rows [n] the stream row of each output row (empty: 0..n−1)  ->  m [n, cols]
template <class S>
void dropout_scales(uint64_t key, std::span<const int32_t> rows, int64_t n, int64_t cols, double p, S* m) {
  const S keep = S(1) / (S(1) - S(p));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t row = static_cast<uint64_t>(rows.empty() ? i : rows[static_cast<size_t>(i)]);
    for (int64_t c = 0; c < cols; ++c) m[i * cols + c] = dropout_keep(key, row, static_cast<uint64_t>(c), p) ? keep : S(0);
  }
}

}  // namespace graft
