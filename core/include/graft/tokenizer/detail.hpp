// Internal components of graft::Tokenizer (not a stable API; used by tokenizer sources and unit tests).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace graft::tokenizer::detail {

// Token ids in tokenizer.json must lie in [0, kMaxTokenId] (ids index tables; the bound matches
// config::kMaxVocabSize, docs/tokenizer.md). token_id() reads one: the value is range-checked as the
// 64-bit (or floating-point) number it is in the JSON, before any narrowing, and graft::Error names
// `where` and the value for anything else (not a number, fractional, negative, too large).
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;
int32_t token_id(const nlohmann::json& v, const std::string& where);

// ---- UTF-8 / Unicode helpers (unicode.cpp) ----
// Decodes the code point at s[i] (s must be valid UTF-8); returns it and advances i.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  uint32_t cp = c & (0x3F >> n);
  for (int k = 0; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + 1 + k]) & 0x3F);
  i += n + 1;
  return cp;
}
inline size_t cp_len(unsigned char lead) { return lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2; }
void append_utf8(std::string& out, uint32_t cp);
bool is_whitespace(uint32_t cp);    // Rust char::is_whitespace (White_Space)
bool is_alphanumeric(uint32_t cp);  // Rust char::is_alphanumeric (Alphabetic || Nd/Nl/No)
bool is_numeric(uint32_t cp);       // Rust char::is_numeric (Nd/Nl/No)
bool is_punctuation(uint32_t cp);   // HF is_punc: ASCII punctuation or Unicode P*
std::string unicode_normalize(std::string_view s, const char* form);  // "NFC", "NFD", "NFKC", "NFKD"
std::string lowercase(std::string_view s);
std::string strip_accents(std::string_view s);  // drops marks (Mn, Mc, Me), like HF's StripAccents
const std::string& byte_to_unicode(uint8_t b);  // GPT-2 byte-level alphabet
int byte_from_unicode(uint32_t cp);             // inverse, -1 when cp is not in the alphabet

// ---- Regex over PCRE2 (UTF, UCP, JIT) ----
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls f(start, end) for every non-overlapping match, left to right (empty matches advance one char).
  template <class F>
  void for_each(std::string_view s, F&& f) const {
    size_t pos = 0;
    size_t st, en;
    while (pos <= s.size() && match(s, pos, st, en)) {
      f(st, en);
      if (en == st) {
        if (en >= s.size()) break;
        pos = en + cp_len(static_cast<unsigned char>(s[en]));
      } else {
        pos = en;
      }
    }
  }

 private:
  bool match(std::string_view s, size_t from, size_t& st, size_t& en) const;
  void* code_ = nullptr;
  bool jit_ = false;
};

// Pattern of Split / Replace: {"String": "..."} or {"Regex": "..."}.
class Pattern {
 public:
  Pattern(const nlohmann::json& j, const std::string& where);
  // (start, end, is_match) pieces covering s, like HF's Pattern::find_matches.
  void find_matches(std::string_view s, std::vector<std::tuple<size_t, size_t, bool>>& out) const;
  std::string replace_all(std::string_view s, std::string_view content) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// A split of the text during pre-tokenization; at_origin: it starts at original offset 0.
struct Piece {
  std::string text;
  bool at_origin = false;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
// Splits `p` on the (start,end,is_match) pieces with `behavior`, appending non-empty pieces to out.
void split_with_behavior(const Piece& p, std::vector<std::tuple<size_t, size_t, bool>>& matches,
                         SplitBehavior behavior, std::vector<Piece>& out);

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};
struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their pre-tokenized splits (empty splits dropped).
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};
struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
struct PostProcessor {
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence; token_of maps a special token name to its ids.
  virtual void process(std::vector<int32_t>& ids, std::vector<std::string>& tokens) const = 0;
};

// Factories: `j` is the component's JSON, `where` its JSON path (e.g. "/pre_tokenizer/pretokenizers/1").
// Unknown types throw graft::Error naming the type and the path. A null JSON gives nullptr.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& j, const std::string& where);
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where);
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where);
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& j, const std::string& where,
                                                   const std::function<int32_t(const std::string&)>& token_to_id);

// ---- BPE model (bpe.cpp) ----
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept;
};

class BpeModel {
 public:
  BpeModel(const nlohmann::json& model, const std::string& where);
  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;
  std::optional<int32_t> token_to_id(std::string_view s) const;
  const std::string* id_to_token(int32_t id) const;
  size_t vocab_size() const { return id_to_token_.size(); }
  size_t vocab_entries() const { return vocab_.size(); }  // HF's get_vocab_size()
  void clear_cache() const;

 private:
  struct MergeEntry {
    uint64_t key;
    uint32_t rank;
    int32_t new_id;
  };
  const MergeEntry* find_merge(int32_t a, int32_t b) const {
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    size_t h = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (true) {
      const MergeEntry& e = merges_[h];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
      h = (h + 1) & mask_;
    }
  }
  void merge_word(std::string_view w, std::vector<int32_t>& out) const;

  static constexpr uint64_t kEmpty = ~0ull;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<MergeEntry> merges_;
  size_t mask_ = 0;
  int shift_ = 64;
  std::vector<int32_t> char_id_;  // code point (< 0x800) -> id of the single-char token, or -1
  bool use_char_table_ = false;
  std::optional<std::string> unk_token_, prefix_, suffix_;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  int32_t byte_ids_[256];  // <0xXX> ids for byte fallback (-1 when absent)

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kCacheMaxWord = 256;
};

}  // namespace graft::tokenizer::detail
