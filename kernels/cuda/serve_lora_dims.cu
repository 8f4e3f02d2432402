// Host-side helpers shared by the multi-LoRA serving ops (no kernel here): validation of the
// batch capacities (LoraBatchDims), the split-K choice of the shrink from the device's SM count,
// and the SGMV grid-height bound.
#include <algorithm>

#include "serve_common.cuh"

namespace graft::cuda::serve {

void LoraBatchDims::validate(const char* who, bool need_slices) const {
  GRAFT_CHECK(T >= 0 && T < (int64_t{1} << 31), "{}: T = {} rows must be in [0, 2^31)", who, T);
  GRAFT_CHECK(K > 0 && K % 8 == 0, "{}: K = {} must be a positive multiple of 8", who, K);
  GRAFT_CHECK(num_slices >= 1 && num_slices <= kMaxSlices, "{}: num_slices = {} outside [1, {}]", who, num_slices,
              kMaxSlices);
  GRAFT_CHECK(max_rank >= 1 && max_rank <= kMaxLoraRank, "{}: max_rank = {} outside [1, {}]", who, max_rank,
              kMaxLoraRank);
  GRAFT_CHECK(splits >= 1 && splits <= 64, "{}: splits = {} outside [1, 64]", who, splits);
  if (!need_slices) return;
  for (int i = 0; i < num_slices; ++i) {
    const LoraSlice& s = slices[i];
    GRAFT_CHECK(s.n > 0 && s.n % 2 == 0, "{}: slice {} has n = {}: must be positive and even", who, i, s.n);
    GRAFT_CHECK(s.y_offset >= 0 && s.y_offset % 2 == 0, "{}: slice {} has y_offset = {}: must be >= 0 and even", who,
                i, s.y_offset);
    for (int j = 0; j < i; ++j) {
      const LoraSlice& o = slices[j];
      const bool disjoint = s.y_offset + s.n <= o.y_offset || o.y_offset + o.n <= s.y_offset;
      GRAFT_CHECK(disjoint, "{}: slices {} and {} overlap in y columns (each output column belongs to one slice)", who,
                  j, i);
    }
  }
}

int lora_shrink_splits(int64_t T, int64_t K, int num_slices, int num_keys) {
  const int sms = detail::current_device().sm_count;
  const int64_t sgmv_tiles = std::max<int64_t>(1, sgmv_max_row_tiles(T, num_keys));
  // Blocks one split would launch (BGMV launches T per slice; SGMV about as many row tiles).
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(T, sgmv_tiles)) * std::max(1, num_slices);
  const int64_t want = (2 * static_cast<int64_t>(sms) + blocks - 1) / blocks;
  const int64_t most = std::max<int64_t>(1, K / 256);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(most, 64)));
}

int64_t sgmv_max_row_tiles(int64_t T, int num_keys) {
  return (T + kSgmvTileM - 1) / kSgmvTileM + std::min<int64_t>(num_keys, T);
}

}  // namespace graft::cuda::serve
