// Transparent huge pages for large host buffers (weights, the KV cache). Decode streams every weight once per token,
// and with 4 KiB pages the TLB misses cap one core's read well below the memory's: measured 2026-12-06 on the
// 2-core benchmark VM (THP "madvise"), one thread summing 311 MB: 17-22 GB/s with 4 KiB pages, 29 GB/s with 2 MiB
// pages; the f32 lm_head GEMV 17 -> 27 GB/s (build/bench/bench_lm_head with GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
#pragma once

#include <cstddef>
#include <vector>

namespace graft {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// Asks the kernel (Linux: madvise MADV_HUGEPAGE) to back the 2 MiB-aligned pages inside [p, p + bytes) with huge
// pages. Only pages not yet touched are affected, so call it before the first write. Advice only: a no-op on other
// systems, under 2 MiB, or where THP is off ("never"); it never fails.
void advise_huge_pages(void* p, size_t bytes);

// v = n value-initialized elements in fresh storage that was advised for huge pages before its first touch (the old
// contents are dropped).
template <class T>
void resize_huge(std::vector<T>& v, size_t n) {
  std::vector<T>().swap(v);
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(T));  // the reserved (untouched) storage: data() of libstdc++ / libc++
  v.resize(n);
}

}  // namespace graft
