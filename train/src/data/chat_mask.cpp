// Loss masks of chat conversations: which characters of the rendered conversation are trained,
// then which tokens. See docs/data.md "Masking rules".
//
// 1. Character spans. With `{% generation %}` markers (and roles_to_train = [assistant]) the
//    template's assistant spans are used. Otherwise each turn i is located by rendering prefixes:
//    its region starts after H_i = render(messages[:i], add_generation_prompt) for assistant turns
//    (render(messages[:i]) for other roles) and ends at P_i = render(messages[:i+1]); both must be
//    prefixes of the full rendering T. The last special token of the region is the turn's
//    end-of-turn token (<|im_end|>, <|eot_id|>, </s> ...); what follows it (a newline) is template
//    glue and never trained. When the generation prompt is not a prefix of T (Qwen3 with
//    enable_thinking=false puts an empty <think> block into it, which earlier turns do not have),
//    the turn starts where the prompt and T diverge (at least after render(messages[:i])). Templates that render a turn differently when it is the last one
//    (Qwen3 adds an empty <think> block) make P_i not a prefix of T: then the region runs from H_i
//    to the first occurrence in T of the end-of-turn token P_i's region ends with.
// 2. Tokens. T is tokenized once. Each token's byte range in T comes from incremental decoding
//    (StreamDecoder), checked to reproduce T exactly; a token is trained when its range overlaps a
//    trained character (a token holding an incomplete UTF-8 character has an empty range and takes
//    the class of the character it starts). When decoding does not reproduce T (lossy
//    normalizers), T is instead tokenized segment by segment, cut at every span boundary, so that
//    token boundaries coincide with span boundaries by construction.
#include <algorithm>
#include <optional>

#include "data_internal.hpp"
#include "graft/error.hpp"

namespace graft::train {

using data_detail::ojson;

namespace {

enum : uint8_t { kNone = 0, kBody = 1, kEot = 2 };

struct Region {
  size_t b = 0, e = 0;    // body [b, e)
  size_t eb = 0, ee = 0;  // end-of-turn token [eb, ee), empty when none
  bool valid = false;
};

bool starts_with(const std::string& s, const std::string& p) { return s.size() >= p.size() && s.compare(0, p.size(), p) == 0; }

class Masker {
 public:
  Masker(const ojson& messages, const ojson* tools, const tokenizer::Tokenizer& tok,
         const chat_template::ChatTemplate& tpl, const DataOptions& opt)
      : messages_(messages), tools_(tools), tpl_(tpl), opt_(opt) {
    for (const auto& a : tok.added_tokens())
      if (a.special && !a.content.empty()) specials_.push_back(a.content);
    // Longest first so that overlapping specials resolve to the longest.
    std::sort(specials_.begin(), specials_.end(), [](const auto& x, const auto& y) { return x.size() > y.size(); });
  }

  std::string render(size_t n, bool gen) const {
    chat_template::RenderOptions ro;
    ro.add_generation_prompt = gen;
    ro.extra = opt_.chat_template_kwargs;
    if (tools_) ro.tools = *tools_;
    ojson sub = ojson::array();
    for (size_t i = 0; i < n; ++i) sub.push_back(messages_[i]);
    return tpl_.render(sub, ro).text;
  }
  // Prefix renders that may legitimately fail (templates indexing messages[0] on an empty list).
  std::string render_or_empty(size_t n, bool gen) const {
    if (n == 0 && !gen) return {};
    try {
      return render(n, gen);
    } catch (const Error&) {
      if (n == 0) return {};
      throw;
    }
  }

  // Last special token occurrence within [b, e) of s: returns its start, or npos.
  std::pair<size_t, size_t> last_special(const std::string& s, size_t b, size_t e) const {
    size_t best = std::string::npos, len = 0;
    for (const auto& sp : specials_) {
      if (sp.size() > e - b) continue;
      size_t p = s.rfind(sp, e - sp.size());
      if (p != std::string::npos && p >= b && (best == std::string::npos || p > best)) best = p, len = sp.size();
    }
    return {best, len};
  }
  size_t special_at(const std::string& s, size_t p) const {
    for (const auto& sp : specials_)
      if (s.compare(p, sp.size(), sp) == 0) return sp.size();
    return 0;
  }

  // Splits region [b, e) of T into body + end-of-turn token.
  Region split(const std::string& T, size_t b, size_t e) const {
    Region r;
    r.valid = true;
    auto [p, len] = last_special(T, b, e);
    if (p != std::string::npos && p > b) {
      r.b = b, r.e = p, r.eb = p, r.ee = p + len;
    } else if (p == b && len == e - b) {
      r.b = r.e = b, r.eb = b, r.ee = e;
    } else {
      r.b = b, r.e = e;
      size_t l = e < T.size() ? special_at(T, e) : 0;
      r.eb = e, r.ee = e + l;
    }
    return r;
  }

  // Region of turn i in T by prefix rendering (see the file comment).
  Region turn_region(const std::string& T, size_t i, size_t cursor, std::string& why) const {
    const std::string role = messages_[i].value("role", "");
    std::string H = role == "assistant" ? render_or_empty(i, true) : prefix(i);
    size_t s = H.size();
    if (!starts_with(T, H)) {
      // A generation prompt that differs from how earlier turns render (Qwen3 with enable_thinking=false
      // adds an empty <think> block): the turn starts where the prompt and T diverge, past messages[:i].
      const std::string& base = prefix(i);
      size_t l = 0;
      while (l < H.size() && l < T.size() && H[l] == T[l]) ++l;
      if (!starts_with(T, base) || l < base.size()) {
        why = fmt::format("rendering messages[:{}]{} is not a prefix of the whole conversation", i,
                          role == "assistant" ? " with the generation prompt" : "");
        return {};
      }
      s = l;
    }
    s = std::max(s, cursor);
    const std::string& P = prefix(i + 1);
    if (starts_with(T, P) && P.size() >= s) return split(T, s, P.size());
    // The turn renders differently as the last one: find its end-of-turn token in T.
    if (!starts_with(P, H)) {
      why = fmt::format("messages[{}] renders differently alone and within the conversation", i);
      return {};
    }
    auto [p, len] = last_special(P, H.size(), P.size());
    if (p == std::string::npos) {
      why = fmt::format("messages[{}] renders differently alone and within the conversation and has no end-of-turn token", i);
      return {};
    }
    std::string eot = P.substr(p, len);
    size_t q = T.find(eot, s);
    if (q == std::string::npos) {
      why = fmt::format("the end-of-turn token {} of messages[{}] is missing from the conversation", eot, i);
      return {};
    }
    Region r;
    r.valid = true;
    r.b = s, r.e = q, r.eb = q, r.ee = q + len;
    return r;
  }

  const std::string& prefix(size_t n) const {
    if (prefix_cache_.size() <= n) prefix_cache_.resize(n + 1);
    if (!prefix_cache_[n]) prefix_cache_[n] = render_or_empty(n, false);
    return *prefix_cache_[n];
  }

 private:
  const ojson& messages_;
  const ojson* tools_;
  const chat_template::ChatTemplate& tpl_;
  const DataOptions& opt_;
  std::vector<std::string> specials_;
  mutable std::vector<std::optional<std::string>> prefix_cache_;
};

// Token ids of T plus a per-token class; see the file comment (step 2).
void tokenize_with_classes(const tokenizer::Tokenizer& tok, const std::string& T, const std::vector<uint8_t>& cls,
                           std::vector<int32_t>& ids, std::vector<uint8_t>& tcls) {
  ids = tok.encode(T, false);
  tcls.assign(ids.size(), kNone);
  std::vector<size_t> start(ids.size()), end(ids.size());
  std::string decoded;
  {
    tokenizer::StreamDecoder sd(tok, false);
    for (size_t t = 0; t < ids.size(); ++t) {
      start[t] = decoded.size();
      decoded += sd.step(ids[t]);
      end[t] = decoded.size();
    }
    decoded += sd.flush();
  }
  if (decoded == T) {
    for (size_t t = 0; t < ids.size(); ++t) {
      uint8_t c = kNone;
      if (start[t] == end[t]) {
        if (start[t] < T.size()) c = cls[start[t]];
      } else {
        for (size_t k = start[t]; k < end[t]; ++k) c = std::max(c, cls[k]);
      }
      tcls[t] = c;
    }
    return;
  }
  // Lossy decode: tokenize segment by segment, cut at class changes.
  ids.clear();
  tcls.clear();
  size_t b = 0;
  while (b < T.size()) {
    size_t e = b + 1;
    while (e < T.size() && cls[e] == cls[b]) ++e;
    auto seg = tok.encode(std::string_view(T).substr(b, e - b), false);
    ids.insert(ids.end(), seg.begin(), seg.end());
    tcls.insert(tcls.end(), seg.size(), cls[b]);
    b = e;
  }
}

}  // namespace

Sample tokenize_conversation(const ojson& messages, const ojson* tools, const tokenizer::Tokenizer& tok,
                             const chat_template::ChatTemplate& tpl, const DatasetSpec& spec,
                             const DataOptions& options) {
  GRAFT_CHECK_FIX(messages.is_array() && !messages.empty(), "give every conversation at least one turn",
                  "conversation is empty");
  Masker m(messages, tools, tok, tpl, options);
  chat_template::RenderOptions ro;
  ro.extra = options.chat_template_kwargs;
  if (tools) ro.tools = *tools;
  chat_template::Rendered full = tpl.render(messages, ro);
  const std::string& T = full.text;

  std::vector<uint8_t> cls(T.size(), kNone);
  auto in_train = [&](const std::string& role) {
    return std::find(spec.roles_to_train.begin(), spec.roles_to_train.end(), role) != spec.roles_to_train.end();
  };
  const std::string& eos_rule = spec.train_on_eos;
  GRAFT_CHECK_FIX(eos_rule == "turn" || eos_rule == "last" || eos_rule == "all" || eos_rule == "none",
                  "use one of turn, last, all, none", "unknown train_on_eos `{}`", eos_rule);

  if (!options.train_on_inputs) {
    std::vector<std::pair<Region, bool>> regions;  // region, trained turn
    bool gen = !full.assistant_spans.empty() && spec.roles_to_train.size() == 1 &&
               spec.roles_to_train[0] == "assistant" && eos_rule != "all";
    if (gen) {
      for (const auto& sp : full.assistant_spans) regions.push_back({m.split(T, sp.begin, sp.end), true});
    } else {
      size_t cursor = 0;
      for (size_t i = 0; i < messages.size(); ++i) {
        bool trained = in_train(messages[i].value("role", ""));
        if (!trained && eos_rule != "all") continue;
        std::string why;
        Region r = m.turn_region(T, i, cursor, why);
        if (!r.valid) {
          GRAFT_CHECK_FIX(!trained,
                          "use a chat template with {% generation %} markers, or train_on_inputs: true",
                          "cannot locate turn {} ({}) in the rendered conversation: {}", i,
                          messages[i].value("role", ""), why);
          continue;
        }
        cursor = std::max(cursor, r.ee > r.eb ? r.ee : r.e);
        regions.push_back({r, trained});
      }
    }
    size_t last_trained = regions.size();
    for (size_t k = 0; k < regions.size(); ++k)
      if (regions[k].second) last_trained = k;
    for (size_t k = 0; k < regions.size(); ++k) {
      const auto& [r, trained] = regions[k];
      if (trained)
        for (size_t c = r.b; c < r.e; ++c) cls[c] = kBody;
      bool eot = (eos_rule == "all") || (eos_rule == "turn" && trained) || (eos_rule == "last" && k == last_trained);
      if (eot)
        for (size_t c = r.eb; c < r.ee && c < T.size(); ++c) cls[c] = kEot;
    }
  }

  Sample s;
  std::vector<uint8_t> tcls;
  tokenize_with_classes(tok, T, cls, s.ids, tcls);
  if (options.train_on_inputs) std::fill(tcls.begin(), tcls.end(), kBody);
  s.labels = data_detail::shift_labels(s.ids, tcls);
  return s;
}

}  // namespace graft::train
