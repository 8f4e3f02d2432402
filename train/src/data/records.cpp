// Reading dataset files (JSON array / JSONL) into records, with file/line positions for errors.
#include <algorithm>
#include <filesystem>

#include "data_internal.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/generate.hpp"

namespace graft::train::data_detail {

namespace {

int64_t line_of(const std::string& text, size_t byte) {
  byte = std::min(byte, text.size());
  return 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(byte), '\n');
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::vector<Record> parse_jsonl(const std::string& path, const std::string& text) {
  std::vector<Record> out;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    ++line;
    std::string_view l(text.data() + pos, nl - pos);
    pos = nl + 1;
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    Record r;
    try {
      r.value = ojson::parse(l);
    } catch (const nlohmann::json::parse_error& e) {
      GRAFT_FAIL("fix the JSON on that line: a JSONL file holds one complete JSON object per line",
                 "{}: invalid JSON on line {}: {}", path, line, e.what());
    }
    GRAFT_CHECK_FIX(r.value.is_object(), "each line of a JSONL dataset must be a JSON object",
                    "{}: line {} is a JSON {}, not an object", path, line, r.value.type_name());
    r.index = static_cast<int64_t>(out.size());
    r.line = line;
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

std::vector<Record> read_records(const std::string& path) {
  GRAFT_CHECK_FIX(!path.empty(), "set `path` of the dataset", "dataset path is empty");
  GRAFT_CHECK_FIX(std::filesystem::is_regular_file(path), "check the dataset `path` (a local .json or .jsonl file)",
                  "dataset file {} does not exist or is not a file", path);
  std::string text = read_text_file(path);
  if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson")) return parse_jsonl(path, text);

  // .json: an array of objects (or a single object). A file that is not valid JSON as a whole but
  // whose first line is an object is treated as JSONL (common mislabelling).
  ojson doc;
  try {
    doc = ojson::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    size_t first = text.find_first_not_of(" \t\r\n");
    size_t nl = text.find('\n', first == std::string::npos ? 0 : first);
    if (first != std::string::npos && text[first] == '{' && nl != std::string::npos) {
      bool line_ok = ojson::accept(std::string_view(text).substr(first, nl - first));
      if (line_ok) return parse_jsonl(path, text);
    }
    GRAFT_FAIL("fix the JSON (a .json dataset is one array of objects; use .jsonl for one object per line)",
               "{}: invalid JSON at line {}: {}", path, line_of(text, e.byte == 0 ? 0 : e.byte - 1), e.what());
  }
  std::vector<Record> out;
  if (doc.is_object()) {
    out.push_back(Record{std::move(doc), 0, 1});
    return out;
  }
  GRAFT_CHECK_FIX(doc.is_array(), "a .json dataset must be an array of objects",
                  "{}: top-level JSON is a {}, expected an array of records", path, doc.type_name());
  // Approximate the line of each record: scan for top-level '{' positions in the text.
  std::vector<int64_t> lines;
  {
    int depth = 0;
    bool in_str = false, esc = false;
    int64_t line = 1;
    for (char c : text) {
      if (c == '\n') ++line;
      if (in_str) {
        if (esc) esc = false;
        else if (c == '\\') esc = true;
        else if (c == '"') in_str = false;
        continue;
      }
      if (c == '"') in_str = true;
      else if (c == '[' || c == '{') {
        if (depth == 1) lines.push_back(line);
        ++depth;
      } else if (c == ']' || c == '}') --depth;
    }
  }
  out.reserve(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    Record r{std::move(doc[i]), static_cast<int64_t>(i), i < lines.size() ? lines[i] : 0};
    GRAFT_CHECK_FIX(r.value.is_object(), "each element of the dataset array must be a JSON object",
                    "{}: record {} (line {}) is a JSON {}, not an object", path, i, r.line, r.value.type_name());
    out.push_back(std::move(r));
  }
  return out;
}

std::string where(const std::string& path, const Record& r) {
  return fmt::format("{} record {} (line {})", path, r.index, r.line);
}

std::vector<int32_t> shift_labels(const std::vector<int32_t>& ids, const std::vector<uint8_t>& target) {
  std::vector<int32_t> labels(ids.size(), kIgnoreIndex);
  for (size_t i = 0; i + 1 < ids.size(); ++i)
    if (target[i + 1]) labels[i] = ids[i + 1];
  return labels;
}

int32_t token_id(const tokenizer::Tokenizer& tok, const std::string& token) {
  if (token.empty()) return -1;
  auto id = tok.token_to_id(token);
  return id ? *id : -1;
}

int32_t eos_id(const tokenizer::Tokenizer& tok) { return token_id(tok, tok.config().eos_token); }

int32_t bos_id(const tokenizer::Tokenizer& tok) {
  const auto& c = tok.config();
  if (!c.add_bos_token.value_or(false)) return -1;
  return token_id(tok, c.bos_token);
}

int32_t model_special(const DataOptions& opt, int32_t tok_id, int32_t model_id) {
  if (tok_id < 0 || opt.model_vocab_size <= 0 || tok_id < opt.model_vocab_size) return tok_id;
  return model_id >= 0 && model_id < opt.model_vocab_size ? model_id : tok_id;
}

int32_t eos_id(const tokenizer::Tokenizer& tok, const DataOptions& opt) {
  return model_special(opt, eos_id(tok), opt.model_eos_id);
}
int32_t bos_id(const tokenizer::Tokenizer& tok, const DataOptions& opt) {
  return model_special(opt, bos_id(tok), opt.model_bos_id);
}

void map_to_model(Sample& s, const tokenizer::Tokenizer& tok, const DataOptions& opt) {
  if (opt.model_vocab_size <= 0) return;
  const int32_t tb = token_id(tok, tok.config().bos_token), te = eos_id(tok);
  auto map = [&](int32_t& id) {
    if (id < opt.model_vocab_size) return;  // also -100
    int32_t to = id == tb ? model_special(opt, tb, opt.model_bos_id) : id == te ? model_special(opt, te, opt.model_eos_id) : id;
    if (to >= 0 && to < opt.model_vocab_size) {
      id = to;
      return;
    }
    auto piece = tok.id_to_token(id);
    GRAFT_FAIL("use the tokenizer that belongs to this model, or a model whose vocab_size covers the tokenizer "
               "(for bos/eos tokens: set bos_token_id / eos_token_id in config.json)",
               "token id {} (`{}`) is outside the model's vocabulary [0, {}): the tokenizer has more tokens than "
               "the model's embedding", id, piece ? *piece : std::string("?"), opt.model_vocab_size);
  };
  for (auto& id : s.ids) map(id);
  for (auto& l : s.labels) map(l);
}

uint64_t fnv1a(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace graft::train::data_detail

namespace graft::train {

void set_model_token_ids(DataOptions& options, const std::string& model_dir, int64_t vocab_size) {
  namespace fs = std::filesystem;
  options.model_vocab_size = vocab_size;
  options.model_bos_id = options.model_eos_id = -1;
  for (const char* f : {"generation_config.json", "config.json"}) {
    const fs::path p = fs::path(model_dir) / f;
    if (options.model_bos_id >= 0 || !fs::exists(p)) continue;
    auto j = nlohmann::json::parse(read_text_file(p.string()), nullptr, false);
    if (!j.is_object()) continue;
    if (!j.contains("bos_token_id") && j.contains("text_config") && j["text_config"].is_object()) j = j["text_config"];
    if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) options.model_bos_id = it->get<int32_t>();
  }
  auto eos = model::eos_ids(model_dir);
  if (!eos.empty()) options.model_eos_id = eos[0];
}

}  // namespace graft::train
