// Data-parallel pieces of the trainer (data_parallel.hpp).
#include "graft/train/data_parallel.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>
#include <cstring>
#include <tuple>

#include "graft/error.hpp"

namespace graft::train {

ParallelLayout resolve_parallel_layout(const Recipe& r, int world_size) {
  ParallelLayout p;
  p.world = world_size;
  if (r.has_expert_parallel_size()) {
    GRAFT_CHECK_FIX(r.expert_parallel_size() >= 1, "set expert_parallel_size: 1 (or leave it out)",
                    "recipe key 'expert_parallel_size' = {} is out of range: must be >= 1", r.expert_parallel_size());
    GRAFT_CHECK_FIX(world_size % r.expert_parallel_size() == 0,
                    fmt::format("start a multiple of {} ranks (mpirun -np {}), or set expert_parallel_size to a divisor of {}",
                                r.expert_parallel_size(), r.expert_parallel_size(), world_size),
                    "expert_parallel_size: {} does not divide the {} rank{} started", r.expert_parallel_size(), world_size,
                    world_size == 1 ? "" : "s");
    p.expert_parallel = static_cast<int>(r.expert_parallel_size());
  }
  if (r.has_data_parallel_size() && r.data_parallel_size() != 0) {
    GRAFT_CHECK_FIX(r.data_parallel_size() >= 1, "leave data_parallel_size out (every rank data-parallel) or set it to the rank count",
                    "recipe key 'data_parallel_size' = {} is out of range: must be >= 1 (0 or unset = every rank)",
                    r.data_parallel_size());
    GRAFT_CHECK_FIX(r.data_parallel_size() * p.expert_parallel == world_size,
                    fmt::format("start {} ranks (mpirun -np {}), or leave data_parallel_size out to use every rank",
                                r.data_parallel_size() * p.expert_parallel, r.data_parallel_size() * p.expert_parallel),
                    "data_parallel_size: {} x expert_parallel_size: {} needs {} ranks, but {} rank{} started",
                    r.data_parallel_size(), p.expert_parallel, r.data_parallel_size() * p.expert_parallel, world_size,
                    world_size == 1 ? " was" : "s were");
  }
  p.data_parallel = world_size / p.expert_parallel;
  return p;
}

namespace {
// The first line where two texts differ, as "'a' vs 'b'".
std::string first_difference(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const auto line_of = [i](const std::string& s) {
    const size_t nl = i == 0 ? std::string::npos : s.rfind('\n', i - 1);
    const size_t from = nl == std::string::npos ? 0 : nl + 1;
    return s.substr(from, s.find('\n', from) - from);
  };
  return fmt::format("'{}' vs rank 0's '{}'", line_of(b), line_of(a));
}
}  // namespace

void check_same_run(dist::Communicator& comm, const std::string& recipe_hash, const std::string& recipe_text,
                    const std::string& version) {
  // One record per rank: version, hash, then the whole effective recipe (operational keys included).
  const auto all = comm.allgather(version + "\n" + recipe_hash + "\n" + recipe_text);
  std::vector<std::string> problems;
  const auto split = [](const std::string& s) {
    const auto a = s.find('\n'), b = s.find('\n', a + 1);
    return std::make_tuple(s.substr(0, a), s.substr(a + 1, b - a - 1), s.substr(b + 1));
  };
  const auto [v0, h0, t0] = split(all[0]);
  for (size_t r = 1; r < all.size(); ++r) {
    const auto [v, h, t] = split(all[r]);
    if (v != v0) problems.push_back(fmt::format("rank {} runs graft {} but rank 0 runs graft {}", r, v, v0));
    if (h != h0)
      problems.push_back(fmt::format("rank {} has recipe hash {} but rank 0 has {} ({})", r, h, h0, first_difference(t0, t)));
    else if (t != t0)
      problems.push_back(fmt::format("rank {}'s recipe differs from rank 0's in an operational key: {}", r, first_difference(t0, t)));
  }
  if (problems.empty()) return;
  std::string what = fmt::format("rank {} of {}: the ranks were not started with the same recipe and graft version, refusing to start:",
                                 comm.rank(), comm.size());
  for (const auto& p : problems) what += "\n  " + p;
  throw graft::Error(what, "", "start every rank with the same graft binary, recipe file and --set overrides");
}

std::pair<int64_t, int64_t> shard_range(int64_t n, int rank, int size) {
  const int64_t base = n / size, extra = n % size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

GradientAccumulator::GradientAccumulator(std::vector<Tensor*> grads, int64_t bucket_values, std::vector<int> stages)
    : grads_(std::move(grads)), stages_(std::move(stages)) {
  if (stages_.empty()) stages_.assign(grads_.size(), 0);
  GRAFT_CHECK(stages_.size() == grads_.size(), "GradientAccumulator: {} stages for {} gradients", stages_.size(), grads_.size());
  for (size_t i = 1; i < stages_.size(); ++i)
    GRAFT_CHECK(stages_[i] <= stages_[i - 1], "GradientAccumulator: gradients must be listed by decreasing stage");
  int64_t total = 0, bucket_start = 0;
  for (size_t i = 0; i < grads_.size(); ++i) {
    Tensor* g = grads_[i];
    if (total > bucket_start && total + g->numel() - bucket_start > bucket_values) {
      bucket_end_.push_back(total);
      bucket_last_.push_back(i - 1);
      bucket_start = total;
    }
    offset_[g] = total;
    tensor_offset_.push_back(total);
    total += g->numel();
  }
  if (total > bucket_start) {
    bucket_end_.push_back(total);
    bucket_last_.push_back(grads_.size() - 1);
  }
  sum_.assign(static_cast<size_t>(total), 0.0);
}

void GradientAccumulator::zero() { std::fill(sum_.begin(), sum_.end(), 0.0); }

void GradientAccumulator::add_tensor(size_t i) {
  double* out = sum_.data() + tensor_offset_[i];
  const Tensor* g = grads_[i];
  const float* in = g->data<float>();
  for (int64_t j = 0; j < g->numel(); ++j) out[j] += static_cast<double>(in[j]);
}

void GradientAccumulator::add() {
  for (size_t i = 0; i < grads_.size(); ++i) add_tensor(i);
}

void GradientAccumulator::add_and_zero(Tensor& grad) {
  const auto it = offset_.find(&grad);
  GRAFT_CHECK(it != offset_.end(), "GradientAccumulator::add_and_zero: {} is not one of its {} gradients", grad.describe(),
              grads_.size());
  double* out = sum_.data() + it->second;
  float* in = grad.data<float>();
  for (int64_t i = 0; i < grad.numel(); ++i) {
    out[i] += static_cast<double>(in[i]);
    in[i] = 0.0f;
  }
}

void GradientAccumulator::allreduce_sum(dist::Communicator& comm) {
  if (comm.size() == 1) return;
  int64_t first = 0;
  for (int64_t end : bucket_end_) {
    comm.allreduce_sum(sum_.data() + first, end - first);
    first = end;
  }
}

void GradientAccumulator::begin_last(dist::Communicator& comm) {
  comm_ = &comm;
  added_.assign(grads_.size(), 0);
  added_prefix_ = 0;
  started_ = 0;
  early_ = 0;
}

void GradientAccumulator::start_ready_buckets() {
  while (added_prefix_ < grads_.size() && added_[added_prefix_]) ++added_prefix_;
  while (started_ < bucket_end_.size() && bucket_last_[started_] < added_prefix_) {
    const int64_t first = started_ == 0 ? 0 : bucket_end_[started_ - 1];
    if (comm_->size() > 1) comm_->start_allreduce_sum(sum_.data() + first, bucket_end_[started_] - first);
    ++started_;
    ++early_;
  }
  comm_->progress();
}

void GradientAccumulator::ready(int stage) {
  if (!comm_) return;  // not the last sequence of the step
  // The tensors of one stage are contiguous (listed by decreasing stage).
  const auto lo = std::lower_bound(stages_.begin(), stages_.end(), stage, std::greater<int>());
  const auto hi = std::upper_bound(stages_.begin(), stages_.end(), stage, std::greater<int>());
  for (auto i = static_cast<size_t>(lo - stages_.begin()); i < static_cast<size_t>(hi - stages_.begin()); ++i)
    if (!added_[i]) {
      add_tensor(i);
      added_[i] = 1;
    }
  start_ready_buckets();
}

void GradientAccumulator::finish(dist::Communicator& comm) {
  if (comm_) {  // this rank ran a last sequence: add what no ready() covered
    for (size_t i = 0; i < grads_.size(); ++i)
      if (!added_[i]) add_tensor(i), added_[i] = 1;
  } else {      // no sequence on this rank this step: nothing to add
    comm_ = &comm;
    added_.assign(grads_.size(), 1);
    started_ = 0;
    early_ = 0;
  }
  const int64_t early = early_;
  added_prefix_ = 0;
  start_ready_buckets();
  early_ = early;
  if (comm.size() > 1) comm.wait_all();
  comm_ = nullptr;
}

void GradientAccumulator::store() {
  const double* in = sum_.data();
  for (Tensor* g : grads_) {
    float* out = g->data<float>();
    for (int64_t i = 0; i < g->numel(); ++i) out[i] = static_cast<float>(in[i]);
    in += g->numel();
  }
}

uint64_t fingerprint(const std::vector<const Tensor*>& tensors) {
  uint64_t h = 1469598103934665603ull;
  for (const Tensor* t : tensors) {
    const auto* p = reinterpret_cast<const unsigned char*>(t->data<float>());
    for (size_t i = 0, n = static_cast<size_t>(t->numel()) * sizeof(float); i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

void check_replicas_agree(dist::Communicator& comm, uint64_t fp, int64_t step) {
  if (comm.size() == 1) return;
  const auto all = comm.allgather(fmt::format("{:016x}", fp));
  std::vector<std::string> differ;
  for (size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ.push_back(std::to_string(r));
  GRAFT_CHECK_FIX(differ.empty(), "this is a graft bug; please report it with the recipe and the mpirun command line",
                  "after step {} the LoRA weights of rank(s) {} differ from rank 0's: the data-parallel replicas diverged", step,
                  fmt::format("{}", fmt::join(differ, ", ")));
}

}  // namespace graft::train
