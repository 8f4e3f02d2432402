// Data pipeline: formats, chat loss masks, packing, validation split, HDF5 cache, malformed input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include "graft/error.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/data.hpp"

namespace fs = std::filesystem;
using graft::chat_template::ChatTemplate;
using graft::tokenizer::Tokenizer;
using namespace graft::train;
using ojson = nlohmann::ordered_json;

namespace {

constexpr int32_t kEnd = 256, kStart = 257, kImEnd = 258;  // tiny tokenizer: <|endoftext|>, <|im_start|>, <|im_end|>
constexpr int32_t X = kIgnoreIndex;

std::string assets() { return std::string(GRAFT_SOURCE_DIR) + "/../shared/assets"; }

std::vector<int32_t> B(const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); }
std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
// Labels from ids + a per-token trained flag (hand-checked shift).
std::vector<int32_t> shifted(const std::vector<int32_t>& ids, const std::vector<int>& trained) {
  std::vector<int32_t> l(ids.size(), X);
  for (size_t i = 0; i + 1 < ids.size(); ++i)
    if (trained[i + 1]) l[i] = ids[i + 1];
  return l;
}
// The trained target tokens of a sample, in order.
std::vector<int32_t> targets(const Sample& s) {
  std::vector<int32_t> t;
  for (int32_t l : s.labels)
    if (l != X) t.push_back(l);
  return t;
}

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("graft_data_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_ / "tok");
    write("tok/tokenizer.json", graft::model::tiny_tokenizer_json().dump());
    write("tok/tokenizer_config.json", graft::model::tiny_tokenizer_config().dump());
    tok_ = std::make_unique<Tokenizer>(Tokenizer::from_file((dir_ / "tok").string()));
    tpl_ = std::make_unique<ChatTemplate>(ChatTemplate::from_tokenizer_config((dir_ / "tok").string()));
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  std::vector<Sample> load(const std::string& type, const std::string& file, const std::string& text,
                           const DataOptions& o = {}, bool with_tpl = true, DatasetSpec spec = {}) {
    spec.path = write(file, text);
    spec.type = type;
    return load_dataset(spec, *tok_, with_tpl ? tpl_.get() : nullptr, o, &stats_);
  }
  std::string error_of(const std::string& type, const std::string& file, const std::string& text,
                       DatasetSpec spec = {}) {
    try {
      load(type, file, text, {}, true, spec);
    } catch (const graft::Error& e) {
      EXPECT_FALSE(e.fix().empty()) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no error for " << text;
    return {};
  }
  fs::path dir_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<ChatTemplate> tpl_;
  DataStats stats_;
};

// ---- formats (tiny byte-level tokenizer: id = byte) ----

TEST_F(DataTest, AlpacaPlainWithoutTemplate) {
  auto s = load("alpaca", "a.json",
                R"([{"instruction":"Hi","input":"","output":"Yo"},{"instruction":"Do","input":"x","output":"k"}])", {},
                false);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].ids, cat({B("HiYo"), {kImEnd}}));
  EXPECT_EQ(s[0].labels, (std::vector<int32_t>{X, 'Y', 'o', kImEnd, X}));
  EXPECT_EQ(s[1].ids, cat({B("Do\nxk"), {kImEnd}}));
  EXPECT_EQ(s[1].labels, (std::vector<int32_t>{X, X, X, 'k', kImEnd, X}));
  DataOptions o;
  o.add_eos = false;
  o.train_on_inputs = true;
  s = load("alpaca", "b.jsonl", R"({"instruction":"Hi","output":"Yo"})", o, false);
  EXPECT_EQ(s[0].ids, B("HiYo"));
  EXPECT_EQ(s[0].labels, (std::vector<int32_t>{'i', 'Y', 'o', X}));
}

TEST_F(DataTest, AlpacaThroughChatTemplate) {
  auto s = load("alpaca", "a.jsonl", R"({"instruction":"Hi","output":"Yo","system":"S"})");
  ASSERT_EQ(s.size(), 1u);
  auto ids = cat({{kStart}, B("system\nS"), {kImEnd}, B("\n"), {kStart}, B("user\nHi"), {kImEnd}, B("\n"), {kStart},
                  B("assistant\nYo"), {kImEnd}, B("\n")});
  EXPECT_EQ(s[0].ids, ids);
  std::vector<int> tr(ids.size(), 0);
  tr[ids.size() - 4] = tr[ids.size() - 3] = tr[ids.size() - 2] = 1;  // Y o <|im_end|>
  EXPECT_EQ(s[0].labels, shifted(ids, tr));
}

TEST_F(DataTest, MessagesMultiTurnMasks) {
  std::string conv =
      R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"Q1"},{"role":"assistant","content":"A1"},)"
      R"({"role":"user","content":"Q2"},{"role":"assistant","content":"A2"}]})";
  auto s = load("chat_template", "m.jsonl", conv + "\n\n" + conv + "\n");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], s[1]);
  auto ids = cat({{kStart}, B("system\nS"), {kImEnd}, B("\n"), {kStart}, B("user\nQ1"), {kImEnd}, B("\n"), {kStart},
                  B("assistant\nA1"), {kImEnd}, B("\n"), {kStart}, B("user\nQ2"), {kImEnd}, B("\n"), {kStart},
                  B("assistant\nA2"), {kImEnd}, B("\n")});
  EXPECT_EQ(s[0].ids, ids);
  EXPECT_EQ(targets(s[0]), cat({B("A1"), {kImEnd}, B("A2"), {kImEnd}}));
  EXPECT_EQ(s[0].labels.back(), X);
  EXPECT_EQ(stats_.records, 2);
  EXPECT_EQ(stats_.trained_tokens, 12);

  auto with_eos = [&](const std::string& rule) {
    DatasetSpec spec;
    spec.train_on_eos = rule;
    return targets(load("chat_template", "m2.jsonl", conv, {}, true, spec)[0]);
  };
  EXPECT_EQ(with_eos("last"), cat({B("A1A2"), {kImEnd}}));
  EXPECT_EQ(with_eos("none"), B("A1A2"));
  EXPECT_EQ(with_eos("all"), cat({{kImEnd, kImEnd}, B("A1"), {kImEnd, kImEnd}, B("A2"), {kImEnd}}));

  DataOptions o;
  o.train_on_inputs = true;
  auto all = load("chat_template", "m3.jsonl", conv, o)[0];
  EXPECT_EQ(targets(all), std::vector<int32_t>(ids.begin() + 1, ids.end()));

  DatasetSpec users;
  users.roles_to_train = {"user"};
  users.train_on_eos = "none";
  EXPECT_EQ(targets(load("chat_template", "m4.jsonl", conv, {}, true, users)[0]),
            cat({{kStart}, B("user\nQ1"), {kStart}, B("user\nQ2")}));
}

TEST_F(DataTest, GenerationMarkersGiveSameMask) {
  ChatTemplate gen(
      "{% for m in messages %}{% if m.role == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
      "{{ m.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}"
      "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  ojson msgs = ojson::parse(
      R"([{"role":"user","content":"Q1"},{"role":"assistant","content":"A1"},{"role":"user","content":"Q2"},{"role":"assistant","content":"A2"}])");
  DatasetSpec spec;
  Sample a = tokenize_conversation(msgs, nullptr, *tok_, gen, spec, {});
  Sample b = tokenize_conversation(msgs, nullptr, *tok_, *tpl_, spec, {});
  EXPECT_EQ(a, b);
  EXPECT_EQ(targets(a), cat({B("A1"), {kImEnd}, B("A2"), {kImEnd}}));
}

TEST_F(DataTest, ShareGptInline) {
  auto s = load("sharegpt", "s.json",
                R"([{"system":"S","conversations":[{"from":"human","value":"Q"},{"from":"gpt","value":"A"}]}])");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].ids, cat({{kStart}, B("system\nS"), {kImEnd}, B("\n"), {kStart}, B("user\nQ"), {kImEnd}, B("\n"),
                           {kStart}, B("assistant\nA"), {kImEnd}, B("\n")}));
  EXPECT_EQ(targets(s[0]), (std::vector<int32_t>{'A', kImEnd}));
  // Custom keys and role names through the mappings.
  DatasetSpec spec;
  spec.field_messages = "turns";
  spec.message_property_mappings = {{"role", "speaker"}, {"content", "text"}};
  spec.roles = {{"bot", "assistant"}, {"me", "user"}};
  s = load("chat_template", "c.jsonl", R"({"turns":[{"speaker":"me","text":"Q"},{"speaker":"bot","text":"A"}]})", {},
           true, spec);
  EXPECT_EQ(targets(s[0]), (std::vector<int32_t>{'A', kImEnd}));
}

TEST_F(DataTest, CompletionChunks) {
  DataOptions o;
  o.sequence_len = 4;
  auto s = load("completion", "c.jsonl", R"({"text":"abcdefghij"})", o);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].ids, B("abcd"));
  EXPECT_EQ(s[0].labels, (std::vector<int32_t>{'b', 'c', 'd', X}));
  EXPECT_EQ(s[1].ids, B("efgh"));
  EXPECT_EQ(s[2].ids, cat({B("ij"), {kImEnd}}));
  EXPECT_EQ(s[2].labels, (std::vector<int32_t>{'j', kImEnd, X}));
  o.add_eos = false;
  s = load("completion", "d.jsonl", R"({"text":"abcdefghi"})", o);  // last chunk "i": no target -> dropped
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(stats_.dropped_no_loss, 1);
}

TEST_F(DataTest, Pretokenized) {
  auto s = load("pretokenized", "p.jsonl",
                "{\"input_ids\":[1,2,3,4],\"labels\":[-100,-100,3,4]}\n{\"input_ids\":[5,6,7]}\n");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].ids, (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(s[0].labels, (std::vector<int32_t>{X, 3, 4, X}));
  EXPECT_EQ(s[1].labels, (std::vector<int32_t>{6, 7, X}));
}

TEST_F(DataTest, OverLongDroppedOrTruncated) {
  std::string data = R"({"instruction":"Hi","output":"Yo"})" "\n" R"({"instruction":"A long prompt","output":"long"})";
  DataOptions o;
  o.sequence_len = 6;
  auto s = load("alpaca", "l.jsonl", data, o, false);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(stats_.dropped_too_long, 1);
  o.truncation = "truncate";
  o.sequence_len = 16;
  s = load("alpaca", "l2.jsonl", data, o, false);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[1].ids, B("A long promptlon"));
  EXPECT_EQ(s[1].labels, (std::vector<int32_t>{X, X, X, X, X, X, X, X, X, X, X, X, 'l', 'o', 'n', X}));
  EXPECT_EQ(stats_.truncated, 1);
}

// ---- malformed input ----

TEST_F(DataTest, MalformedInputs) {
  std::string e = error_of("alpaca", "bad.jsonl",
                           "{\"instruction\":\"a\",\"output\":\"b\"}\n\n{\"instruction\": oops}\n");
  EXPECT_NE(e.find("bad.jsonl"), std::string::npos) << e;
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;

  e = error_of("alpaca", "miss.json", R"([{"instruction":"a","output":"b"},{"instruction":"a"}])");
  EXPECT_NE(e.find("record 1"), std::string::npos) << e;
  EXPECT_NE(e.find("`output` is missing"), std::string::npos) << e;

  e = error_of("chat_template", "empty.jsonl", R"({"messages":[]})");
  EXPECT_NE(e.find("empty conversation"), std::string::npos) << e;

  e = error_of("chat_template", "role.jsonl", R"({"messages":[{"role":"robot","content":"x"}]})");
  EXPECT_NE(e.find("unknown role `robot`"), std::string::npos) << e;
  EXPECT_NE(e.find("messages[0].role"), std::string::npos) << e;

  e = error_of("chat_template", "type.jsonl", R"({"messages":[{"role":"user","content":42}]})");
  EXPECT_NE(e.find("messages[0].content"), std::string::npos) << e;
  EXPECT_NE(e.find("number"), std::string::npos) << e;

  e = error_of("sharegpt", "sg.jsonl", R"({"conversations":"hello"})");
  EXPECT_NE(e.find("`conversations`"), std::string::npos) << e;

  e = error_of("pretokenized", "p.jsonl", R"({"input_ids":[1,2,99999]})");
  EXPECT_NE(e.find("input_ids[2]"), std::string::npos) << e;

  e = error_of("completion", "c.json", R"([{"txt":"a"}])");
  EXPECT_NE(e.find("`text` is missing"), std::string::npos) << e;

  e = error_of("alpaca", "arr.json", "[1, 2]");
  EXPECT_NE(e.find("record 0"), std::string::npos) << e;

  e = error_of("alpaca", "broken.json", "[\n{\"instruction\": \"a\",\n \"output\": }\n]");
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;

  e = error_of("nonsense", "n.jsonl", "{}");
  EXPECT_NE(e.find("unknown type"), std::string::npos) << e;

  DatasetSpec spec;
  spec.path = (dir_ / "missing.jsonl").string();
  EXPECT_THROW(load_dataset(spec, *tok_, tpl_.get(), {}), graft::Error);
}

TEST_F(DataTest, MalformedNeverCrash) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"chat_template", R"({"messages":[1,2]})"},
      {"chat_template", R"({"messages":[{"role":"user","content":{"a":1}}]})"},
      {"chat_template", R"({"messages":[{"role":5,"content":"x"}]})"},
      {"chat_template", R"({"messages":[{"role":"user"}]})"},
      {"chat_template", R"({"messages":[{"role":"user","content":[{"type":"image","url":"x"}]}]})"},
      {"chat_template", R"({"messages":{"role":"user"}})"},
      {"sharegpt", R"({"conversations":[{"from":"human","value":"q"},{"from":"function_call","value":"not json"}]})"},
      {"sharegpt", R"({"conversations":[{"from":"human","value":"q"}],"tools":"[oops"})"},
      {"sharegpt", R"({"conversations":[{"from":"human","value":"q"}],"system":3})"},
      {"alpaca", R"({"instruction":["a"],"output":"b"})"},
      {"alpaca", R"({"instruction":"a","output":"b","history":[["only one"]]})"},
      {"completion", R"({"text":12})"},
      {"pretokenized", R"({"input_ids":"1 2 3"})"},
      {"pretokenized", R"({"input_ids":[1,2],"labels":[1]})"},
      {"pretokenized", R"({"input_ids":[1,2],"labels":[1,9]})"},
      {"pretokenized", R"({"input_ids":[1.5]})"},
      {"pretokenized", R"({"input_ids":[]})"},
      {"chat_template", "[1]"},
      {"chat_template", "\"just a string\""},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string file = "bad" + std::to_string(i) + ".jsonl";
    try {
      load(cases[i].first, file, cases[i].second);
      ADD_FAILURE() << "no error for " << cases[i].second;
    } catch (const graft::Error& e) {
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a graft::Error for " << cases[i].second << ": " << e.what();
    }
  }
}

// ---- packing and split ----

std::vector<Sample> random_samples(size_t n, size_t max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Sample> out(n);
  for (size_t i = 0; i < n; ++i) {
    size_t len = 1 + rng() % max_len;
    for (size_t k = 0; k < len; ++k) out[i].ids.push_back(static_cast<int32_t>(rng() % 200));
    out[i].labels.assign(len, X);
    for (size_t k = 0; k + 1 < len; ++k) out[i].labels[k] = out[i].ids[k + 1];
  }
  return out;
}

TEST(DataPack, Invariants) {
  const int64_t L = 64;
  auto samples = random_samples(300, 80, 1);
  auto packed = pack(samples, L);
  EXPECT_EQ(packed, pack(samples, L));  // deterministic
  std::vector<Sample> seen;
  std::vector<size_t> bin_of;
  for (size_t b = 0; b < packed.size(); ++b) {
    const auto& p = packed[b];
    ASSERT_LE(p.ids.size(), static_cast<size_t>(L));
    ASSERT_EQ(p.labels.size(), p.ids.size());
    ASSERT_EQ(p.positions.size(), p.ids.size());
    ASSERT_EQ(p.segments.size(), p.ids.size());
    for (size_t i = 0; i < p.ids.size(); ++i) {
      bool start = i == 0 || p.segments[i] != p.segments[i - 1];
      if (start) {
        EXPECT_EQ(p.positions[i], 0);
        EXPECT_EQ(p.segments[i], i == 0 ? 0 : p.segments[i - 1] + 1);
        seen.emplace_back();
        bin_of.push_back(b);
        if (i > 0) {
          EXPECT_EQ(p.labels[i - 1], X);  // no target across samples
        }
      } else {
        EXPECT_EQ(p.positions[i], p.positions[i - 1] + 1);
      }
      seen.back().ids.push_back(p.ids[i]);
      seen.back().labels.push_back(p.labels[i]);
    }
  }
  // Every sample that fits appears exactly once, unchanged; first-fit order within bins.
  std::vector<Sample> fits;
  for (const auto& s : samples)
    if (static_cast<int64_t>(s.ids.size()) <= L) fits.push_back(s);
  ASSERT_EQ(seen.size(), fits.size());
  std::vector<Sample> sorted_seen = seen, sorted_fits = fits;
  auto lt = [](const Sample& a, const Sample& b) { return a.ids < b.ids; };
  std::sort(sorted_seen.begin(), sorted_seen.end(), lt);
  std::sort(sorted_fits.begin(), sorted_fits.end(), lt);
  EXPECT_EQ(sorted_seen, sorted_fits);
  // First-fit: replaying the placement reproduces the bins.
  std::vector<size_t> fill;
  for (const auto& s : fits) {
    size_t b = 0;
    while (b < fill.size() && fill[b] + s.ids.size() > static_cast<size_t>(L)) ++b;
    if (b == fill.size()) fill.push_back(0);
    fill[b] += s.ids.size();
  }
  ASSERT_EQ(fill.size(), packed.size());
  for (size_t b = 0; b < fill.size(); ++b) EXPECT_EQ(fill[b], packed[b].ids.size());

  auto tr = pack(samples, L, "truncate");
  size_t total = 0;
  for (const auto& p : tr) total += std::count(p.positions.begin(), p.positions.end(), 0);
  EXPECT_EQ(total, samples.size());
  for (const auto& p : tr) EXPECT_EQ(p.labels.back(), X);
}

TEST(DataSplit, FractionCountDeterminism) {
  auto samples = random_samples(10, 5, 2);
  auto [tr, va] = split_validation(samples, 0.2, 42);
  EXPECT_EQ(tr.size(), 8u);
  EXPECT_EQ(va.size(), 2u);
  auto [tr2, va2] = split_validation(samples, 0.2, 42);
  EXPECT_EQ(va, va2);
  auto [tr3, va3] = split_validation(samples, 3, 7);
  EXPECT_EQ(va3.size(), 3u);
  // Disjoint, complete, original order kept.
  std::vector<Sample> merged;
  size_t a = 0, b = 0;
  for (const auto& s : samples) {
    if (a < tr3.size() && tr3[a] == s) merged.push_back(tr3[a++]);
    else if (b < va3.size() && va3[b] == s) merged.push_back(va3[b++]);
  }
  EXPECT_EQ(merged, samples);
  auto [all, none] = split_validation(samples, 0, 1);
  EXPECT_EQ(all.size(), 10u);
  EXPECT_TRUE(none.empty());
  EXPECT_THROW(split_validation(samples, 10, 1), graft::Error);
  EXPECT_THROW(split_validation(samples, -0.5, 1), graft::Error);
}

// ---- cache ----

TEST_F(DataTest, CacheHitMissCorruption) {
  DatasetSpec spec;
  spec.type = "chat_template";
  std::string conv = R"({"messages":[{"role":"user","content":"Q"},{"role":"assistant","content":"A"}]})";
  spec.path = write("c.jsonl", conv + "\n" + conv + "\n");
  std::string tj = graft::model::tiny_tokenizer_json().dump();
  std::string cache = (dir_ / "cache").string();
  DataStats st;
  auto fresh = load_dataset(spec, *tok_, tpl_.get(), {});
  auto a = load_dataset_cached(spec, *tok_, tj, tpl_.get(), {}, cache, &st);
  EXPECT_FALSE(st.cache_hit);
  EXPECT_EQ(a, fresh);
  ASSERT_TRUE(fs::exists(st.cache_file));
  EXPECT_EQ(fs::path(st.cache_file).extension(), ".h5");
  auto b = load_dataset_cached(spec, *tok_, tj, tpl_.get(), {}, cache, &st);
  EXPECT_TRUE(st.cache_hit);
  EXPECT_EQ(b, a);
  // Options change the key.
  DataOptions o;
  o.train_on_inputs = true;
  load_dataset_cached(spec, *tok_, tj, tpl_.get(), o, cache, &st);
  EXPECT_FALSE(st.cache_hit);
  // Corruption: garbage, truncation, a flipped byte in the data -> rebuilt identically.
  std::string file = dataset_cache_key(spec, tj, tpl_->source(), {}) + ".h5";
  ASSERT_TRUE(fs::exists(fs::path(cache) / file));
  auto corrupt = [&](auto&& f) {
    f((fs::path(cache) / file).string());
    auto c = load_dataset_cached(spec, *tok_, tj, tpl_.get(), {}, cache, &st);
    EXPECT_FALSE(st.cache_hit);
    EXPECT_EQ(c, a);
    load_dataset_cached(spec, *tok_, tj, tpl_.get(), {}, cache, &st);
    EXPECT_TRUE(st.cache_hit);
  };
  corrupt([](const std::string& p) { std::ofstream(p, std::ios::binary) << "not hdf5"; });
  corrupt([](const std::string& p) { fs::resize_file(p, fs::file_size(p) / 2); });
  corrupt([&](const std::string& p) {  // one stored id changed in place: the checksum catches it
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), {});
    std::string needle(reinterpret_cast<const char*>(a[0].ids.data()), 4 * 4);
    size_t pos = bytes.find(needle);
    ASSERT_NE(pos, std::string::npos);
    f.seekp(static_cast<std::streamoff>(pos));
    int32_t v = a[0].ids[0] ^ 1;
    f.write(reinterpret_cast<const char*>(&v), 4);
  });
  // Changing the data file changes the key.
  write("c.jsonl", conv + "\n");
  auto d = load_dataset_cached(spec, *tok_, tj, tpl_.get(), {}, cache, &st);
  EXPECT_FALSE(st.cache_hit);
  EXPECT_EQ(d.size(), 1u);
}

// ---- real templates and datasets from shared assets ----

class RealData : public ::testing::Test {
 protected:
  // The Qwen3 tokenizer takes about a second to load: once per suite.
  static void SetUpTestSuite() {
    std::string q = assets() + "/tokenizers/qwen3";
    if (!fs::exists(q + "/tokenizer.json")) return;
    stok_ = new Tokenizer(Tokenizer::from_file(q));
    stpl_ = new ChatTemplate(ChatTemplate::from_tokenizer_config(q));
  }
  static void TearDownTestSuite() {
    delete stok_;
    delete stpl_;
    stok_ = nullptr;
    stpl_ = nullptr;
  }
  void SetUp() override {
    if (!stok_) GTEST_SKIP() << "shared assets absent: " << assets() << "/tokenizers/qwen3";
    tok_ = stok_;
    tpl_ = stpl_;
    tmp_ = fs::temp_directory_path() / ("graft_realdata_" + std::to_string(::getpid()));
    fs::create_directories(tmp_);
  }
  void TearDown() override {
    std::error_code ec;
    if (!tmp_.empty()) fs::remove_all(tmp_, ec);
  }
  std::string trained_text(const Sample& s) { return tok_->decode(targets(s)); }
  // The first n records of a shared dataset as a temporary file (keeps the test fast).
  std::string head(const std::string& rel, size_t n) {
    std::string src = assets() + "/datasets/" + rel;
    if (!fs::exists(src)) return {};
    std::ifstream in(src);
    std::string out_path = (tmp_ / fs::path(rel).filename()).string();
    std::ofstream out(out_path);
    if (rel.ends_with(".jsonl")) {
      std::string line;
      for (size_t i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
    } else {
      ojson all = ojson::parse(in);
      ojson part = ojson::array();
      for (size_t i = 0; i < n && i < all.size(); ++i) part.push_back(all[i]);
      out << part.dump();
    }
    return out_path;
  }
  static inline Tokenizer* stok_ = nullptr;
  static inline ChatTemplate* stpl_ = nullptr;
  const Tokenizer* tok_ = nullptr;
  const ChatTemplate* tpl_ = nullptr;
  fs::path tmp_;
};

TEST_F(RealData, Qwen3MultiTurnMask) {
  ojson msgs = ojson::parse(R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi, who are you?"},
    {"role":"assistant","content":"Hello there! I'm a helpful assistant — ünïcode ok."},
    {"role":"user","content":"Thanks. Bye"},{"role":"assistant","content":"Bye now.\nTake care!"}])");
  DatasetSpec spec;
  DataOptions o;
  o.chat_template_kwargs["enable_thinking"] = false;
  Sample s = tokenize_conversation(msgs, nullptr, *tok_, *tpl_, spec, o);
  EXPECT_EQ(trained_text(s), "Hello there! I'm a helpful assistant — ünïcode ok.<|im_end|>Bye now.\nTake care!<|im_end|>");
  // ids are the tokenization of the whole rendering.
  graft::chat_template::RenderOptions ro;
  ro.extra = o.chat_template_kwargs;
  EXPECT_EQ(s.ids, tok_->encode(tpl_->render(msgs, ro).text));
  // Thinking mode: the template's empty <think> block of the last turn is part of the generation.
  Sample t = tokenize_conversation(msgs, nullptr, *tok_, *tpl_, spec, {});
  EXPECT_EQ(trained_text(t),
            "Hello there! I'm a helpful assistant — ünïcode ok.<|im_end|><think>\n\n</think>\n\nBye now.\nTake care!<|im_end|>");
}

TEST_F(RealData, ShareGptLlamaFactoryToolCalls) {
  std::string p = head("llamafactory/glaive_toolcall_en_demo.json", 6);
  if (p.empty()) GTEST_SKIP() << "glaive_toolcall_en_demo.json absent";
  DatasetSpec spec;
  spec.path = p;
  spec.type = "sharegpt";
  DataOptions o;
  o.sequence_len = 4096;
  o.chat_template_kwargs["enable_thinking"] = false;
  DataStats st;
  auto s = load_dataset(spec, *tok_, tpl_, o, &st);
  ASSERT_EQ(st.records, 6);
  ASSERT_EQ(s.size(), 6u);
  ojson first = ojson::parse(std::ifstream(p))[0];
  std::string text = trained_text(s[0]);
  // Trained: every gpt / function_call turn, never the human turns or observations.
  for (const auto& turn : first["conversations"]) {
    std::string v = turn["value"];
    std::string from = turn["from"];
    if (from == "gpt") {
      EXPECT_NE(text.find(v + "<|im_end|>"), std::string::npos) << v;
    }
    if (from == "human") {
      EXPECT_EQ(text.find(v), std::string::npos) << v;
    }
    if (from == "observation") {
      EXPECT_EQ(text.find(v.substr(0, 20)), std::string::npos);
    }
  }
  EXPECT_NE(text.find("<tool_call>\n{\"name\": \"search_recipes\""), std::string::npos) << text;
  EXPECT_EQ(text.find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(text.find("# Tools"), std::string::npos);
  if (::testing::Test::HasFailure()) std::cerr << text << "\n";
}

TEST_F(RealData, ShareGptFastChat) {
  std::string p = head("fastchat/dummy_conversation.json", 8);
  if (p.empty()) GTEST_SKIP() << "fastchat dummy_conversation.json absent";
  DatasetSpec spec;
  spec.path = p;
  spec.type = "sharegpt";
  DataOptions o;
  o.chat_template_kwargs["enable_thinking"] = false;
  auto s = load_dataset(spec, *tok_, tpl_, o);
  ASSERT_EQ(s.size(), 8u);
  EXPECT_EQ(trained_text(s[0]),
            "I am Vicuna, a language model trained by researchers from Large Model Systems Organization (LMSYS)."
            "<|im_end|>You too!<|im_end|>");
}

TEST_F(RealData, AlpacaAndMessagesDemos) {
  std::string p = head("llamafactory/alpaca_en_demo.json", 5);
  if (p.empty()) GTEST_SKIP() << "alpaca_en_demo.json absent";
  DatasetSpec spec;
  spec.path = p;
  spec.type = "alpaca";
  DataOptions o;
  o.sequence_len = 8192;
  o.chat_template_kwargs["enable_thinking"] = false;
  auto s = load_dataset(spec, *tok_, tpl_, o);
  ojson recs = ojson::parse(std::ifstream(p));
  ASSERT_EQ(s.size(), recs.size());
  for (size_t i = 0; i < s.size(); ++i)
    EXPECT_EQ(trained_text(s[i]), recs[i]["output"].get<std::string>() + "<|im_end|>") << i;

  std::string m = head("llamafactory/v1_sft_demo.jsonl", 5);
  if (m.empty()) return;
  spec.path = m;
  spec.type = "chat_template";
  s = load_dataset(spec, *tok_, tpl_, o);
  EXPECT_EQ(s.size(), 5u);
  EXPECT_NE(trained_text(s[0]).find("How can I assist you today?<|im_end|>"), std::string::npos) << trained_text(s[0]);
}

}  // namespace
