// Data-parallel pieces without a launcher: batch sharding, the recipe's parallel layout, the
// version/recipe handshake and the replica check (through a scripted communicator standing for the
// other ranks), and the bucketed gradient all-reduce (through a communicator that sums with fixed
// partners' values).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "graft/error.hpp"
#include "graft/train/data_parallel.hpp"
#include "graft/train/recipe.hpp"

namespace {
using namespace graft;
using namespace graft::train;

// Rank `rank` of `others.size()`: allgather returns the scripted records (ours in our slot);
// allreduce adds `peer_value` per element (the other ranks' contribution); counts the calls.
class ScriptedComm final : public dist::Communicator {
 public:
  ScriptedComm(int rank, std::vector<std::string> others) : rank_(rank), others_(std::move(others)) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(others_.size()); }
  std::string transport() const override { return "scripted"; }
  void allreduce_sum(float* d, int64_t n) override {
    ++allreduces;
    floats += n;
    for (int64_t i = 0; i < n; ++i) d[i] += peer_value;
  }
  void allreduce_sum(double* d, int64_t n) override {
    ++double_allreduces;
    for (int64_t i = 0; i < n; ++i) d[i] += peer_value;
  }
  void broadcast(void*, int64_t, int) override {}
  void barrier() override {}
  std::vector<std::string> allgather(const std::string& mine) override {
    auto v = others_;
    v[static_cast<size_t>(rank_)] = mine;
    return v;
  }
  std::vector<std::string> alltoall(const std::vector<std::string>& send) override { return send; }
  std::unique_ptr<dist::Communicator> split(int, int) override { return nullptr; }
  int allreduces = 0, double_allreduces = 0;
  int64_t floats = 0;
  float peer_value = 0;

 private:
  int rank_;
  std::vector<std::string> others_;
};

TEST(DataParallel, ShardRangeCoversTheBatchInOrder) {
  for (int64_t n : {1, 4, 6, 7, 16})
    for (int size : {1, 2, 3, 4, 8}) {
      int64_t next = 0;
      for (int r = 0; r < size; ++r) {
        auto [b, e] = shard_range(n, r, size);
        EXPECT_EQ(b, next) << n << " " << size << " " << r;
        EXPECT_LE(e - b, n / size + 1);
        EXPECT_GE(e - b, n / size);
        next = e;
      }
      EXPECT_EQ(next, n);
    }
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_EQ(shard_range(6, 0, 4), Range(0, 2));
  EXPECT_EQ(shard_range(6, 3, 4), Range(5, 6));
}

Recipe recipe_with(const std::vector<std::string>& sets) {
  const std::string y = "base_model: b\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: d.jsonl\noutput_dir: o\n";
  return parse_recipe_text(y, "t.yaml", sets).proto;
}

TEST(DataParallel, LayoutDefaultsToEveryRankAndGroupsExpertParallelRanks) {
  EXPECT_EQ(resolve_parallel_layout(recipe_with({}), 4).data_parallel, 4);
  EXPECT_EQ(resolve_parallel_layout(recipe_with({"data_parallel_size=0"}), 3).data_parallel, 3);
  EXPECT_EQ(resolve_parallel_layout(recipe_with({"data_parallel_size=2", "expert_parallel_size=1"}), 2).data_parallel, 2);
  // expert_parallel_size P: groups of P ranks, world / P expert replicas.
  const auto ep = resolve_parallel_layout(recipe_with({"expert_parallel_size=2"}), 4);
  EXPECT_EQ(ep.expert_parallel, 2);
  EXPECT_EQ(ep.data_parallel, 2);
  EXPECT_EQ(resolve_parallel_layout(recipe_with({"expert_parallel_size=4", "data_parallel_size=1"}), 4).expert_parallel, 4);
  try {
    resolve_parallel_layout(recipe_with({"expert_parallel_size=2"}), 3);
    FAIL() << "expert_parallel_size 2 on 3 ranks accepted";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expert_parallel_size: 2 does not divide the 3 ranks started"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(resolve_parallel_layout(recipe_with({"expert_parallel_size=0"}), 2), graft::Error);
  try {
    resolve_parallel_layout(recipe_with({"data_parallel_size=4"}), 2);
    FAIL() << "data_parallel_size 4 on 2 ranks accepted";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 4 ranks, but 2 ranks were started"), std::string::npos) << e.what();
  }
  EXPECT_THROW(resolve_parallel_layout(recipe_with({"data_parallel_size=-1"}), 1), graft::Error);
}

TEST(DataParallel, ParallelSizesAreNotPartOfTheHash) {
  const auto y = std::string("base_model: b\nadapter: lora\nlora_target_linear: true\ndatasets:\n  - path: d.jsonl\noutput_dir: o\n");
  EXPECT_EQ(parse_recipe_text(y, "t", {}).hash, parse_recipe_text(y, "t", {"data_parallel_size=4"}).hash);
  EXPECT_EQ(parse_recipe_text(y, "t", {}).hash, parse_recipe_text(y, "t", {"expert_parallel_size=1"}).hash);
}

TEST(DataParallel, HandshakeRefusesOtherRecipesAndVersions) {
  const std::string text = "lora_r: 8\nlearning_rate: 0.01\n";
  // Rank 1 of 3; the others agree with us.
  {
    ScriptedComm c(1, {"0.1.0\nH\n" + text, "", "0.1.0\nH\n" + text});
    EXPECT_NO_THROW(check_same_run(c, "H", text, "0.1.0"));
  }
  {  // rank 2 has another recipe, with another hash
    ScriptedComm c(1, {"0.1.0\nH\n" + text, "", "0.1.0\nK\nlora_r: 8\nlearning_rate: 0.02\n"});
    try {
      check_same_run(c, "H", text, "0.1.0");
      FAIL() << "accepted";
    } catch (const graft::Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("refusing to start"), std::string::npos) << w;
      EXPECT_NE(w.find("rank 2 has recipe hash K but rank 0 has H"), std::string::npos) << w;
      EXPECT_NE(w.find("'learning_rate: 0.02' vs rank 0's 'learning_rate: 0.01'"), std::string::npos) << w;
    }
  }
  {  // rank 2 runs another graft
    ScriptedComm c(0, {"", "0.1.0\nH\n" + text, "0.2.0\nH\n" + text});
    try {
      check_same_run(c, "H", text, "0.1.0");
      FAIL() << "accepted";
    } catch (const graft::Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 2 runs graft 0.2.0 but rank 0 runs graft 0.1.0"), std::string::npos) << e.what();
    }
  }
  {  // same hash, another operational key (output_dir)
    ScriptedComm c(0, {"", "0.1.0\nH\noutput_dir: b\n", "0.1.0\nH\noutput_dir: a\n"});
    try {
      check_same_run(c, "H", "output_dir: a\n", "0.1.0");
      FAIL() << "accepted";
    } catch (const graft::Error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1's recipe differs from rank 0's in an operational key: 'output_dir: b'"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(DataParallel, GradientAccumulatorSumsInDoubleAndReducesInBuckets) {
  std::vector<Tensor> ts;
  for (int64_t n : {3, 5, 2, 7}) ts.push_back(Tensor::zeros({n}, DType::F32));
  std::vector<Tensor*> ptrs;
  for (auto& t : ts) ptrs.push_back(&t);
  GradientAccumulator acc(ptrs, 8);  // buckets at tensor boundaries: [3+5], [2], [7]
  EXPECT_EQ(acc.buckets(), 3);
  EXPECT_EQ(acc.values(), 17);
  // 1 + 8 x 2^-25: a float sum stays 1 (each 2^-25 is below half a float step at 1); the double
  // sum keeps them, 1 + 2^-22, and the other rank's 2 makes 3 + 2^-22 (exact in float).
  const float tiny = std::ldexp(1.0f, -25);
  for (int s = 0; s < 9; ++s) {
    for (auto& t : ts) std::fill_n(t.data<float>(), t.numel(), s == 0 ? 1.0f : tiny);
    acc.add();
  }
  ScriptedComm c(0, {"", ""});
  c.peer_value = 2;
  acc.allreduce_sum(c);
  EXPECT_EQ(c.allreduces, 0);
  EXPECT_EQ(c.double_allreduces, 3);  // one per bucket
  acc.store();
  for (auto& t : ts)
    for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data<float>()[i], 3.0f + std::ldexp(1.0f, -22)) << i;
  // One rank: nothing to reduce.
  acc.zero();
  auto single = dist::make_single_communicator();
  acc.allreduce_sum(*single);
  acc.store();
  EXPECT_EQ(ts[0].data<float>()[1], 0.0f);
}

// The overlapped reduction: tensors listed by the stage at which the backward finishes them; during
// the last pass a bucket's all-reduce starts as soon as every tensor in it is ready, later stages wait
// for finish(), and the result equals the blocking reduction.
TEST(DataParallel, GradientAccumulatorStartsEachBucketWhenItsLayersAreDone) {
  std::vector<Tensor> ts;
  for (int64_t n : {3, 5, 2, 7, 4, 1}) ts.push_back(Tensor::zeros({n}, DType::F32));
  std::vector<Tensor*> ptrs;
  for (auto& t : ts) ptrs.push_back(&t);
  const std::vector<int> stages = {4, 2, 2, 1, 0, -1};  // lm_head copy, layers 2, 1, 0, embedding copy
  GradientAccumulator acc(ptrs, 8, stages);             // buckets: [3+5] (stages 4, 2), [2] (2), [7] (1), [4+1] (0, -1)
  ASSERT_EQ(acc.buckets(), 4);
  EXPECT_THROW(GradientAccumulator(ptrs, 8, {0, 1, 2, 3, 4, 5}), graft::Error);  // not by decreasing stage
  ScriptedComm c(0, {"", ""});
  c.peer_value = 0.5f;
  acc.zero();
  for (auto& t : ts) std::fill_n(t.data<float>(), t.numel(), 1.0f);
  acc.add();  // an earlier pass of the step
  for (auto& t : ts) std::fill_n(t.data<float>(), t.numel(), 2.0f);
  acc.begin_last(c);  // the last pass: the backward reports its stages
  acc.ready(4);
  EXPECT_EQ(c.double_allreduces, 0) << "bucket 0 also holds stage 2";
  acc.ready(2);
  EXPECT_EQ(c.double_allreduces, 2) << "buckets 0 and 1 are complete";
  acc.ready(1);
  EXPECT_EQ(c.double_allreduces, 3);
  acc.ready(0);
  EXPECT_EQ(c.double_allreduces, 3) << "bucket 3 also holds the embedding";
  acc.finish(c);  // the embedding was never reported (e.g. no such stage ran): added and reduced here
  EXPECT_EQ(c.double_allreduces, 4);
  EXPECT_EQ(acc.buckets_started_early(), 3);
  acc.store();
  for (auto& t : ts)
    for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data<float>()[i], 3.5f);
  // A rank without a sequence this step reduces every bucket in finish().
  acc.zero();
  ScriptedComm idle(1, {"", ""});
  acc.finish(idle);
  EXPECT_EQ(idle.double_allreduces, 4);
  EXPECT_EQ(acc.buckets_started_early(), 0);
}

TEST(DataParallel, ReplicaCheckNamesTheDivergedRank) {
  Tensor t = Tensor::zeros({4}, DType::F32);
  const uint64_t fp = fingerprint({&t});
  t.data<float>()[2] = 1e-30f;
  EXPECT_NE(fingerprint({&t}), fp);
  ScriptedComm ok(0, {"", fmt::format("{:016x}", fingerprint({&t}))});
  EXPECT_NO_THROW(check_replicas_agree(ok, fingerprint({&t}), 3));
  ScriptedComm bad(0, {"", fmt::format("{:016x}", fp)});
  try {
    check_replicas_agree(bad, fingerprint({&t}), 3);
    FAIL() << "accepted";
  } catch (const graft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("after step 3 the LoRA weights of rank(s) 1 differ"), std::string::npos) << e.what();
  }
}

}  // namespace
