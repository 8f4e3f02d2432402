// graft::Tokenizer — Hugging Face tokenizer.json (BPE: byte-level and sentencepiece-style byte fallback),
// reimplemented in C++ to produce exactly the ids of Hugging Face's Rust `tokenizers` (0.22).
//
// Pipeline of encode(text), like HF's TokenizerImpl::encode:
//   1. split out added tokens that are not `normalized` (leftmost-longest, lstrip/rstrip/single_word honoured),
//   2. normalize the remaining pieces, split out `normalized` added tokens,
//   3. pre-tokenize (Split regex via PCRE2 JIT, ByteLevel, Digits, Metaspace, ...),
//   4. BPE each word (priority-queue merges, word cache, ignore_merges, byte_fallback, fuse_unk),
//   5. only with add_special_tokens: post-processor (TemplateProcessing, Roberta/Bert, ByteLevel, Sequence).
// decode(ids) runs the decoder chain (ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence).
// StreamDecoder turns ids into text incrementally without ever emitting broken UTF-8.
//
// Thread safety: a loaded Tokenizer is immutable except for its internal word cache (mutex-guarded);
// encode/decode may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace graft::tokenizer {

class TokenizerImpl;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Fields of tokenizer_config.json that matter to callers (chat templates, generation).
// They do not change encode(): like HF's Rust library, encode follows tokenizer.json only.
struct TokenizerConfig {
  bool present = false;
  std::optional<bool> add_bos_token, add_eos_token;
  std::string bos_token, eos_token, pad_token, unk_token;
  std::string chat_template;  // empty when absent (or when it is a list of named templates: see raw)
  std::string raw_json;       // the whole file, for callers needing more
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};

class Tokenizer {
 public:
  // `path` is a directory holding tokenizer.json (+ optional tokenizer_config.json) or a tokenizer.json file.
  static Tokenizer from_file(const std::string& path);
  // From the JSON text of a tokenizer.json; `origin` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& origin = "<string>");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Encodes UTF-8 text (invalid sequences are replaced by U+FFFD first). Special tokens (post-processor)
  // are added only when add_special_tokens is true.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  Encoding encode_with_tokens(std::string_view text, bool add_special_tokens = false) const;
  // Decodes ids to text; ids out of range are skipped (as HF does).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // id <-> token string (model vocabulary or added tokens); nullopt when unknown.
  std::optional<std::string> id_to_token(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  size_t vocab_size() const;  // max id + 1 over model vocabulary and added tokens
  bool is_special(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;
  const TokenizerConfig& config() const;

  // Word-cache statistics (for benchmarks); clear_cache() empties it.
  void clear_cache() const;

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  std::unique_ptr<TokenizerImpl> impl_;
  friend class StreamDecoder;
};

// Incremental detokenizer (like HF's DecodeStream): step(id) returns the newly printable text, possibly
// empty while a multi-byte character (or a byte-fallback sequence) is incomplete. Concatenating the
// outputs of step() and flush() gives decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special_tokens = false);
  std::string step(int32_t id);
  // Text held back at the end of the stream (incomplete sequences decode to U+FFFD like decode()).
  std::string flush();
  void reset();

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
};

// UTF-8 helpers shared by the tokenizer and its tests.
// Replaces invalid UTF-8 like Rust's String::from_utf8_lossy (maximal-subpart U+FFFD substitution).
std::string utf8_lossy(std::string_view bytes);
bool utf8_valid(std::string_view bytes);

}  // namespace graft::tokenizer
