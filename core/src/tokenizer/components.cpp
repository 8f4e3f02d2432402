// Normalizers, pre-tokenizers, decoders and post-processors of tokenizer.json, following HF tokenizers 0.22.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "graft/error.hpp"
#include "graft/tokenizer/detail.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::tokenizer::detail {

using json = nlohmann::json;

namespace {

std::string type_of(const json& j, const std::string& where, const char* what) {
  GRAFT_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(),
              "tokenizer.json {}: {} must be an object with a string \"type\"", where, what);
  return j["type"].get<std::string>();
}

[[noreturn]] void unsupported(const char* what, const std::string& type, const std::string& where) {
  GRAFT_FAIL("use a tokenizer whose components graft supports (see docs/tokenizer.md) or add support for it",
             "tokenizer.json {}: unsupported {} type '{}'", where, what, type);
}

template <class T>
T get_or(const json& j, const char* key, T def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  return j[key].get<T>();
}

uint32_t single_char(const std::string& s, const std::string& where, const char* key) {
  GRAFT_CHECK(!s.empty(), "tokenizer.json {}: \"{}\" must be one character", where, key);
  size_t i = 0;
  uint32_t cp = next_cp(s, i);
  GRAFT_CHECK(i == s.size(), "tokenizer.json {}: \"{}\" must be one character, got '{}'", where, key, s);
  return cp;
}

// ---------------- Normalizers ----------------
struct UnicodeNorm : Normalizer {
  const char* form;
  explicit UnicodeNorm(const char* f) : form(f) {}
  void normalize(std::string& s) const override { s = unicode_normalize(s, form); }
};
struct Lowercase : Normalizer {
  void normalize(std::string& s) const override { s = lowercase(s); }
};
struct StripAccents : Normalizer {
  void normalize(std::string& s) const override { s = strip_accents(s); }
};
struct StripNorm : Normalizer {
  bool left, right;
  StripNorm(bool l, bool r) : left(l), right(r) {}
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_cp(s, i))) break;
        b = i;
      }
    }
    if (right) {
      while (e > b) {
        size_t st = e - 1;
        while (st > b && (static_cast<unsigned char>(s[st]) & 0xC0) == 0x80) --st;
        size_t i = st;
        if (!is_whitespace(next_cp(s, i))) break;
        e = st;
      }
    }
    s = s.substr(b, e - b);
  }
};
struct Prepend : Normalizer {
  std::string prefix;
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};
struct Replace : Normalizer {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void normalize(std::string& s) const override { s = pattern->replace_all(s, content); }
};
struct ByteLevelNorm : Normalizer {
  void normalize(std::string& s) const override {
    std::string out;
    out.reserve(s.size() * 2);
    for (char c : s) out += byte_to_unicode(static_cast<uint8_t>(c));
    s.swap(out);
  }
};
struct NormSequence : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> items;
  void normalize(std::string& s) const override {
    for (auto& n : items) n->normalize(s);
  }
};

// ---------------- Pre-tokenizers ----------------
struct SplitPre : PreTokenizer {
  std::unique_ptr<Pattern> pattern;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 4);
    std::vector<std::tuple<size_t, size_t, bool>> m;
    for (auto& p : pieces) {
      pattern->find_matches(p.text, m);
      if (invert)
        for (auto& t : m) std::get<2>(t) = !std::get<2>(t);
      split_with_behavior(p, m, behavior, out);
    }
    pieces.swap(out);
  }
};

SplitBehavior parse_behavior(const json& j, const std::string& where) {
  std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  GRAFT_FAIL("", "tokenizer.json {}/behavior: unknown split behavior '{}'", where, b);
}

const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPre : PreTokenizer {
  bool add_prefix_space = true;
  std::unique_ptr<Regex> regex;  // null when use_regex is false
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * (regex ? 4 : 1));
    for (auto& p : pieces) {
      std::string s;
      if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) s = " " + p.text;
      else s = std::move(p.text);
      auto emit = [&](size_t a, size_t b) {
        if (a == b) return;
        Piece q;
        q.at_origin = p.at_origin && a == 0;
        q.text.reserve((b - a) * 2);
        for (size_t i = a; i < b; ++i) q.text += byte_to_unicode(static_cast<uint8_t>(s[i]));
        out.push_back(std::move(q));
      };
      if (regex) {
        size_t prev = 0;
        regex->for_each(s, [&](size_t a, size_t b) {
          emit(prev, a);
          emit(a, b);
          prev = b;
        });
        emit(prev, s.size());
      } else {
        emit(0, s.size());
      }
    }
    pieces.swap(out);
  }
};

struct DigitsPre : PreTokenizer {
  bool individual = false;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<std::tuple<size_t, size_t, bool>> m;
    for (auto& p : pieces) {
      m.clear();
      size_t i = 0, prev = 0;
      const std::string& s = p.text;
      while (i < s.size()) {
        size_t st = i;
        uint32_t cp = next_cp(s, i);
        if (is_numeric(cp)) {
          if (prev != st) m.emplace_back(prev, st, false);
          m.emplace_back(st, i, true);
          prev = i;
        }
      }
      if (prev != s.size() || s.empty()) m.emplace_back(prev, s.size(), false);
      split_with_behavior(p, m, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous, out);
    }
    pieces.swap(out);
  }
};

enum class PrependScheme { Always, Never, First };

struct MetaspacePre : PreTokenizer {
  std::string rep;
  PrependScheme scheme = PrependScheme::Always;
  bool split = true;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<std::tuple<size_t, size_t, bool>> m;
    for (auto& p : pieces) {
      std::string s;
      s.reserve(p.text.size() + rep.size());
      for (char c : p.text) {
        if (c == ' ') s += rep;
        else s.push_back(c);
      }
      bool starts = s.compare(0, rep.size(), rep) == 0;
      if (!starts && (scheme == PrependScheme::Always || (scheme == PrependScheme::First && p.at_origin)))
        s.insert(0, rep);
      Piece q{std::move(s), p.at_origin};
      if (!split) {
        if (!q.text.empty()) out.push_back(std::move(q));
        continue;
      }
      m.clear();
      size_t prev = 0, pos = 0;
      while ((pos = q.text.find(rep, pos)) != std::string::npos) {
        if (prev != pos) m.emplace_back(prev, pos, false);
        m.emplace_back(pos, pos + rep.size(), true);
        pos += rep.size();
        prev = pos;
      }
      if (prev != q.text.size() || q.text.empty()) m.emplace_back(prev, q.text.size(), false);
      split_with_behavior(q, m, SplitBehavior::MergedWithNext, out);
    }
    pieces.swap(out);
  }
};

// Splits on characters where pred(cp) holds, with `behavior`.
template <class Pred>
void split_on_chars(std::vector<Piece>& pieces, Pred pred, SplitBehavior behavior) {
  std::vector<Piece> out;
  std::vector<std::tuple<size_t, size_t, bool>> m;
  for (auto& p : pieces) {
    m.clear();
    const std::string& s = p.text;
    size_t i = 0, prev = 0;
    while (i < s.size()) {
      size_t st = i;
      if (pred(next_cp(s, i))) {
        if (prev != st) m.emplace_back(prev, st, false);
        m.emplace_back(st, i, true);
        prev = i;
      }
    }
    if (prev != s.size() || s.empty()) m.emplace_back(prev, s.size(), false);
    split_with_behavior(p, m, behavior, out);
  }
  pieces.swap(out);
}

struct WhitespaceSplitPre : PreTokenizer {
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, [](uint32_t c) { return is_whitespace(c); }, SplitBehavior::Removed);
  }
};
struct PunctuationPre : PreTokenizer {
  SplitBehavior behavior = SplitBehavior::Isolated;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_on_chars(pieces, [](uint32_t c) { return is_punctuation(c); }, behavior);
  }
};
struct WhitespacePre : PreTokenizer {
  Regex re{R"(\w+|[^\w\s]+)", "Whitespace"};
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<std::tuple<size_t, size_t, bool>> m;
    for (auto& p : pieces) {
      m.clear();
      size_t prev = 0;
      re.for_each(p.text, [&](size_t a, size_t b) {
        if (prev != a) m.emplace_back(prev, a, false);
        m.emplace_back(a, b, true);
        prev = b;
      });
      if (prev != p.text.size() || p.text.empty()) m.emplace_back(prev, p.text.size(), false);
      for (auto& t : m) std::get<2>(t) = !std::get<2>(t);  // invert: remove the non-matches
      split_with_behavior(p, m, SplitBehavior::Removed, out);
    }
    pieces.swap(out);
  }
};
struct PreSequence : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (auto& p : items) p->pre_tokenize(pieces);
  }
};

PrependScheme parse_scheme(const json& j, const std::string& where) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "never") return PrependScheme::Never;
    if (s == "first") return PrependScheme::First;
    GRAFT_FAIL("", "tokenizer.json {}/prepend_scheme: unknown value '{}'", where, s);
  }
  return get_or<bool>(j, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

// ---------------- Decoders ----------------
struct ByteLevelDec : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (auto& t : tokens) {
      size_t mark = bytes.size();
      size_t i = 0;
      bool ok = true;
      while (i < t.size()) {
        int b = byte_from_unicode(next_cp(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy_impl(bytes));
  }
  static std::string utf8_lossy_impl(const std::string& b);
};

struct ByteFallbackDec : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t npending = 0;
    auto flush = [&] {
      if (npending == 0) return;
      if (ByteLevelDec::utf8_lossy_impl(pending) == pending) out.push_back(pending);
      else
        for (size_t k = 0; k < npending; ++k) out.emplace_back("\xEF\xBF\xBD");
      pending.clear();
      npending = 0;
    };
    for (auto& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) -> int {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        int h = hex(t[3]), l = hex(t[4]);
        if (h >= 0 && l >= 0) byte = h * 16 + l;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        ++npending;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

struct FuseDec : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string s;
    for (auto& t : tokens) s += t;
    tokens.assign(1, std::move(s));
  }
};

struct StripDec : Decoder {
  uint32_t content;
  size_t start, stop;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::vector<std::pair<size_t, uint32_t>> chars;  // (byte offset, cp)
      size_t i = 0;
      while (i < t.size()) {
        size_t st = i;
        chars.emplace_back(st, next_cp(t, i));
      }
      size_t start_cut = 0;
      for (size_t k = 0; k < chars.size() && k < start; ++k) {
        if (chars[k].second == content) start_cut = k + 1;
        else break;
      }
      size_t stop_cut = chars.size();
      for (size_t k = 0; k < chars.size() && k < stop; ++k) {
        if (chars[chars.size() - 1 - k].second == content) stop_cut = chars.size() - 1 - k;
        else break;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      size_t b = start_cut < chars.size() ? chars[start_cut].first : t.size();
      size_t e = stop_cut < chars.size() ? chars[stop_cut].first : t.size();
      t = t.substr(b, e - b);
    }
  }
};

struct ReplaceDec : Decoder {
  std::unique_ptr<Pattern> pattern;
  std::string content;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) t = pattern->replace_all(t, content);
  }
};

struct MetaspaceDec : Decoder {
  uint32_t rep;
  PrependScheme scheme = PrependScheme::Always;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      const std::string& t = tokens[k];
      std::string o;
      o.reserve(t.size());
      size_t i = 0;
      while (i < t.size()) {
        size_t st = i;
        uint32_t cp = next_cp(t, i);
        if (cp == rep) o.push_back(' ');
        else o.append(t, st, i - st);
      }
      if (k == 0 && scheme != PrependScheme::Never && !o.empty() && o[0] == ' ') o.erase(0, 1);
      tokens[k] = std::move(o);
    }
  }
};

struct DecSequence : Decoder {
  std::vector<std::unique_ptr<Decoder>> items;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& d : items) d->decode_chain(tokens);
  }
};

// ---------------- Post-processors ----------------
struct PostNoop : PostProcessor {
  void process(std::vector<int32_t>&, std::vector<std::string>&) const override {}
};
struct TemplatePost : PostProcessor {
  struct Item {
    bool is_sequence = false;
    std::vector<int32_t> ids;
    std::vector<std::string> tokens;
  };
  std::vector<Item> single;
  void process(std::vector<int32_t>& ids, std::vector<std::string>& tokens) const override {
    std::vector<int32_t> oi;
    std::vector<std::string> ot;
    for (auto& it : single) {
      if (it.is_sequence) {
        oi.insert(oi.end(), ids.begin(), ids.end());
        ot.insert(ot.end(), tokens.begin(), tokens.end());
      } else {
        oi.insert(oi.end(), it.ids.begin(), it.ids.end());
        ot.insert(ot.end(), it.tokens.begin(), it.tokens.end());
      }
    }
    ids.swap(oi);
    tokens.swap(ot);
  }
};
struct ClsSepPost : PostProcessor {
  int32_t cls_id, sep_id;
  std::string cls, sep;
  void process(std::vector<int32_t>& ids, std::vector<std::string>& tokens) const override {
    ids.insert(ids.begin(), cls_id);
    ids.push_back(sep_id);
    tokens.insert(tokens.begin(), cls);
    tokens.push_back(sep);
  }
};
struct PostSequence : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> items;
  void process(std::vector<int32_t>& ids, std::vector<std::string>& tokens) const override {
    for (auto& p : items) p->process(ids, tokens);
  }
};

}  // namespace

std::string ByteLevelDec::utf8_lossy_impl(const std::string& b) { return ::graft::tokenizer::utf8_lossy(b); }

std::unique_ptr<Normalizer> make_normalizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, where, "normalizer");
  if (t == "NFC") return std::make_unique<UnicodeNorm>("NFC");
  if (t == "NFD") return std::make_unique<UnicodeNorm>("NFD");
  if (t == "NFKC") return std::make_unique<UnicodeNorm>("NFKC");
  if (t == "NFKD") return std::make_unique<UnicodeNorm>("NFKD");
  if (t == "Lowercase") return std::make_unique<Lowercase>();
  if (t == "StripAccents") return std::make_unique<StripAccents>();
  if (t == "Strip") return std::make_unique<StripNorm>(get_or<bool>(j, "strip_left", true), get_or<bool>(j, "strip_right", true));
  if (t == "ByteLevel") return std::make_unique<ByteLevelNorm>();
  if (t == "Prepend") {
    auto n = std::make_unique<Prepend>();
    n->prefix = j.at("prepend").get<std::string>();
    return n;
  }
  if (t == "Replace") {
    auto n = std::make_unique<Replace>();
    n->pattern = std::make_unique<Pattern>(j.at("pattern"), where + "/pattern");
    n->content = j.at("content").get<std::string>();
    return n;
  }
  if (t == "Sequence") {
    auto n = std::make_unique<NormSequence>();
    const json& arr = j.at("normalizers");
    for (size_t i = 0; i < arr.size(); ++i) {
      auto c = make_normalizer(arr[i], where + "/normalizers/" + std::to_string(i));
      if (c) n->items.push_back(std::move(c));
    }
    return n;
  }
  unsupported("normalizer", t, where);
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, where, "pre_tokenizer");
  if (t == "Split") {
    auto p = std::make_unique<SplitPre>();
    p->pattern = std::make_unique<Pattern>(j.at("pattern"), where + "/pattern");
    p->behavior = parse_behavior(j.at("behavior"), where);
    p->invert = get_or<bool>(j, "invert", false);
    return p;
  }
  if (t == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPre>();
    p->add_prefix_space = get_or<bool>(j, "add_prefix_space", true);
    if (get_or<bool>(j, "use_regex", true)) p->regex = std::make_unique<Regex>(kGpt2Regex, where);
    return p;
  }
  if (t == "Digits") {
    auto p = std::make_unique<DigitsPre>();
    p->individual = get_or<bool>(j, "individual_digits", false);
    return p;
  }
  if (t == "Metaspace") {
    auto p = std::make_unique<MetaspacePre>();
    std::string rep = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
    single_char(rep, where, "replacement");
    p->rep = rep;
    p->scheme = parse_scheme(j, where);
    p->split = get_or<bool>(j, "split", true);
    return p;
  }
  if (t == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
  if (t == "Whitespace") return std::make_unique<WhitespacePre>();
  if (t == "Punctuation") {
    auto p = std::make_unique<PunctuationPre>();
    if (j.contains("behavior")) p->behavior = parse_behavior(j["behavior"], where);
    return p;
  }
  if (t == "Sequence") {
    auto p = std::make_unique<PreSequence>();
    const json& arr = j.at("pretokenizers");
    for (size_t i = 0; i < arr.size(); ++i) {
      auto c = make_pre_tokenizer(arr[i], where + "/pretokenizers/" + std::to_string(i));
      if (c) p->items.push_back(std::move(c));
    }
    return p;
  }
  unsupported("pre_tokenizer", t, where);
}

std::unique_ptr<Decoder> make_decoder(const json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, where, "decoder");
  if (t == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (t == "Fuse") return std::make_unique<FuseDec>();
  if (t == "Strip") {
    auto d = std::make_unique<StripDec>();
    d->content = single_char(j.at("content").get<std::string>(), where, "content");
    d->start = get_or<size_t>(j, "start", 0);
    d->stop = get_or<size_t>(j, "stop", 0);
    return d;
  }
  if (t == "Replace") {
    auto d = std::make_unique<ReplaceDec>();
    d->pattern = std::make_unique<Pattern>(j.at("pattern"), where + "/pattern");
    d->content = j.at("content").get<std::string>();
    return d;
  }
  if (t == "Metaspace") {
    auto d = std::make_unique<MetaspaceDec>();
    d->rep = single_char(get_or<std::string>(j, "replacement", "\xE2\x96\x81"), where, "replacement");
    d->scheme = parse_scheme(j, where);
    return d;
  }
  if (t == "Sequence") {
    auto d = std::make_unique<DecSequence>();
    const json& arr = j.at("decoders");
    for (size_t i = 0; i < arr.size(); ++i) {
      auto c = make_decoder(arr[i], where + "/decoders/" + std::to_string(i));
      if (c) d->items.push_back(std::move(c));
    }
    return d;
  }
  unsupported("decoder", t, where);
}

std::unique_ptr<PostProcessor> make_post_processor(const json& j, const std::string& where,
                                                   const std::function<int32_t(const std::string&)>& token_to_id) {
  if (j.is_null()) return nullptr;
  std::string t = type_of(j, where, "post_processor");
  if (t == "ByteLevel") return std::make_unique<PostNoop>();
  if (t == "TemplateProcessing") {
    auto p = std::make_unique<TemplatePost>();
    const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    const json& single = j.at("single");
    for (size_t i = 0; i < single.size(); ++i) {
      const json& it = single[i];
      TemplatePost::Item item;
      if (it.contains("Sequence")) {
        item.is_sequence = true;
      } else if (it.contains("SpecialToken")) {
        std::string name = it["SpecialToken"].at("id").get<std::string>();
        GRAFT_CHECK(specials.contains(name), "tokenizer.json {}/single/{}: special token '{}' missing from special_tokens",
                    where, i, name);
        item.ids.clear();
        const json& ids = specials[name].at("ids");
        GRAFT_CHECK(ids.is_array(), "tokenizer.json {}/special_tokens/{}/ids: expected an array", where, name);
        for (size_t k = 0; k < ids.size(); ++k)
          item.ids.push_back(token_id(ids[k], where + "/special_tokens/" + name + "/ids/" + std::to_string(k)));
        item.tokens = specials[name].at("tokens").get<std::vector<std::string>>();
      } else {
        GRAFT_FAIL("", "tokenizer.json {}/single/{}: expected Sequence or SpecialToken, got {}", where, i, it.dump());
      }
      p->single.push_back(std::move(item));
    }
    return p;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto p = std::make_unique<ClsSepPost>();
    p->sep = j.at("sep")[0].get<std::string>();
    p->sep_id = token_id(j.at("sep")[1], where + "/sep/1");
    p->cls = j.at("cls")[0].get<std::string>();
    p->cls_id = token_id(j.at("cls")[1], where + "/cls/1");
    (void)token_to_id;
    return p;
  }
  if (t == "Sequence") {
    auto p = std::make_unique<PostSequence>();
    const json& arr = j.at("processors");
    for (size_t i = 0; i < arr.size(); ++i) {
      auto c = make_post_processor(arr[i], where + "/processors/" + std::to_string(i), token_to_id);
      if (c) p->items.push_back(std::move(c));
    }
    return p;
  }
  unsupported("post_processor", t, where);
}

}  // namespace graft::tokenizer::detail
