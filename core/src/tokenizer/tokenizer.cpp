// graft::Tokenizer: loading tokenizer.json, added-token splitting, encode/decode, streaming decode.
#include "graft/tokenizer/tokenizer.hpp"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/tokenizer/detail.hpp"

namespace graft::tokenizer {

using json = nlohmann::json;
using namespace detail;

namespace {

// Byte trie over added-token contents with leftmost-longest search (aho-corasick MatchKind::LeftmostLongest).
class AddedTrie {
 public:
  void add(std::string_view s, int32_t value) {
    if (s.empty()) return;
    int32_t node = 0;
    if (nodes_.empty()) nodes_.emplace_back();
    first_[static_cast<unsigned char>(s[0])] = true;
    for (char ch : s) {
      auto c = static_cast<unsigned char>(ch);
      int32_t child = -1;
      for (auto& [b, n] : nodes_[static_cast<size_t>(node)].kids)
        if (b == c) child = n;
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[static_cast<size_t>(node)].kids.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[static_cast<size_t>(node)].value < 0) nodes_[static_cast<size_t>(node)].value = value;
  }
  bool empty() const { return nodes_.empty(); }
  // Leftmost-longest match at or after `from`: returns false when none.
  bool find(std::string_view s, size_t from, size_t& st, size_t& en, int32_t& value) const {
    if (nodes_.empty()) return false;
    for (size_t p = from; p < s.size(); ++p) {
      if (!first_[static_cast<unsigned char>(s[p])]) continue;
      int32_t node = 0;
      int32_t best = -1;
      size_t best_end = 0;
      for (size_t q = p; q < s.size(); ++q) {
        auto c = static_cast<unsigned char>(s[q]);
        int32_t child = -1;
        for (auto& [b, n] : nodes_[static_cast<size_t>(node)].kids)
          if (b == c) {
            child = n;
            break;
          }
        if (child < 0) break;
        node = child;
        if (nodes_[static_cast<size_t>(node)].value >= 0) {
          best = nodes_[static_cast<size_t>(node)].value;
          best_end = q + 1;
        }
      }
      if (best >= 0) {
        st = p;
        en = best_end;
        value = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int32_t value = -1;
  };
  std::vector<Node> nodes_;
  bool first_[256] = {};
};

struct Seg {
  size_t a, b;
  int32_t added;  // index into added tokens, or -1
};

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t st = s.size() - 1;
  while (st > 0 && (static_cast<unsigned char>(s[st]) & 0xC0) == 0x80) --st;
  size_t i = st;
  return is_alphanumeric(next_cp(s, i));
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_alphanumeric(next_cp(s, i));
}

std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return {};
}

}  // namespace

class TokenizerImpl {
 public:
  std::string origin;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<PostProcessor> post;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_by_content;
  std::unordered_set<std::string, StringHash, std::equal_to<>> special_contents;
  AddedTrie trie_raw, trie_norm;
  TokenizerConfig config;

  void find_added(const AddedTrie& trie, std::string_view s, std::vector<Seg>& out) const {
    out.clear();
    size_t start_offset = 0, pos = 0, st, en;
    int32_t idx;
    while (pos < s.size() && trie.find(s, pos, st, en, idx)) {
      pos = en;
      const AddedToken& t = added[static_cast<size_t>(idx)];
      if (t.single_word) {
        bool start_space = st == 0 || !ends_with_word(s.substr(0, st));
        bool stop_space = en == s.size() || !starts_with_word(s.substr(en));
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        // leftmost position of the trailing whitespace run of s[..st]
        size_t ns = st;
        while (ns > 0) {
          size_t c = ns - 1;
          while (c > 0 && (static_cast<unsigned char>(s[c]) & 0xC0) == 0x80) --c;
          size_t i = c;
          if (!is_whitespace(next_cp(s, i))) break;
          ns = c;
        }
        st = std::max(ns, start_offset);
      }
      if (t.rstrip) {
        size_t i = en;
        while (i < s.size()) {
          size_t c = i;
          if (!is_whitespace(next_cp(s, i))) {
            i = c;
            break;
          }
        }
        en = i;
      }
      if (st > start_offset) out.push_back(Seg{start_offset, st, -1});
      out.push_back(Seg{st, en, idx});
      start_offset = en;
    }
    if (start_offset != s.size()) out.push_back(Seg{start_offset, s.size(), -1});
  }

  void encode_piece(Piece&& p, std::vector<int32_t>& ids) const {
    thread_local std::vector<Piece> pieces;
    pieces.clear();
    pieces.push_back(std::move(p));
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    for (auto& q : pieces) model->tokenize(q.text, ids);
  }

  std::vector<int32_t> encode(std::string_view text_in) const {
    std::string storage;
    std::string_view text = text_in;
    if (!utf8_valid(text)) {
      storage = utf8_lossy(text);
      text = storage;
    }
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    std::vector<Seg> segs, segs2;
    find_added(trie_raw, text, segs);
    for (auto& sg : segs) {
      if (sg.added >= 0) {
        ids.push_back(added[static_cast<size_t>(sg.added)].id);
        continue;
      }
      if (sg.a == sg.b) continue;
      std::string s(text.substr(sg.a, sg.b - sg.a));
      if (normalizer) normalizer->normalize(s);
      if (s.empty()) continue;
      if (trie_norm.empty()) {
        encode_piece(Piece{std::move(s), sg.a == 0}, ids);
        continue;
      }
      find_added(trie_norm, s, segs2);
      for (auto& s2 : segs2) {
        if (s2.added >= 0) {
          ids.push_back(added[static_cast<size_t>(s2.added)].id);
          continue;
        }
        if (s2.a == s2.b) continue;
        encode_piece(Piece{s.substr(s2.a, s2.b - s2.a), sg.a == 0 && s2.a == 0}, ids);
      }
    }
    return ids;
  }

  const std::string* id_to_token(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &added[it->second].content;
    return model->id_to_token(id);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(std::string_view text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    GRAFT_FAIL("re-download or fix the file; it must be a Hugging Face tokenizer.json",
               "{}: malformed JSON: {}", origin, e.what());
  }
  auto impl = std::make_unique<TokenizerImpl>();
  impl->origin = origin;
  try {
    GRAFT_CHECK(j.is_object(), "{}: tokenizer.json must be a JSON object", origin);
    GRAFT_CHECK_FIX(j.contains("model") && j["model"].is_object(), "pass a Hugging Face fast-tokenizer tokenizer.json",
                    "{}: missing \"model\" object", origin);
    auto path = [&](const char* k) { return origin + ": /" + k; };
    impl->model = std::make_unique<BpeModel>(j["model"], path("model"));
    impl->normalizer = make_normalizer(j.value("normalizer", json()), path("normalizer"));
    impl->pre_tokenizer = make_pre_tokenizer(j.value("pre_tokenizer", json()), path("pre_tokenizer"));
    impl->decoder = make_decoder(j.value("decoder", json()), path("decoder"));
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      const json& arr = j["added_tokens"];
      for (size_t i = 0; i < arr.size(); ++i) {
        const json& a = arr[i];
        GRAFT_CHECK(a.is_object() && a.contains("id") && a.contains("content"),
                    "{}: /added_tokens/{} needs \"id\" and \"content\"", origin, i);
        AddedToken t;
        t.id = detail::token_id(a["id"], fmt::format("{}: /added_tokens/{}/id", origin, i));
        t.content = a["content"].get<std::string>();
        t.single_word = a.value("single_word", false);
        t.lstrip = a.value("lstrip", false);
        t.rstrip = a.value("rstrip", false);
        t.normalized = a.value("normalized", !a.value("special", false));
        t.special = a.value("special", false);
        if (t.content.empty()) continue;
        // HF re-derives the id (AddedVocabulary::add_tokens): an existing added token or model token of the
        // same content keeps its id, otherwise the next id after the vocabulary / the largest added id.
        auto same = [&](const AddedToken& o) {
          return o.content == t.content && o.single_word == t.single_word && o.lstrip == t.lstrip && o.rstrip == t.rstrip &&
                 o.normalized == t.normalized && o.special == t.special;
        };
        if (std::any_of(impl->added.begin(), impl->added.end(), same)) continue;
        int32_t id;
        auto ex = impl->added_by_content.find(t.content);
        auto mid = impl->model->token_to_id(t.content);
        if (ex != impl->added_by_content.end()) {
          id = ex->second;
        } else if (mid) {
          id = *mid;
        } else {
          auto vsize = static_cast<int32_t>(impl->model->vocab_entries());
          int32_t mx = -1;
          for (auto& o : impl->added) mx = std::max(mx, o.id);
          id = mx < 0 ? vsize : (mx >= vsize || vsize == 0 ? mx + 1 : vsize);
        }
        t.id = id;
        if (t.special) impl->special_contents.insert(t.content);
        impl->added_by_content[t.content] = id;
        auto prev = impl->added_by_id.find(id);
        if (prev != impl->added_by_id.end()) {
          impl->added[prev->second] = std::move(t);
        } else {
          impl->added_by_id[id] = impl->added.size();
          impl->added.push_back(std::move(t));
        }
      }
    }
    for (size_t i = 0; i < impl->added.size(); ++i) {
      const AddedToken& t = impl->added[i];
      if (t.normalized) {
        std::string c = t.content;
        if (impl->normalizer) impl->normalizer->normalize(c);
        impl->trie_norm.add(c, static_cast<int32_t>(i));
      } else {
        impl->trie_raw.add(t.content, static_cast<int32_t>(i));
      }
    }
    TokenizerImpl* raw = impl.get();
    impl->post = make_post_processor(j.value("post_processor", json()), path("post_processor"),
                                     [raw](const std::string& s) -> int32_t {
                                       auto it = raw->added_by_content.find(s);
                                       if (it != raw->added_by_content.end()) return it->second;
                                       auto id = raw->model->token_to_id(s);
                                       return id ? *id : -1;
                                     });
  } catch (const json::exception& e) {
    GRAFT_FAIL("the file does not follow the tokenizer.json schema", "{}: unexpected JSON structure: {}", origin, e.what());
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_file(const std::string& path_in) {
  namespace fs = std::filesystem;
  fs::path p(path_in);
  fs::path dir;
  if (fs::is_directory(p)) {
    dir = p;
    p /= "tokenizer.json";
    GRAFT_CHECK_FIX(fs::exists(p), "pass a model directory that contains tokenizer.json (a Hugging Face fast tokenizer)",
                    "no tokenizer.json in directory {}", path_in);
  } else {
    dir = p.parent_path();
  }
  Tokenizer tok = from_json(read_text_file(p.string()), p.string());
  fs::path cfg = dir / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    auto& c = tok.impl_->config;
    c.raw_json = read_text_file(cfg.string());
    json j;
    try {
      j = json::parse(c.raw_json);
    } catch (const json::parse_error& e) {
      GRAFT_FAIL("fix or remove the file", "{}: malformed JSON: {}", cfg.string(), e.what());
    }
    c.present = true;
    if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) c.add_bos_token = j["add_bos_token"].get<bool>();
    if (j.contains("add_eos_token") && j["add_eos_token"].is_boolean()) c.add_eos_token = j["add_eos_token"].get<bool>();
    if (j.contains("bos_token")) c.bos_token = token_content(j["bos_token"]);
    if (j.contains("eos_token")) c.eos_token = token_content(j["eos_token"]);
    if (j.contains("pad_token")) c.pad_token = token_content(j["pad_token"]);
    if (j.contains("unk_token")) c.unk_token = token_content(j["unk_token"]);
    if (j.contains("chat_template") && j["chat_template"].is_string()) c.chat_template = j["chat_template"].get<std::string>();
  }
  return tok;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids = impl_->encode(text);
  if (add_special_tokens && impl_->post) {
    std::vector<std::string> toks(ids.size());
    impl_->post->process(ids, toks);
  }
  return ids;
}

Encoding Tokenizer::encode_with_tokens(std::string_view text, bool add_special_tokens) const {
  Encoding e;
  e.ids = impl_->encode(text);
  e.tokens.reserve(e.ids.size());
  for (int32_t id : e.ids) {
    const std::string* t = impl_->id_to_token(id);
    e.tokens.push_back(t ? *t : std::string());
  }
  if (add_special_tokens && impl_->post) impl_->post->process(e.ids, e.tokens);
  return e;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = impl_->id_to_token(id);
    if (!t) continue;
    if (skip_special_tokens && impl_->special_contents.count(*t)) continue;
    tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
    return out;
  }
  impl_->decoder->decode_chain(tokens);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  const std::string* t = impl_->id_to_token(id);
  if (!t) return std::nullopt;
  return *t;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->added_by_content.find(token);
  if (it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

size_t Tokenizer::vocab_size() const {
  size_t n = impl_->model->vocab_size();
  for (auto& t : impl_->added) n = std::max(n, static_cast<size_t>(t.id) + 1);
  return n;
}

bool Tokenizer::is_special(int32_t id) const {
  const std::string* t = impl_->id_to_token(id);
  return t && impl_->special_contents.count(*t) > 0;
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
const TokenizerConfig& Tokenizer::config() const { return impl_->config; }
void Tokenizer::clear_cache() const { impl_->model->clear_cache(); }

// ---- StreamDecoder: HF's DecodeStream algorithm (prefix re-decoding keeps decoder context) ----
StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special_tokens) : tok_(&tok), skip_special_(skip_special_tokens) {}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
}

static bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

std::string StreamDecoder::step(int32_t id) {
  if (prefix_.empty() && !ids_.empty()) {
    std::string p = tok_->decode(ids_, skip_special_);
    if (!ends_with_replacement(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  std::string s = tok_->decode(ids_, skip_special_);
  if (s.size() > prefix_.size() && !ends_with_replacement(s)) {
    std::string new_text;
    if (s.compare(0, prefix_.size(), prefix_) == 0) {
      new_text = s.substr(prefix_.size());
    } else {
      // The decoder changed earlier text (should not happen with supported decoders): emit the differing tail.
      size_t k = 0;
      while (k < prefix_.size() && k < s.size() && prefix_[k] == s[k]) ++k;
      while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
      new_text = s.substr(k);
    }
    size_t new_prefix_index = ids_.size() - prefix_index_;
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(prefix_index_));
    prefix_ = tok_->decode(ids_, skip_special_);
    prefix_index_ = new_prefix_index;
    return new_text;
  }
  return {};
}

std::string StreamDecoder::flush() {
  std::string s = tok_->decode(ids_, skip_special_);
  std::string out = s.size() > prefix_.size() && s.compare(0, prefix_.size(), prefix_) == 0 ? s.substr(prefix_.size()) : std::string();
  reset();
  return out;
}

}  // namespace graft::tokenizer
