// `graft tokenize DIR --text "..." [--json] [--add-special-tokens]` and
// `graft detokenize DIR --ids 1,2,3 [--skip-special-tokens]`: a model directory's tokenizer.json from the
// command line. tokenize prints the ids space separated on one line (or {"ids":[...],"tokens":[...]} with
// --json); no special tokens are added unless --add-special-tokens. detokenize prints the text.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "command.hpp"
#include "graft/error.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace {

struct TokenizeArgs {
  std::string dir, text;
  bool json = false, add_special = false;
};

struct DetokenizeArgs {
  std::string dir, ids;
  bool skip_special = false;
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(", ", i);
    if (j == std::string::npos) j = s.size();
    std::string tok = s.substr(i, j - i);
    if (!tok.empty()) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(tok, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      GRAFT_CHECK_FIX(used == tok.size() && v >= 0 && v <= INT32_MAX, "pass ids as non-negative integers: --ids 1,2,3",
                      "--ids: '{}' is not a token id", tok);
      ids.push_back(static_cast<int32_t>(v));
    }
    i = j + 1;
  }
  return ids;
}

graft::cli::Registration reg_tok{"tokenize", 30, [](CLI::App& app) {
  auto* sub = app.add_subcommand("tokenize", "Encode text with a model directory's tokenizer.json");
  auto a = std::make_shared<TokenizeArgs>();
  sub->add_option("dir", a->dir, "Model or tokenizer directory holding tokenizer.json")->required();
  sub->add_option("--text", a->text, "Text to encode")->required();
  sub->add_flag("--json", a->json, "Print {\"ids\":[...],\"tokens\":[...]}");
  sub->add_flag("--add-special-tokens", a->add_special, "Apply the post-processor (BOS/EOS templates)");
  sub->callback([a] {
    auto tok = graft::tokenizer::Tokenizer::from_file(a->dir);
    auto enc = tok.encode_with_tokens(a->text, a->add_special);
    if (a->json) {
      nlohmann::json out;
      out["ids"] = enc.ids;
      out["tokens"] = nlohmann::json::array();
      for (auto& t : enc.tokens) out["tokens"].push_back(graft::tokenizer::utf8_lossy(t));
      std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
      return;
    }
    std::string line;
    for (size_t i = 0; i < enc.ids.size(); ++i) {
      if (i) line.push_back(' ');
      line += std::to_string(enc.ids[i]);
    }
    std::printf("%s\n", line.c_str());
  });
}};

graft::cli::Registration reg_detok{"detokenize", 31, [](CLI::App& app) {
  auto* sub = app.add_subcommand("detokenize", "Decode token ids with a model directory's tokenizer.json");
  auto a = std::make_shared<DetokenizeArgs>();
  sub->add_option("dir", a->dir, "Model or tokenizer directory holding tokenizer.json")->required();
  sub->add_option("--ids", a->ids, "Comma-separated token ids, e.g. 1,2,3")->required();
  sub->add_flag("--skip-special-tokens", a->skip_special, "Drop special tokens from the text");
  sub->callback([a] {
    auto tok = graft::tokenizer::Tokenizer::from_file(a->dir);
    std::string text = tok.decode(parse_ids(a->ids), a->skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
  });
}};

}  // namespace
