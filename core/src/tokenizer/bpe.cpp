// BPE model of tokenizer.json, following HF tokenizers 0.22 (models/bpe/{model,word}.rs):
// per-character symbols (with byte fallback / unk fusing), then merges applied lowest rank first with a
// binary heap over a doubly linked symbol list; whole-word shortcut when ignore_merges; word cache.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "graft/error.hpp"
#include "graft/tokenizer/detail.hpp"

namespace graft::tokenizer::detail {

int32_t token_id(const nlohmann::json& v, const std::string& where) {
  auto bad = [&](const std::string& shown) {
    GRAFT_FAIL("token ids are integers in [0, " + std::to_string(kMaxTokenId) + "]; fix tokenizer.json",
               "{}: token id {} is out of range [0, {}]", where, shown, kMaxTokenId);
  };
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(kMaxTokenId)) bad(std::to_string(u));
    return static_cast<int32_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0 || i > kMaxTokenId) bad(std::to_string(i));
    return static_cast<int32_t>(i);
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    GRAFT_CHECK_FIX(std::isfinite(d) && d == std::floor(d), "token ids are integers; fix tokenizer.json",
                    "{}: token id {} is not an integer", where, v.dump());
    if (d < 0 || d > static_cast<double>(kMaxTokenId)) bad(fmt::format("{:.0f}", d));
    return static_cast<int32_t>(d);
  }
  GRAFT_FAIL("token ids are integers; fix tokenizer.json", "{}: token id must be an integer, got {} {}", where,
             v.type_name(), v.dump());
}

using json = nlohmann::json;

size_t StringHash::operator()(std::string_view s) const noexcept {
  // FNV-1a 64 over 8-byte words: fast for the short keys of a vocabulary.
  uint64_t h = 0xcbf29ce484222325ull ^ s.size();
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  uint64_t w = 0;
  std::memcpy(&w, s.data() + i, s.size() - i);
  h = (h ^ w) * 0x100000001b3ull;
  h ^= h >> 32;
  return static_cast<size_t>(h);
}

BpeModel::BpeModel(const json& m, const std::string& where) {
  std::string type = m.value("type", std::string("BPE"));
  GRAFT_CHECK_FIX(type == "BPE", "graft supports BPE models (byte-level and sentencepiece-style); convert the tokenizer",
                  "tokenizer.json {}/type: unsupported model type '{}'", where, type);
  if (m.contains("dropout") && !m["dropout"].is_null()) {
    double d = m["dropout"].get<double>();
    GRAFT_CHECK(d == 0.0 || d == 1.0, "tokenizer.json {}/dropout: BPE dropout {} is not supported (only null/0)", where, d);
  }
  auto opt_str = [&](const char* k) -> std::optional<std::string> {
    if (!m.contains(k) || m[k].is_null()) return std::nullopt;
    return m[k].get<std::string>();
  };
  unk_token_ = opt_str("unk_token");
  prefix_ = opt_str("continuing_subword_prefix");
  suffix_ = opt_str("end_of_word_suffix");
  fuse_unk_ = m.value("fuse_unk", false);
  byte_fallback_ = m.value("byte_fallback", false);
  ignore_merges_ = m.value("ignore_merges", false);

  GRAFT_CHECK(m.contains("vocab") && m["vocab"].is_object(), "tokenizer.json {}/vocab: missing or not an object", where);
  const json& vocab = m["vocab"];
  vocab_.reserve(vocab.size() * 2);
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int32_t id = token_id(it.value(), fmt::format("tokenizer.json {}/vocab['{}']", where, it.key()));
    vocab_.emplace(it.key(), id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (auto& [k, v] : vocab_) id_to_token_[static_cast<size_t>(v)] = k;

  if (unk_token_) {
    auto it = vocab_.find(*unk_token_);
    GRAFT_CHECK(it != vocab_.end(), "tokenizer.json {}/unk_token: '{}' is not in the vocabulary", where, *unk_token_);
    unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    auto it = vocab_.find(std::string_view(buf));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }

  // Merges: "a b" strings or [a, b] pairs; rank = position.
  const json& merges = m.contains("merges") ? m["merges"] : json::array();
  size_t n = merges.size();
  size_t cap = 16;
  while (cap < n * 2 + 16) cap <<= 1;
  merges_.assign(cap, MergeEntry{kEmpty, 0, 0});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  size_t prefix_len = prefix_ ? prefix_->size() : 0;
  for (size_t r = 0; r < n; ++r) {
    const json& e = merges[r];
    std::string a, b;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ');
      GRAFT_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                  "tokenizer.json {}/merges/{}: merge '{}' is not two tokens separated by one space", where, r, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      GRAFT_CHECK(e.is_array() && e.size() == 2, "tokenizer.json {}/merges/{}: expected \"a b\" or [a, b]", where, r);
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b);
    GRAFT_CHECK(ia != vocab_.end() && ib != vocab_.end(), "tokenizer.json {}/merges/{}: token '{}' of merge is not in the vocabulary",
                where, r, ia == vocab_.end() ? a : b);
    std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : b);
    auto im = vocab_.find(merged);
    GRAFT_CHECK(im != vocab_.end(), "tokenizer.json {}/merges/{}: merged token '{}' is not in the vocabulary", where, r, merged);
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
    size_t h = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (merges_[h].key != kEmpty && merges_[h].key != key) h = (h + 1) & mask_;
    if (merges_[h].key == key) continue;  // duplicate merge: the first (lowest rank) wins, like HF's map build
    merges_[h] = MergeEntry{key, static_cast<uint32_t>(r), im->second};
  }

  use_char_table_ = (!prefix_ || prefix_->empty()) && (!suffix_ || suffix_->empty());
  if (use_char_table_) {
    char_id_.assign(0x800, -1);
    for (uint32_t cp = 0; cp < 0x800; ++cp) {
      std::string s;
      append_utf8(s, cp);
      auto it = vocab_.find(s);
      if (it != vocab_.end()) char_id_[cp] = it->second;
    }
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view s) const {
  auto it = vocab_.find(s);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || id_to_token_[static_cast<size_t>(id)].empty()) return nullptr;
  return &id_to_token_[static_cast<size_t>(id)];
}

void BpeModel::clear_cache() const {
  std::lock_guard<std::mutex> lk(cache_mu_);
  cache_.clear();
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() < kCacheMaxWord) {
    std::lock_guard<std::mutex> lk(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t before = out.size();
  merge_word(word, out);
  if (word.size() < kCacheMaxWord) {
    std::lock_guard<std::mutex> lk(cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<ptrdiff_t>(before), out.end()));
  }
}

namespace {
struct Symbol {
  int32_t c;
  int32_t prev, next;
  uint32_t len;
};
struct QItem {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
};
// Heap order: lowest rank first, then lowest position (HF's Merge Ord).
struct QLess {
  bool operator()(const QItem& a, const QItem& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  }
};
}  // namespace

void BpeModel::merge_word(std::string_view w, std::vector<int32_t>& out) const {
  thread_local std::vector<Symbol> sym;
  thread_local std::vector<QItem> heap;
  thread_local std::string tmp;
  sym.clear();
  heap.clear();
  auto add = [&](int32_t id, size_t len) {
    int32_t idx = static_cast<int32_t>(sym.size());
    sym.push_back(Symbol{id, idx - 1, -1, static_cast<uint32_t>(len)});
    if (idx > 0) sym[static_cast<size_t>(idx - 1)].next = idx;
  };
  bool has_unk = false;
  int32_t unk_id = 0;
  size_t unk_len = 0;
  size_t i = 0;
  while (i < w.size()) {
    size_t st = i;
    uint32_t cp = next_cp(w, i);
    size_t byte_len = i - st;
    int32_t id = -1;
    if (use_char_table_ && cp < 0x800) {
      id = char_id_[cp];
    } else {
      std::string_view s = w.substr(st, byte_len);
      const std::string* key = nullptr;
      if ((st != 0 && prefix_) || (i == w.size() && suffix_)) {
        tmp.clear();
        if (st != 0 && prefix_) tmp += *prefix_;
        tmp.append(s);
        if (i == w.size() && suffix_) tmp += *suffix_;
        key = &tmp;
      }
      auto it = key ? vocab_.find(*key) : vocab_.find(s);
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      if (has_unk) {
        add(unk_id, unk_len);
        has_unk = false;
      }
      add(id, byte_len);
      continue;
    }
    if (byte_fallback_) {
      // HF builds the fallback from the (prefixed/suffixed) string's bytes; with a prefix these differ.
      std::string s(w.substr(st, byte_len));
      if (st != 0 && prefix_) s = *prefix_ + s;
      if (i == w.size() && suffix_) s += *suffix_;
      bool all = true;
      for (unsigned char b : s)
        if (byte_ids_[b] < 0) {
          all = false;
          break;
        }
      if (all) {
        for (unsigned char b : s) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_token_) {
      if (has_unk && fuse_unk_) {
        unk_len += byte_len;
      } else {
        if (has_unk) add(unk_id, unk_len);
        has_unk = true;
        unk_id = unk_id_;
        unk_len = byte_len;
      }
    }
  }
  if (has_unk) add(unk_id, unk_len);

  for (size_t k = 0; k + 1 < sym.size(); ++k) {
    if (const MergeEntry* m = find_merge(sym[k].c, sym[k + 1].c)) heap.push_back(QItem{m->rank, static_cast<int32_t>(k), m->new_id});
  }
  std::make_heap(heap.begin(), heap.end(), QLess{});
  const int32_t nsym = static_cast<int32_t>(sym.size());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), QLess{});
    QItem top = heap.back();
    heap.pop_back();
    Symbol& cur = sym[static_cast<size_t>(top.pos)];
    if (cur.len == 0 || cur.next == -1) continue;
    int32_t next_pos = cur.next;
    Symbol right = sym[static_cast<size_t>(next_pos)];
    const MergeEntry* m = find_merge(cur.c, right.c);
    if (!m || m->new_id != top.new_id) continue;
    cur.c = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    sym[static_cast<size_t>(next_pos)].len = 0;
    if (right.next > -1 && right.next < nsym) sym[static_cast<size_t>(right.next)].prev = top.pos;
    if (cur.prev >= 0) {
      const Symbol& p = sym[static_cast<size_t>(cur.prev)];
      if (const MergeEntry* pm = find_merge(p.c, cur.c)) {
        heap.push_back(QItem{pm->rank, cur.prev, pm->new_id});
        std::push_heap(heap.begin(), heap.end(), QLess{});
      }
    }
    if (cur.next >= 0 && cur.next < nsym) {
      const Symbol& nx = sym[static_cast<size_t>(cur.next)];
      if (const MergeEntry* nm = find_merge(cur.c, nx.c)) {
        heap.push_back(QItem{nm->rank, top.pos, nm->new_id});
        std::push_heap(heap.begin(), heap.end(), QLess{});
      }
    }
  }
  for (auto& s : sym)
    if (s.len != 0) out.push_back(s.c);
}

}  // namespace graft::tokenizer::detail
