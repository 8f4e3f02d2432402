// Sample packing (greedy first-fit) and the train/validation split.
#include <algorithm>
#include <cmath>
#include <random>

#include "graft/error.hpp"
#include "graft/train/data.hpp"

namespace graft::train {

std::vector<PackedSequence> pack(const std::vector<Sample>& samples, int64_t sequence_len, const std::string& truncation) {
  GRAFT_CHECK_FIX(sequence_len >= 1, "set sequence_len to a positive value", "pack: sequence_len is {}", sequence_len);
  GRAFT_CHECK_FIX(truncation == "drop" || truncation == "truncate", "use drop or truncate",
                  "pack: unknown truncation `{}`", truncation);
  const size_t L = static_cast<size_t>(sequence_len);
  std::vector<PackedSequence> bins;
  std::vector<size_t> fill;  // used length per bin
  // First-fit needs the earliest bin with room; `first_open` skips the prefix of full bins.
  size_t first_open = 0;
  for (const Sample& s : samples) {
    GRAFT_CHECK(s.ids.size() == s.labels.size(), "pack: sample has {} ids and {} labels", s.ids.size(), s.labels.size());
    if (s.ids.empty()) continue;
    size_t n = s.ids.size();
    if (n > L) {
      if (truncation == "drop") continue;
      n = L;
    }
    size_t b = first_open;
    while (b < bins.size() && fill[b] + n > L) ++b;
    if (b == bins.size()) {
      bins.emplace_back();
      fill.push_back(0);
    }
    PackedSequence& p = bins[b];
    int32_t seg = p.segments.empty() ? 0 : p.segments.back() + 1;
    p.ids.insert(p.ids.end(), s.ids.begin(), s.ids.begin() + static_cast<std::ptrdiff_t>(n));
    p.labels.insert(p.labels.end(), s.labels.begin(), s.labels.begin() + static_cast<std::ptrdiff_t>(n));
    p.labels.back() = kIgnoreIndex;  // never predict across samples (already so unless truncated)
    for (size_t i = 0; i < n; ++i) {
      p.positions.push_back(static_cast<int32_t>(i));
      p.segments.push_back(seg);
    }
    fill[b] += n;
    while (first_open < bins.size() && fill[first_open] == L) ++first_open;
  }
  return bins;
}

std::pair<std::vector<Sample>, std::vector<Sample>> split_validation(std::vector<Sample> samples, double val_set_size,
                                                                     uint64_t seed) {
  const size_t n = samples.size();
  GRAFT_CHECK_FIX(val_set_size >= 0 && std::isfinite(val_set_size),
                  "set val_set_size to a fraction in [0, 1) or a count >= 1", "val_set_size is {}", val_set_size);
  size_t n_val = val_set_size < 1 ? static_cast<size_t>(std::ceil(val_set_size * static_cast<double>(n)))
                                  : static_cast<size_t>(val_set_size);
  if (val_set_size >= 1)
    GRAFT_CHECK_FIX(val_set_size == std::floor(val_set_size), "give a whole number of samples or a fraction < 1",
                    "val_set_size {} is not an integer count", val_set_size);
  if (n_val == 0) return {std::move(samples), {}};
  GRAFT_CHECK_FIX(n_val < n, "lower val_set_size or add data", "val_set_size {} leaves no training samples out of {}",
                  val_set_size, n);
  // Portable Fisher-Yates with mt19937_64 (std::shuffle's algorithm is implementation-defined).
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = i;
  std::mt19937_64 rng(seed);
  for (size_t i = n - 1; i > 0; --i) {
    uint64_t bound = i + 1, limit = UINT64_MAX - UINT64_MAX % bound, r;
    do r = rng();
    while (r >= limit);
    std::swap(idx[i], idx[static_cast<size_t>(r % bound)]);
  }
  std::vector<uint8_t> is_val(n, 0);
  for (size_t i = 0; i < n_val; ++i) is_val[idx[i]] = 1;
  std::vector<Sample> train, val;
  train.reserve(n - n_val);
  val.reserve(n_val);
  for (size_t i = 0; i < n; ++i) (is_val[i] ? val : train).push_back(std::move(samples[i]));
  return {std::move(train), std::move(val)};
}

}  // namespace graft::train
