#include "graft/serve/block_allocator.hpp"

#include "graft/error.hpp"

namespace graft::serve {

BlockAllocator::BlockAllocator(int64_t num_blocks) : total_(num_blocks) {
  GRAFT_CHECK(num_blocks > 0, "BlockAllocator: {} blocks", num_blocks);
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

bool BlockAllocator::reserve(std::vector<int32_t>& table, int64_t tokens, int64_t block_size) {
  const int64_t need = (tokens + block_size - 1) / block_size - static_cast<int64_t>(table.size());
  if (need <= 0) return true;
  if (need > free()) return false;
  for (int64_t i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void BlockAllocator::release(std::vector<int32_t>& table) {
  for (auto it = table.rbegin(); it != table.rend(); ++it) free_.push_back(*it);
  table.clear();
}

}  // namespace graft::serve
