// `graft demo [--out DIR] [--steps N]`: the embedded demo, end to end on the CPU.
//  1. graft init-model: a tiny Qwen3-MoE base (4 layers, 8 experts top-2, random weights, graft's
//     byte-level tokenizer with a ChatML template);
//  2. a dataset graft generates: sentences of 3 or 5 words from two word lists; the answer is
//     "positive" or "negative" by majority — a task the random base cannot do and a LoRA can learn;
//  3. graft train with recipes-style settings (QLoRA: NF4 base, LoRA on attention and every expert);
//  4. held-out loss and exact-match accuracy, base vs adapter, side by side.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "command.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"
#include "graft/model/generate.hpp"
#include "graft/model/init_model.hpp"
#include "graft/model/model.hpp"
#include "graft/tokenizer/tokenizer.hpp"
#include "graft/train/trainer.hpp"

namespace {
namespace fs = std::filesystem;
using namespace graft;

const char* kPositive[] = {"good", "great", "happy", "love", "nice", "fun", "best", "kind"};
const char* kNegative[] = {"bad", "sad", "awful", "hate", "poor", "worst", "ugly", "mean"};

struct Example {
  std::string text, answer;
};
std::vector<Example> make_examples(int n, uint64_t seed) {
  std::mt19937_64 r(seed);
  std::vector<Example> v;
  for (int i = 0; i < n; ++i) {
    const int len = (r() % 2) ? 3 : 5;
    int score = 0;
    std::string w;
    for (int j = 0; j < len; ++j) {
      const bool p = r() % 2;
      score += p ? 1 : -1;
      w += (j ? " " : "") + std::string(p ? kPositive[r() % 8] : kNegative[r() % 8]);
    }
    v.push_back({w, score > 0 ? "positive" : "negative"});
  }
  return v;
}
void write_jsonl(const fs::path& p, const std::vector<Example>& ex) {
  std::ofstream o(p);
  for (const auto& e : ex)
    o << nlohmann::json{{"messages", {{{"role", "user"}, {"content", e.text}}, {{"role", "assistant"}, {"content", e.answer}}}}}.dump()
      << "\n";
  GRAFT_CHECK_FIX(o.good(), "choose a writable --out directory", "cannot write '{}'", p.string());
}

// Greedy answer of the model (with the adapter when given) to one user turn.
std::string answer(const model::Model& m, Backend& be, const tokenizer::Tokenizer& tok, const chat_template::ChatTemplate& tpl,
                   const std::string& text, const model::LoraSource* ad, int32_t eos) {
  chat_template::RenderOptions ro;
  ro.add_generation_prompt = true;
  auto ids = tok.encode(tpl.render(nlohmann::ordered_json::array({{{"role", "user"}, {"content", text}}}), ro).text);
  model::GenerateOptions go;
  go.max_tokens = 12;
  go.stop_ids = {eos};
  go.adapter = ad;
  auto out = model::generate(m, be, ids, go);
  if (!out.empty() && out.back() == eos) out.pop_back();
  return tok.decode(out, true);
}

void run(const std::string& out_dir, int steps) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path out = out_dir;
  fs::remove_all(out / "adapter");
  fs::create_directories(out / "data");
  std::printf("== 1/4 graft init-model: tiny Qwen3-MoE base (random weights) -> %s\n", (out / "base").c_str());
  model::InitModelOptions io;
  io.arch = "qwen3_moe";
  io.preset = "tiny";
  io.out = (out / "base").string();
  io.seed = 1;
  io.embed_std = 0.125f;  // 1/sqrt(hidden): logits of unit scale, so a LoRA can move them
  auto ir = model::write_random_model(io);
  std::printf("   %lld parameters, vocab %lld\n", static_cast<long long>(ir.params), static_cast<long long>(ir.vocab));
  std::printf("== 2/4 dataset: majority sentiment of 3-5 words (2000 train / 200 held-out)\n");
  auto train = make_examples(2000, 11), val = make_examples(200, 12);
  write_jsonl(out / "data" / "train.jsonl", train);
  write_jsonl(out / "data" / "val.jsonl", val);
  std::printf("   e.g. \"%s\" -> %s\n", train[0].text.c_str(), train[0].answer.c_str());
  std::printf("== 3/4 graft train (QLoRA: NF4 base, LoRA r=8 on attention and every expert)\n");
  const std::string recipe = fmt::format(R"(base_model: {0}/base
load_in_4bit: true
adapter: qlora
lora_r: 8
lora_alpha: 16
lora_target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
datasets:
  - path: {0}/data/train.jsonl
    type: chat_template
test_datasets:
  - path: {0}/data/val.jsonl
    type: chat_template
sequence_len: 128
gradient_checkpointing: false  # tiny model: activations are small, skip the recompute
micro_batch_size: 8
gradient_accumulation_steps: 1
max_steps: {1}
learning_rate: 0.003
lr_scheduler: cosine
warmup_steps: 10
logging_steps: 25
output_dir: {0}/adapter
seed: 1
)",
                                         out.string(), steps);
  {
    std::ofstream(out / "recipe.yaml") << recipe;
  }
  auto lr = train::load_recipe((out / "recipe.yaml").string());
  auto sum = train::run_training(lr);
  std::printf("== 4/4 evaluation on the held-out split\n");
  auto m = model::Model::load((out / "base").string(), model::LoadOptions{true, true});
  auto tok = tokenizer::Tokenizer::from_file((out / "base").string());
  auto tpl = chat_template::ChatTemplate::from_tokenizer_config((out / "base").string());
  auto ad = adapters::load_peft((out / "adapter").string(), m.config());
  auto be = cpu::make_backend();
  const int32_t eos = *tok.token_to_id("<|im_end|>");
  int em_base = 0, em_ad = 0;
  const int n = 100;
  for (int i = 0; i < n; ++i) {
    em_base += answer(m, *be, tok, tpl, val[static_cast<size_t>(i)].text, nullptr, eos) == val[static_cast<size_t>(i)].answer;
    em_ad += answer(m, *be, tok, tpl, val[static_cast<size_t>(i)].text, &ad, eos) == val[static_cast<size_t>(i)].answer;
  }
  std::printf("\n%-10s %16s %20s\n", "", "held-out loss", "exact match (100)");
  std::printf("%-10s %16.4f %19d%%\n", "base", sum.base_eval_loss, em_base);
  std::printf("%-10s %16.4f %19d%%\n", "adapter", sum.eval_loss, em_ad);
  auto shown = [](std::string t) {  // one line per example: escape newlines
    std::string o;
    for (char c : t) o += c == '\n' ? std::string("\\n") : std::string(1, c);
    return o.size() > 24 ? o.substr(0, 24) + "..." : o;
  };
  for (int i = 0; i < 3; ++i)
    std::printf("  \"%s\": base \"%s\", adapter \"%s\" (expected %s)\n", val[static_cast<size_t>(i)].text.c_str(),
                shown(answer(m, *be, tok, tpl, val[static_cast<size_t>(i)].text, nullptr, eos)).c_str(),
                shown(answer(m, *be, tok, tpl, val[static_cast<size_t>(i)].text, &ad, eos)).c_str(), val[static_cast<size_t>(i)].answer.c_str());
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\nadapter: %s (PEFT: adapter_config.json, adapter_model.safetensors); metrics.jsonl, loss.svg; %.0f s total\n",
              (out / "adapter").c_str(), el);
  GRAFT_CHECK_FIX(sum.eval_loss <= 0.5 * sum.base_eval_loss, "run more --steps",
                  "the adapter's held-out loss {:.4f} is not at most half the base's {:.4f}", sum.eval_loss, sum.base_eval_loss);
  std::printf("demo: OK — held-out loss %.2fx lower than the base\n",
              sum.base_eval_loss / std::max(sum.eval_loss, 1e-9));
}

graft::cli::Registration reg{"demo", 5, [](CLI::App& app) {
  struct Args {
    std::string out = "build/demo";
    int steps = 300;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("demo", "The embedded demo: make a tiny MoE base, train a QLoRA adapter, evaluate vs the base");
  sub->add_option("--out", a->out, "Working directory (base, data, adapter)");
  sub->add_option("--steps", a->steps, "Training steps")->check(CLI::PositiveNumber);
  sub->callback([a] { run(a->out, a->steps); });
}};
}  // namespace
