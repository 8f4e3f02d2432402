// Penalties, logprobs and the block allocator of the serving engine, on hand-checked values.
#include <gtest/gtest.h>

#include <cmath>

#include "graft/serve/api_error.hpp"
#include "graft/serve/block_allocator.hpp"
#include "graft/serve/sampler.hpp"

using namespace graft::serve;

TEST(Sampler, GreedyWithPenalties) {
  std::vector<float> logits = {1.0f, 3.0f, 2.9f, -1.0f};
  PenaltyState st;
  std::mt19937_64 rng(1);
  std::vector<float> scratch;
  RequestSampling s;
  s.temperature = 0.0f;
  EXPECT_EQ(pick_token(logits, s, st, rng, scratch), 1);
  // Repetition penalty 1.5 on token 1 (in the prompt): 3.0 / 1.5 = 2.0 < 2.9.
  st.prompt.insert(1);
  s.repetition_penalty = 1.5f;
  EXPECT_EQ(pick_token(logits, s, st, rng, scratch), 2);
  // Negative logits are multiplied: token 3 in the prompt stays last.
  st.prompt.insert(3);
  EXPECT_EQ(pick_token(logits, s, st, rng, scratch), 2);
  s.repetition_penalty = 1.0f;
  st.prompt.clear();
  // Presence 0.05 + frequency 0.1 x 2 on token 1: 3.0 - 0.25 = 2.75 < 2.9.
  st.add_generated(1);
  st.add_generated(1);
  s.presence_penalty = 0.05f;
  s.frequency_penalty = 0.1f;
  EXPECT_EQ(pick_token(logits, s, st, rng, scratch), 2);
  s.frequency_penalty = 0.0f;  // 3.0 - 0.05 > 2.9
  EXPECT_EQ(pick_token(logits, s, st, rng, scratch), 1);
  EXPECT_EQ(logits[1], 3.0f) << "input logits untouched";
}

TEST(Sampler, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
  RequestSampling s;
  s.temperature = 1.0f;
  PenaltyState st;
  std::vector<float> scratch;
  std::mt19937_64 a(7), b(7);
  int ones = 0;
  for (int i = 0; i < 4000; ++i) {
    const int32_t x = pick_token(logits, s, st, a, scratch);
    EXPECT_EQ(x, pick_token(logits, s, st, b, scratch));
    ones += x;
  }
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

TEST(Sampler, LogprobsAreLogSoftmaxWithOrderedTop) {
  std::vector<float> logits = {0.5f, 2.0f, 2.0f, -3.0f, 1.0f};
  TokenOut t;
  fill_logprobs(logits, 4, 3, t);
  double z = 0;
  for (float l : logits) z += std::exp(double(l));
  EXPECT_NEAR(t.logprob, 1.0 - std::log(z), 1e-6);
  ASSERT_EQ(t.top.size(), 3u);
  EXPECT_EQ(t.top[0].first, 1);  // tie 1/2 goes to the lower id
  EXPECT_EQ(t.top[1].first, 2);
  EXPECT_EQ(t.top[2].first, 4);
  fill_logprobs(logits, 0, 50, t);
  EXPECT_EQ(t.top.size(), 5u);
}

TEST(Sampler, ValidationNamesTheField) {
  RequestSampling s;
  s.presence_penalty = 3.0f;
  try {
    validate(s);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "presence_penalty");
  }
  s = {};
  s.temperature = NAN;
  EXPECT_THROW(validate(s), ApiError);
  s = {};
  s.repetition_penalty = 0.0f;
  EXPECT_THROW(validate(s), ApiError);
}

TEST(BlockAllocator, ReserveGrowsTablesAndFailsWithoutSideEffects) {
  BlockAllocator a(5);
  std::vector<int32_t> t1, t2;
  EXPECT_TRUE(a.reserve(t1, 9, 4));  // 3 blocks
  EXPECT_EQ(t1.size(), 3u);
  EXPECT_TRUE(a.reserve(t1, 12, 4));  // still 3
  EXPECT_EQ(a.free(), 2);
  EXPECT_FALSE(a.reserve(t2, 12, 4));  // needs 3, 2 free
  EXPECT_TRUE(t2.empty());
  EXPECT_EQ(a.free(), 2);
  a.release(t1);
  EXPECT_TRUE(t1.empty());
  EXPECT_EQ(a.free(), 5);
  EXPECT_TRUE(a.reserve(t2, 20, 4));
  std::sort(t2.begin(), t2.end());
  EXPECT_EQ(t2, (std::vector<int32_t>{0, 1, 2, 3, 4}));
}
