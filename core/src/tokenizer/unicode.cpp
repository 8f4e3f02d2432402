// Unicode helpers (ICU), PCRE2 regex wrapper, HF Pattern and split behaviours.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <array>
#include <nlohmann/json.hpp>

#include "graft/error.hpp"
#include "graft/tokenizer/detail.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace graft::tokenizer {

namespace {
// UTF-8 lead byte `c` (>= 0x80): the sequence length (0 when c cannot start one) and the allowed
// range [lo, hi] of the second byte (excludes overlongs, surrogates and code points > U+10FFFF).
size_t utf8_lead(unsigned char c, uint32_t& lo, uint32_t& hi) {
  lo = 0x80;
  hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) {
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    return 4;
  }
  return 0;
}
}  // namespace

bool utf8_valid(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    uint32_t lo, hi;
    const size_t len = utf8_lead(c, lo, hi);
    if (len == 0) return false;
    if (i + len > n) return false;
    auto c1 = static_cast<unsigned char>(s[i + 1]);
    if (c1 < lo || c1 > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      auto ck = static_cast<unsigned char>(s[i + k]);
      if (ck < 0x80 || ck > 0xBF) return false;
    }
    i += len;
  }
  return true;
}

std::string utf8_lossy(std::string_view s) {
  if (utf8_valid(s)) return std::string(s);
  static const char kRepl[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    uint32_t lo, hi;
    const size_t len = utf8_lead(c, lo, hi);
    if (len == 0) {
      out += kRepl;
      ++i;
      continue;
    }
    // Maximal subpart: consume the valid prefix of the sequence, emit one U+FFFD for it when incomplete.
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      auto ck = static_cast<unsigned char>(s[i + k]);
      uint32_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (ck < l || ck > h) break;
    }
    if (k == len) out.append(s.data() + i, len);
    else out += kRepl;
    i += k;
  }
  return out;
}

namespace detail {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_whitespace(uint32_t cp) { return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE); }
bool is_numeric(uint32_t cp) {
  auto t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}
bool is_alphanumeric(uint32_t cp) {
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_ALPHABETIC) || is_numeric(cp);
}
bool is_punctuation(uint32_t cp) {
  if (cp < 0x80) return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  auto t = u_charType(static_cast<UChar32>(cp));
  return t == U_CONNECTOR_PUNCTUATION || t == U_DASH_PUNCTUATION || t == U_START_PUNCTUATION ||
         t == U_END_PUNCTUATION || t == U_INITIAL_PUNCTUATION || t == U_FINAL_PUNCTUATION ||
         t == U_OTHER_PUNCTUATION;
}

std::string unicode_normalize(std::string_view s, const char* form) {
  bool ascii = true;
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return std::string(s);
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  std::string_view f(form);
  if (f == "NFC") n = icu::Normalizer2::getNFCInstance(err);
  else if (f == "NFD") n = icu::Normalizer2::getNFDInstance(err);
  else if (f == "NFKC") n = icu::Normalizer2::getNFKCInstance(err);
  else n = icu::Normalizer2::getNFKDInstance(err);
  GRAFT_CHECK(U_SUCCESS(err), "ICU {} normalizer unavailable: {}", form, u_errorName(err));
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(s.size()));
  n->normalizeUTF8(0, icu::StringPiece(s.data(), static_cast<int32_t>(s.size())), sink, nullptr, err);
  GRAFT_CHECK(U_SUCCESS(err), "ICU {} normalization failed: {}", form, u_errorName(err));
  return out;
}

std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t st = i;
    uint32_t cp = next_cp(s, i);
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
      continue;
    }
    // Full (not simple) lowercase mapping of the lone character, like Rust's char::to_lowercase.
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data() + st, static_cast<int32_t>(i - st)));
    u.toLower(icu::Locale::getRoot());
    u.toUTF8String(out);
  }
  return out;
}

std::string strip_accents(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t st = i;
    uint32_t cp = next_cp(s, i);
    auto t = u_charType(static_cast<UChar32>(cp));
    if (t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK) continue;
    out.append(s.data() + st, i - st);
  }
  return out;
}

namespace {
struct ByteTables {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 512> from_unicode;
  ByteTables() {
    from_unicode.fill(-1);
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      uint32_t cp = direct[b] ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      append_utf8(to_unicode[b], cp);
      from_unicode[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(uint8_t b) { return byte_tables().to_unicode[b]; }
int byte_from_unicode(uint32_t cp) { return cp < 512 ? byte_tables().from_unicode[cp] : -1; }

// ---- Regex ----
namespace {
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  MatchState() {
    md = pcre2_match_data_create(32, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~MatchState() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_jit_stack_free(js);
  }
};
MatchState& match_state() {
  thread_local MatchState st;
  return st;
}
}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) {
  int errcode = 0;
  PCRE2_SIZE erroff = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                             &errcode, &erroff, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(errcode, buf, sizeof buf);
    GRAFT_FAIL("fix the regex in tokenizer.json or report it as a PCRE2/Oniguruma incompatibility",
               "tokenizer.json {}: regex '{}' does not compile at offset {}: {}", where, pattern, erroff,
               reinterpret_cast<const char*>(buf));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::match(std::string_view s, size_t from, size_t& st, size_t& en) const {
  auto& ms = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  int rc = jit_ ? pcre2_jit_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), from, PCRE2_NO_UTF_CHECK, ms.md, ms.mc)
               : pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), from, PCRE2_NO_UTF_CHECK, ms.md, ms.mc);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  GRAFT_CHECK(rc >= 0, "PCRE2 match failed with code {}", rc);
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ms.md);
  st = ov[0];
  en = ov[1];
  return true;
}

// ---- Pattern ----
Pattern::Pattern(const nlohmann::json& j, const std::string& where) {
  GRAFT_CHECK(j.is_object(), "tokenizer.json {}: pattern must be an object {{\"String\": ...}} or {{\"Regex\": ...}}", where);
  if (j.contains("String")) {
    literal_ = j["String"].get<std::string>();
  } else if (j.contains("Regex")) {
    regex_ = std::make_unique<Regex>(j["Regex"].get<std::string>(), where);
  } else {
    GRAFT_FAIL("", "tokenizer.json {}: unsupported pattern {} (expected String or Regex)", where, j.dump());
  }
}

void Pattern::find_matches(std::string_view s, std::vector<std::tuple<size_t, size_t, bool>>& out) const {
  out.clear();
  if (s.empty()) {
    out.emplace_back(0, 0, false);
    return;
  }
  size_t prev = 0;
  auto add = [&](size_t st, size_t en) {
    if (prev != st) out.emplace_back(prev, st, false);
    out.emplace_back(st, en, true);
    prev = en;
  };
  if (regex_) {
    regex_->for_each(s, add);
  } else {
    if (literal_.empty()) {
      out.emplace_back(0, s.size(), false);
      return;
    }
    size_t pos = 0;
    while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
      add(pos, pos + literal_.size());
      pos += literal_.size();
    }
  }
  if (prev != s.size()) out.emplace_back(prev, s.size(), false);
}

std::string Pattern::replace_all(std::string_view s, std::string_view content) const {
  std::vector<std::tuple<size_t, size_t, bool>> m;
  find_matches(s, m);
  std::string out;
  out.reserve(s.size());
  for (auto& [a, b, is] : m) {
    if (is) out.append(content);
    else out.append(s.substr(a, b - a));
  }
  return out;
}

void split_with_behavior(const Piece& p, std::vector<std::tuple<size_t, size_t, bool>>& m, SplitBehavior behavior,
                         std::vector<Piece>& out) {
  // After this, the bool means "remove".
  std::vector<std::tuple<size_t, size_t, bool>> r;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (auto& t : m) std::get<2>(t) = false;
      r.swap(m);
      break;
    case SplitBehavior::Removed:
      r.swap(m);
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (auto& [a, b, is] : m) {
        if (is && !prev_match) {
          if (!r.empty()) std::get<1>(r.back()) = b;
          else r.emplace_back(a, b, false);
        } else {
          r.emplace_back(a, b, false);
        }
        prev_match = is;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = m.rbegin(); it != m.rend(); ++it) {
        auto [a, b, is] = *it;
        if (is && !prev_match) {
          if (!r.empty()) std::get<0>(r.back()) = a;
          else r.emplace_back(a, b, false);
        } else {
          r.emplace_back(a, b, false);
        }
        prev_match = is;
      }
      std::reverse(r.begin(), r.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (auto& [a, b, is] : m) {
        if (is == prev_match) {
          if (!r.empty()) std::get<1>(r.back()) = b;
          else r.emplace_back(a, b, false);
        } else {
          r.emplace_back(a, b, false);
        }
        prev_match = is;
      }
      break;
    }
  }
  for (auto& [a, b, rm] : r) {
    if (rm || a == b) continue;
    out.push_back(Piece{p.text.substr(a, b - a), p.at_origin && a == 0});
  }
}

}  // namespace detail
}  // namespace graft::tokenizer
