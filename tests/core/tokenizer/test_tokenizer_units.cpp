// Unit tests of the tokenizer components on small hand-built tokenizer.json documents.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "graft/error.hpp"
#include "graft/tokenizer/detail.hpp"
#include "graft/tokenizer/tokenizer.hpp"

using graft::tokenizer::StreamDecoder;
using graft::tokenizer::Tokenizer;
using json = nlohmann::json;
namespace fs = std::filesystem;
namespace detail = graft::tokenizer::detail;

namespace {

// A tokenizer.json with a sentencepiece-style char vocabulary: a b c ab bc abc ▁ and <0xXX> bytes.
json sp_doc() {
  json vocab = {{"<unk>", 0}, {"a", 1}, {"b", 2}, {"c", 3}, {"ab", 4}, {"bc", 5}, {"abc", 6}, {"\xE2\x96\x81", 7}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    vocab[buf] = 8 + b;
  }
  return json{{"version", "1.0"},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"unk_token", "<unk>"}, {"fuse_unk", false}, {"byte_fallback", false},
                         {"vocab", vocab}, {"merges", json::array({"b c", "a b", "a bc"})}}}};
}

// A byte-level tokenizer: the 256 byte characters and no merges.
json byte_level_doc() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[detail::byte_to_unicode(static_cast<uint8_t>(b))] = b;
  return json{{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"decoder", {{"type", "ByteLevel"}}},
              {"added_tokens", json::array({{{"id", 256}, {"content", "<|end|>"}, {"special", true}}})}};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const graft::Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST(TokenizerBpe, MergesFollowRankAndBothMergeFormatsAgree) {
  auto d = sp_doc();
  Tokenizer t = Tokenizer::from_json(d.dump());
  // "b c" has rank 0 so "abc" -> a + bc -> (a bc) = abc.
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{6}));
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{4}));
  EXPECT_EQ(t.encode("abab"), (std::vector<int32_t>{4, 4}));
  d["model"]["merges"] = json::array({json::array({"b", "c"}), json::array({"a", "b"}), json::array({"a", "bc"})});
  Tokenizer t2 = Tokenizer::from_json(d.dump());
  EXPECT_EQ(t2.encode("abcab"), t.encode("abcab"));
}

TEST(TokenizerBpe, IgnoreMergesTakesWholeWord) {
  auto d = sp_doc();
  d["model"]["merges"] = json::array({"a b", "b c"});  // "abc" unreachable by merges: a b + c
  Tokenizer t = Tokenizer::from_json(d.dump());
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{4, 3}));
  d["model"]["ignore_merges"] = true;
  Tokenizer t2 = Tokenizer::from_json(d.dump());
  EXPECT_EQ(t2.encode("abc"), (std::vector<int32_t>{6}));
}

TEST(TokenizerBpe, UnknownFuseAndByteFallback) {
  auto d = sp_doc();
  Tokenizer t = Tokenizer::from_json(d.dump());
  EXPECT_EQ(t.encode("axyb"), (std::vector<int32_t>{1, 0, 0, 2}));
  d["model"]["fuse_unk"] = true;
  EXPECT_EQ(Tokenizer::from_json(d.dump()).encode("axyb"), (std::vector<int32_t>{1, 0, 2}));
  d["model"]["byte_fallback"] = true;
  Tokenizer bf = Tokenizer::from_json(d.dump());
  // "é" = C3 A9 -> <0xC3> <0xA9>
  EXPECT_EQ(bf.encode("a\xC3\xA9"), (std::vector<int32_t>{1, 8 + 0xC3, 8 + 0xA9}));
  d["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({{{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}};
  Tokenizer bf2 = Tokenizer::from_json(d.dump());
  EXPECT_EQ(bf2.decode({1, 8 + 0xC3, 8 + 0xA9}), "a\xC3\xA9");
  EXPECT_EQ(bf2.decode({1, 8 + 0xC3, 2}), "a\xEF\xBF\xBD" "b");  // lone lead byte -> one U+FFFD per byte
}

TEST(TokenizerAddedTokens, SplitBeforeNormalizationWithStripFlags) {
  auto d = sp_doc();
  d["normalizer"] = {{"type", "Lowercase"}};
  d["added_tokens"] = json::array({
      {{"id", 300}, {"content", "<X>"}, {"special", true}, {"normalized", false}, {"lstrip", true}, {"rstrip", true}},
      {{"id", 301}, {"content", "ab"}, {"special", false}, {"normalized", true}, {"single_word", true}},
  });
  Tokenizer t = Tokenizer::from_json(d.dump());
  // Like HF, ids of added tokens absent from the vocabulary are re-derived: vocabulary size (264), then +1.
  const int32_t x = t.token_to_id("<X>").value(), ab = t.token_to_id("ab").value();
  EXPECT_EQ(x, 264);
  EXPECT_EQ(ab, 4);  // "ab" is in the model vocabulary: it keeps that id
  // lstrip/rstrip swallow the spaces around <X>; the normalizer (lowercase) does not touch it.
  EXPECT_EQ(t.encode("a  <X>  b"), (std::vector<int32_t>{1, x, 2}));
  EXPECT_EQ(t.encode("a<x>b"), (std::vector<int32_t>{1, 0, 0, 0, 2}));  // lowercased text does not match "<X>"
  // single_word: "ab" only matches as a whole word; inside "cabc" the model merges instead.
  EXPECT_EQ(t.encode("AB"), (std::vector<int32_t>{ab}));
  EXPECT_EQ(t.encode("cabc"), (std::vector<int32_t>{3, 6}));
  EXPECT_TRUE(t.is_special(x));
  EXPECT_FALSE(t.is_special(ab));
  EXPECT_EQ(t.decode({1, x, 2}, true), "a b");
}

TEST(TokenizerAddedTokens, SpecialTokensNotAddedUnlessAsked) {
  auto d = sp_doc();
  d["added_tokens"] = json::array({{{"id", 300}, {"content", "<s>"}, {"special", true}}});
  d["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [300], "tokens": ["<s>"]}}})");
  Tokenizer t = Tokenizer::from_json(d.dump());
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{4}));
  EXPECT_EQ(t.encode("ab", true), (std::vector<int32_t>{300, 4}));
  EXPECT_EQ(t.encode("", true), (std::vector<int32_t>{300}));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(TokenizerComponents, SplitBehaviors) {
  using detail::SplitBehavior;
  auto run = [](SplitBehavior b, bool invert) {
    detail::Pattern p(json{{"String", "-"}}, "test");
    std::vector<std::tuple<size_t, size_t, bool>> m;
    detail::Piece piece{"a-b--c", true};
    p.find_matches(piece.text, m);
    if (invert)
      for (auto& x : m) std::get<2>(x) = !std::get<2>(x);
    std::vector<detail::Piece> out;
    detail::split_with_behavior(piece, m, b, out);
    std::vector<std::string> r;
    for (auto& q : out) r.push_back(q.text);
    return r;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(run(SplitBehavior::Removed, false), (V{"a", "b", "c"}));
  EXPECT_EQ(run(SplitBehavior::Isolated, false), (V{"a", "-", "b", "-", "-", "c"}));
  EXPECT_EQ(run(SplitBehavior::MergedWithPrevious, false), (V{"a-", "b-", "-", "c"}));
  EXPECT_EQ(run(SplitBehavior::MergedWithNext, false), (V{"a", "-b", "-", "-c"}));
  EXPECT_EQ(run(SplitBehavior::Contiguous, false), (V{"a", "-", "b", "--", "c"}));
  EXPECT_EQ(run(SplitBehavior::Removed, true), (V{"-", "-", "-"}));
}

TEST(TokenizerComponents, RegexUsesUnicodePropertiesAndLookahead) {
  detail::Regex re(R"(\p{L}+|\p{N}{1,3}|\s+(?!\S)|\s+)", "test");
  std::string s = "h\xC3\xA9llo 12345   x";
  std::vector<std::string> got;
  re.for_each(s, [&](size_t a, size_t b) { got.push_back(s.substr(a, b - a)); });
  EXPECT_EQ(got, (std::vector<std::string>{"h\xC3\xA9llo", " ", "123", "45", "  ", " ", "x"}));
}

TEST(TokenizerComponents, NormalizersNfcNfkcLowercase) {
  EXPECT_EQ(detail::unicode_normalize("e\xCC\x81", "NFC"), "\xC3\xA9");
  EXPECT_EQ(detail::unicode_normalize("\xEF\xAC\x81", "NFKC"), "fi");  // U+FB01 ligature
  EXPECT_EQ(detail::lowercase("\xC3\x89T\xC3\x89"), "\xC3\xA9t\xC3\xA9");
}

TEST(TokenizerErrors, UnknownComponentNamesTypeAndPath) {
  auto d = sp_doc();
  d["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFC"}}, {{"type", "Frobnicate"}}})}};
  std::string e = error_of([&] { Tokenizer::from_json(d.dump(), "x/tokenizer.json"); });
  EXPECT_NE(e.find("Frobnicate"), std::string::npos) << e;
  EXPECT_NE(e.find("/normalizer/normalizers/1"), std::string::npos) << e;
  EXPECT_NE(e.find("x/tokenizer.json"), std::string::npos) << e;

  d = sp_doc();
  d["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  e = error_of([&] { Tokenizer::from_json(d.dump()); });
  EXPECT_NE(e.find("pre_tokenizer"), std::string::npos) << e;
  EXPECT_NE(e.find("UnicodeScripts"), std::string::npos) << e;

  d = sp_doc();
  d["decoder"] = {{"type", "WordPiece"}};
  e = error_of([&] { Tokenizer::from_json(d.dump()); });
  EXPECT_NE(e.find("/decoder"), std::string::npos) << e;

  d = sp_doc();
  d["model"]["type"] = "Unigram";
  e = error_of([&] { Tokenizer::from_json(d.dump()); });
  EXPECT_NE(e.find("Unigram"), std::string::npos) << e;

  d = sp_doc();
  d["model"]["merges"] = json::array({"a zz"});
  e = error_of([&] { Tokenizer::from_json(d.dump()); });
  EXPECT_NE(e.find("/model/merges/0"), std::string::npos) << e;
}

TEST(TokenizerErrors, MalformedJsonNamesTheFile) {
  fs::path dir = fs::temp_directory_path() / ("graft_tok_bad_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\", ";
  std::string e = error_of([&] { Tokenizer::from_file(dir.string()); });
  EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << e;
  EXPECT_NE(e.find("malformed JSON"), std::string::npos) << e;
  fs::remove(dir / "tokenizer.json");
  e = error_of([&] { Tokenizer::from_file(dir.string()); });
  EXPECT_NE(e.find("no tokenizer.json"), std::string::npos) << e;
  fs::remove_all(dir);
}

TEST(TokenizerStream, HoldsIncompleteUtf8UntilComplete) {
  Tokenizer t = Tokenizer::from_json(byte_level_doc().dump());
  std::string text = "h\xC3\xA9 \xE2\x98\x83\xF0\x9F\x98\x80!";  // "hé ☃😀!"
  auto ids = t.encode(text);
  ASSERT_EQ(ids.size(), text.size());  // one id per byte
  StreamDecoder sd(t);
  std::string all;
  std::vector<std::string> outs;
  for (int32_t id : ids) {
    std::string s = sd.step(id);
    EXPECT_TRUE(graft::tokenizer::utf8_valid(s)) << "broken UTF-8 emitted";
    outs.push_back(s);
    all += s;
  }
  all += sd.flush();
  EXPECT_EQ(all, text);
  EXPECT_EQ(all, t.decode(ids));
  EXPECT_EQ(outs[1], "");              // first byte of é held back
  EXPECT_EQ(outs[2], "\xC3\xA9");      // completed
  EXPECT_EQ(outs[6], "\xE2\x98\x83");  // ☃ after its third byte
}

TEST(TokenizerStream, ByteFallbackAndMetaspaceStripOnStories) {
  fs::path dir = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "models" / "stories260K_hf_llama";
  if (!fs::exists(dir / "tokenizer.json")) GTEST_SKIP() << "shared assets absent: " << dir;
  Tokenizer t = Tokenizer::from_file(dir.string());
  std::string text = "Once upon a time \xE2\x98\x83 there was a \xF0\x9F\x98\x80 cat.";
  auto ids = t.encode(text);
  StreamDecoder sd(t, true);
  std::string all;
  for (int32_t id : ids) {
    std::string s = sd.step(id);
    EXPECT_TRUE(graft::tokenizer::utf8_valid(s));
    all += s;
  }
  all += sd.flush();
  EXPECT_EQ(all, t.decode(ids, true));
  EXPECT_EQ(all, text);
  EXPECT_EQ(t.config().add_bos_token, std::optional<bool>(true));
}

TEST(TokenizerUtf8, LossyLikeRust) {
  using graft::tokenizer::utf8_lossy;
  EXPECT_EQ(utf8_lossy("ab"), "ab");
  EXPECT_EQ(utf8_lossy("a\xC3"), "a\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xE2\x98"), "\xEF\xBF\xBD");                      // truncated 3-byte: one U+FFFD
  EXPECT_EQ(utf8_lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");          // two invalid bytes
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate: 3
}

// Token ids are range-checked on their 64-bit JSON values before narrowing (2^32+5 used to become 5,
// 1e12 was reported as "negative id -727379968").
TEST(TokenizerErrors, TokenIdsAreRangeCheckedBeforeNarrowing) {
  auto vocab_error = [](const json& id) {
    auto d = sp_doc();
    d["model"]["vocab"]["zz"] = id;
    return error_of([&] { Tokenizer::from_json(d.dump(), "x/tokenizer.json"); });
  };
  std::string e = vocab_error(json((int64_t{1} << 32) + 5));
  EXPECT_NE(e.find("token id 4294967301 is out of range [0, 16777215]"), std::string::npos) << e;
  EXPECT_NE(e.find("/model/vocab['zz']"), std::string::npos) << e;
  e = vocab_error(json::parse("1e12"));
  EXPECT_NE(e.find("token id 1000000000000 is out of range"), std::string::npos) << e;
  EXPECT_EQ(e.find("-727379968"), std::string::npos) << e;
  e = vocab_error(json(-3));
  EXPECT_NE(e.find("token id -3 is out of range"), std::string::npos) << e;
  e = vocab_error(json(18446744073709551615ull));
  EXPECT_NE(e.find("token id 18446744073709551615 is out of range"), std::string::npos) << e;
  e = vocab_error(json(2.5));
  EXPECT_NE(e.find("token id 2.5 is not an integer"), std::string::npos) << e;
  e = vocab_error(json("7"));
  EXPECT_NE(e.find("token id must be an integer, got string"), std::string::npos) << e;

  auto d = byte_level_doc();
  d["added_tokens"][0]["id"] = int64_t{1} << 40;
  e = error_of([&] { Tokenizer::from_json(d.dump(), "x/tokenizer.json"); });
  EXPECT_NE(e.find("/added_tokens/0/id: token id 1099511627776 is out of range"), std::string::npos) << e;

  d = byte_level_doc();
  d["post_processor"] = {{"type", "BertProcessing"}, {"sep", json::array({"[SEP]", (int64_t{1} << 32) + 1})},
                         {"cls", json::array({"[CLS]", 1})}};
  e = error_of([&] { Tokenizer::from_json(d.dump()); });
  EXPECT_NE(e.find("/sep/1: token id 4294967297 is out of range"), std::string::npos) << e;

  // The largest accepted id loads.
  EXPECT_EQ(detail::token_id(json(detail::kMaxTokenId), "t"), detail::kMaxTokenId);
  EXPECT_EQ(detail::token_id(json(4096.0), "t"), 4096);
}
