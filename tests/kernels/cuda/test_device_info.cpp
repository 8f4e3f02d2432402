#include <gtest/gtest.h>

#include "graft/cuda/device_info.hpp"

TEST(CudaDevice, ReadsFactsFromTheDriver) {
  if (graft::cuda::device_count() == 0) GTEST_SKIP() << "no GPU: " << graft::cuda::no_device_reason();
  auto d = graft::cuda::device_info(0);
  EXPECT_GT(d.sm_count, 0);
  EXPECT_GE(d.cc_major, 8);
  EXPECT_GT(d.smem_per_block_optin, 48u * 1024u);
  EXPECT_GT(d.peak_dram_gbps(), 100.0);
}
