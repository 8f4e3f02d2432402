// Free list of paged-KV block ids [0, num_blocks). Not thread-safe (owned by the scheduler thread).
#pragma once

#include <cstdint>
#include <vector>

namespace graft::serve {

class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);
  int64_t total() const { return total_; }
  int64_t free() const { return static_cast<int64_t>(free_.size()); }
  int64_t used() const { return total_ - free(); }
  // Grows `table` to hold `tokens` tokens of `block_size`. Returns false (table unchanged) when the
  // pool has too few free blocks.
  bool reserve(std::vector<int32_t>& table, int64_t tokens, int64_t block_size);
  // Returns every block of `table` to the pool and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int64_t total_;
  std::vector<int32_t> free_;  // a stack: recently freed blocks are reused first
};

}  // namespace graft::serve
