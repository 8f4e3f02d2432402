// Stop strings and incremental detokenization: no part of a stop string is ever emitted.
#include <gtest/gtest.h>

#include <random>

#include "graft/model/presets.hpp"
#include "text_stream.hpp"
#include "tiny_tokenizer.hpp"

using namespace graft;
using namespace graft::serve::http;

namespace {
using graft::testing::tiny_tok;

// Feeds `pieces` and returns (everything emitted, every emission).
std::pair<std::string, std::vector<std::string>> feed(StopStringFilter& f, const std::vector<std::string>& pieces) {
  std::string all;
  std::vector<std::string> outs;
  for (const auto& p : pieces) {
    outs.push_back(f.push(p));
    all += outs.back();
  }
  outs.push_back(f.finish());
  all += outs.back();
  return {all, outs};
}
}  // namespace

TEST(StopStrings, HoldbackIsTheLongestPossibleStart) {
  EXPECT_EQ(stop_prefix_holdback("hello wor", {"world"}), 3u);
  EXPECT_EQ(stop_prefix_holdback("hello", {"world"}), 0u);
  EXPECT_EQ(stop_prefix_holdback("abcab", {"abcabd"}), 5u);
  EXPECT_EQ(stop_prefix_holdback("xx#", {"##", "#!"}), 1u);
  EXPECT_EQ(stop_prefix_holdback("x", {"x"}), 0u);  // a complete match is not a "prefix"
}

TEST(StopStrings, SplitAcrossPiecesIsCutAndNeverEmitted) {
  StopStringFilter f({"STOP"});
  auto [all, outs] = feed(f, {"hello S", "TO", "P and more"});
  EXPECT_EQ(all, "hello ");
  EXPECT_TRUE(f.stopped());
  for (const auto& o : outs) EXPECT_EQ(o.find('S'), std::string::npos) << o;
  EXPECT_EQ(outs[0], "hello ");
  EXPECT_EQ(outs[1], "");
}

TEST(StopStrings, FalseStartIsReleased) {
  StopStringFilter f({"STOP"});
  auto [all, outs] = feed(f, {"a ST", "ART b"});
  EXPECT_EQ(all, "a START b");
  EXPECT_FALSE(f.stopped());
  EXPECT_EQ(outs[0], "a ");
  EXPECT_EQ(outs[1], "START b");
}

TEST(StopStrings, EarliestOfSeveralWinsAndIncludeStopKeepsIt) {
  StopStringFilter f({"bb", "a"});
  EXPECT_EQ(feed(f, {"xbba"}).first, "x");
  StopStringFilter g({"\n\n"}, /*include_stop=*/true);
  EXPECT_EQ(feed(g, {"line\n", "\nnext"}).first, "line\n\n");
  StopStringFilter h({"end"});
  EXPECT_EQ(feed(h, {"the e", "n"}).first, "the en");  // finish() releases an unfinished start
}

TEST(StopStrings, RandomizedNeverLeaksAStopPrefix) {
  std::mt19937 rng(7);
  const std::string alphabet = "ab#";
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    const int len = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < len; ++i) text += alphabet[rng() % alphabet.size()];
    std::vector<std::string> stops = {"##a", "bab"};
    // Reference: cut at the earliest occurrence of any stop string.
    size_t cut = std::string::npos;
    for (const auto& s : stops) cut = std::min(cut, text.find(s));
    const std::string expect = cut == std::string::npos ? text : text.substr(0, cut);
    std::vector<std::string> pieces;
    for (size_t i = 0; i < text.size();) {
      size_t n = 1 + rng() % 4;
      pieces.push_back(text.substr(i, n));
      i += n;
    }
    StopStringFilter f(stops);
    auto [all, outs] = feed(f, pieces);
    ASSERT_EQ(all, expect) << text;
    // A streamed prefix never ends inside a stop string that later completes.
    std::string emitted;
    for (const auto& o : outs) {
      emitted += o;
      ASSERT_EQ(expect.compare(0, emitted.size(), emitted), 0) << text;
    }
  }
}

TEST(ChoiceTextTest, DecodesIncrementallyAndStops) {
  const auto& tok = tiny_tok();
  // "é" is two byte tokens: nothing is emitted after the first.
  ChoiceText t(tok, true, {"!!"}, false);
  std::string all;
  for (int32_t id : std::vector<int32_t>{'o', 'k', 0xC3}) all += t.on_token(id);
  EXPECT_EQ(all, "ok");
  all += t.on_token(0xA9);
  EXPECT_EQ(all, "ok\xC3\xA9");
  all += t.on_token('!');
  EXPECT_EQ(all, "ok\xC3\xA9");  // held: may be the start of "!!"
  all += t.on_token('!');
  EXPECT_TRUE(t.stopped());
  EXPECT_EQ(all + t.finish(), "ok\xC3\xA9");
  // Special tokens are skipped with skip_special; the decoder's pending bytes flush as U+FFFD.
  ChoiceText u(tok, true, {}, false);
  std::string s = u.on_token('a');
  s += u.on_token(258);
  s += u.on_token(0xE2);
  s += u.finish();
  EXPECT_EQ(s, "a\xEF\xBF\xBD");
}
