// `graft eval MODEL_DIR [--adapter DIR]... --data FILE [--type T] [--chat-template T] [--prompt P]...
//  [--max-tokens N] [--load-in-4bit] [--lm-head-dtype f32|q8|q6|nf4] [--json]`
// Held-out loss and perplexity of the base and of each adapter on the same data, side by side, and
// greedy generations for a few prompts (from --prompt, or the first user turns of the data). Without
// --type the format is detected from the records' fields (train::detect_dataset_type).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "command.hpp"
#include "device_option.hpp"
#include "expert_parallel_inference.hpp"
#include "lm_head_option.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/generate.hpp"
#include "graft/tokenizer/tokenizer.hpp"
#include "graft/train/data.hpp"

namespace {
namespace fs = std::filesystem;
using namespace graft;

struct EvalArgs {
  std::string device = "auto";  // --device
  std::string lm_head_dtype = "f32";  // --lm-head-dtype
  std::string dir, data, type, chat_template;
  std::vector<std::string> adapters, prompts;
  int max_tokens = 32, seq_len = 2048;
  bool json = false, load_in_4bit = false;
};

struct Row {
  std::string name;
  double loss = 0;
  int64_t tokens = 0;
  std::vector<std::string> generations;
};

void run(const EvalArgs& a) {
  model::LoadOptions lo;
  lo.load_in_4bit = a.load_in_4bit;
  lo.lm_head_dtype = graft::cli::lm_head_dtype(a.lm_head_dtype);
  graft::cli::InferenceGroup group(a.dir, lo, a.device, "eval");  // mpirun: experts sharded over the ranks
  if (!group.model()) return;  // a worker rank: it served its experts' rows until rank 0 finished
  auto& m = *group.model();
  auto tok = tokenizer::Tokenizer::from_file(a.dir);
  train::DatasetSpec spec;
  spec.path = a.data;
  spec.type = a.type;
  if (spec.type.empty()) {
    spec.type = train::detect_dataset_type(a.data);
    std::fprintf(stderr, "graft eval: %s: detected format %s (force one with --type)\n", a.data.c_str(), spec.type.c_str());
  }
  if (spec.type == "sharegpt") spec.field_messages = "conversations";
  train::DataOptions dopt;
  dopt.sequence_len = a.seq_len;
  train::set_model_token_ids(dopt, a.dir, m.vocab_size());
  // The template: --chat-template (chatml, a .jinja file or Jinja source), else tokenizer_config.json's.
  std::unique_ptr<chat_template::ChatTemplate> tpl;
  if (!a.chat_template.empty() && a.chat_template != "tokenizer_default") {
    dopt.chat_template = fs::exists(a.chat_template) ? read_text_file(a.chat_template) : a.chat_template;
    train::DatasetSpec chat_spec;
    chat_spec.type = "chat_template";
    tpl = std::make_unique<chat_template::ChatTemplate>(
        train::effective_template_source(chat_spec, tok, nullptr, dopt), "--chat-template");
    const auto& c = tok.config();
    tpl->variables().update(nlohmann::ordered_json{{"bos_token", c.bos_token}, {"eos_token", c.eos_token},
                                                   {"pad_token", c.pad_token}, {"unk_token", c.unk_token}});
  } else if (!tok.config().chat_template.empty()) {
    tpl = std::make_unique<chat_template::ChatTemplate>(chat_template::ChatTemplate::from_tokenizer_config(a.dir));
  }
  auto samples = train::load_dataset(spec, tok, tpl.get(), dopt);
  GRAFT_CHECK_FIX(!samples.empty(), "pass a data file with at least one usable sample", "no samples in '{}'", a.data);
  std::vector<adapters::Adapter> ads;
  for (const auto& d : a.adapters) ads.push_back(adapters::load_peft(d, m.config()));
  auto be = graft::cli::backend_for(a.device);
  // Prompts: explicit, else the first user turns of up to 3 records (rendered with the template).
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<std::string> prompt_text = a.prompts;
  for (const auto& p : a.prompts) {
    if (tpl) {
      chat_template::RenderOptions ro;
      ro.add_generation_prompt = true;
      prompt_ids.push_back(tok.encode(tpl->render(nlohmann::ordered_json::array({{{"role", "user"}, {"content", p}}}), ro).text));
    } else {
      prompt_ids.push_back(tok.encode(p, true));
    }
  }
  if (prompt_ids.empty())
    for (size_t i = 0; i < samples.size() && prompt_ids.size() < 3; ++i) {
      const auto& s = samples[i];
      size_t first = 0;
      while (first < s.labels.size() && s.labels[first] == -100) ++first;
      if (first >= s.ids.size()) continue;
      prompt_ids.emplace_back(s.ids.begin(), s.ids.begin() + static_cast<long>(first) + 1);
      prompt_text.push_back(tok.decode(prompt_ids.back(), true));
    }
  std::vector<Row> rows;
  for (size_t k = 0; k <= ads.size(); ++k) {
    Row row;
    row.name = k == 0 ? "base" : a.adapters[k - 1];
    std::vector<const model::LoraSource*> slots;
    if (k > 0) slots.push_back(&ads[k - 1]);
    double sum = 0;
    for (const auto& s : samples) {
      model::Batch b;
      b.ids = s.ids;
      b.adapters = slots;
      Tensor lg = m.forward(*be, b);
      int64_t v = 0;
      for (int32_t l : s.labels) v += l != -100;
      if (!v) continue;
      sum += cpu::ref::cross_entropy<float>(lg.data<float>(), s.labels, static_cast<int64_t>(s.ids.size()), m.vocab_size(), nullptr) * v;
      row.tokens += v;
    }
    row.loss = row.tokens ? sum / static_cast<double>(row.tokens) : 0;
    model::GenerateOptions go;
    go.max_tokens = a.max_tokens;
    go.stop_ids = model::eos_ids(a.dir);
    go.adapter = k > 0 ? &ads[k - 1] : nullptr;
    for (const auto& p : prompt_ids) {
      auto out = model::generate(m, *be, p, go);
      if (!out.empty() && std::find(go.stop_ids.begin(), go.stop_ids.end(), out.back()) != go.stop_ids.end()) out.pop_back();
      row.generations.push_back(tok.decode(out, true));
    }
    rows.push_back(std::move(row));
  }
  if (a.json) {
    nlohmann::json j = {{"data", a.data}, {"samples", samples.size()}, {"prompts", prompt_text}, {"results", nlohmann::json::array()}};
    for (const auto& r : rows)
      j["results"].push_back({{"name", r.name}, {"loss", r.loss}, {"perplexity", std::exp(r.loss)}, {"tokens", r.tokens},
                              {"generations", r.generations}});
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  std::printf("%-40s %10s %12s %10s\n", "model", "loss", "perplexity", "tokens");
  for (const auto& r : rows)
    std::printf("%-40s %10.4f %12.3f %10lld\n", r.name.c_str(), r.loss, std::exp(r.loss), static_cast<long long>(r.tokens));
  for (size_t i = 0; i < prompt_text.size(); ++i) {
    std::printf("\nprompt: %s\n", prompt_text[i].c_str());
    for (const auto& r : rows) std::printf("  %-20s %s\n", (r.name.size() > 20 ? r.name.substr(r.name.size() - 20) : r.name).c_str(), r.generations[i].c_str());
  }
}

graft::cli::Registration reg{"eval", 55, [](CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "Held-out loss/perplexity and generations: base vs adapters, side by side");
  sub->add_option("model_dir", a->dir, "Base model directory")->required();
  graft::cli::add_device_option(sub, a->device);
  sub->add_option("--adapter", a->adapters, "PEFT adapter directory (repeatable)");
  sub->add_option("--data", a->data, "Held-out data file (.json / .jsonl)")->required();
  sub->add_option("--type", a->type, "Data format: chat_template (messages), sharegpt, alpaca, completion, pretokenized "
                  "(default: detected from the records)");
  sub->add_option("--chat-template", a->chat_template,
                  "Template for chat data and prompts: chatml, a .jinja file or Jinja source (default: the tokenizer's)");
  sub->add_option("--prompt", a->prompts, "Prompt to generate from (repeatable; default: the data's first user turns)");
  sub->add_option("--max-tokens", a->max_tokens, "Maximum generated tokens per prompt");
  sub->add_option("--sequence-len", a->seq_len, "Longest sample kept");
  sub->add_flag("--load-in-4bit", a->load_in_4bit, "Quantize the base to NF4 on load");
  graft::cli::add_lm_head_dtype_option(sub, a->lm_head_dtype);
  sub->add_flag("--json", a->json, "Print JSON");
  sub->callback([a] { run(*a); });
}};
}  // namespace
