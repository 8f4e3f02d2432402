// graft/huge_pages.hpp: large tensors start on a 2 MiB boundary, resize_huge gives fresh value-initialized storage,
// the advice is harmless on any range; where THP is "madvise" or "always" the smaps line of a large tensor is read and
// reported (whether the kernel found free huge pages is its business, so that part is printed, not asserted).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "graft/huge_pages.hpp"
#include "graft/tensor.hpp"

using namespace graft;

namespace {
// AnonHugePages (kB) of the mapping of /proc/self/smaps that holds p; -1 when not found (not Linux).
long anon_huge_kb(const void* p) {
  std::ifstream f("/proc/self/smaps");
  std::string line;
  bool inside = false;
  const auto a = reinterpret_cast<uintptr_t>(p);
  while (std::getline(f, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = a >= lo && a < hi;
    } else if (inside && line.rfind("AnonHugePages:", 0) == 0) {
      return std::stol(line.substr(14));
    }
  }
  return -1;
}
std::string thp_mode() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string s;
  std::getline(f, s);
  return s;
}
}  // namespace

TEST(HugePages, LargeTensorsAreHugePageAlignedSmallOnesAre64ByteAligned) {
  Tensor big = Tensor::empty({3 << 20}, DType::F32);  // 12 MiB
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.raw()) % kHugePageBytes, 0u);
  std::memset(big.raw(), 1, big.nbytes());
  Tensor small = Tensor::empty({1000}, DType::F32);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.raw()) % 64, 0u);
  const std::string mode = thp_mode();
  const long kb = anon_huge_kb(big.raw());
  std::printf("THP: %s; a 12 MiB tensor, touched: AnonHugePages %ld kB\n", mode.empty() ? "(unknown)" : mode.c_str(),
              kb);
  if (mode.find("[never]") != std::string::npos) {
    EXPECT_EQ(kb, 0);
  }
}

TEST(HugePages, ResizeHugeGivesFreshValueInitializedStorage) {
  std::vector<uint8_t> v(10, 7);
  resize_huge(v, 5 << 20);
  ASSERT_EQ(v.size(), size_t{5} << 20);
  for (size_t i = 0; i < v.size(); i += 4093) ASSERT_EQ(v[i], 0) << i;  // value-initialized; the 7s are gone
  std::vector<float> w;
  resize_huge(w, 3);
  EXPECT_EQ(w, std::vector<float>(3, 0.0f));
  resize_huge(w, 0);
  EXPECT_TRUE(w.empty());
  // Advice on null, tiny, unaligned and sub-2-MiB ranges is a no-op, never an error.
  advise_huge_pages(nullptr, 1 << 30);
  advise_huge_pages(w.data(), 0);
  std::vector<char> c(3 << 20);
  advise_huge_pages(c.data() + 1, c.size() - 1);
  advise_huge_pages(c.data(), 100);
}
