#include "graft/model/generate.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace graft::model {

void validate(const SamplingParams& p) {
  GRAFT_CHECK_FIX(std::isfinite(p.temperature) && p.temperature >= 0.0f, "use a temperature >= 0 (0 = greedy)",
                  "temperature {} is invalid", p.temperature);
  GRAFT_CHECK_FIX(p.top_p > 0.0f && p.top_p <= 1.0f, "use 0 < top_p <= 1", "top_p {} is invalid", p.top_p);
  GRAFT_CHECK_FIX(p.top_k >= 0, "use top_k >= 0 (0 = off)", "top_k {} is invalid", p.top_k);
  GRAFT_CHECK_FIX(p.min_p >= 0.0f && p.min_p <= 1.0f, "use 0 <= min_p <= 1", "min_p {} is invalid", p.min_p);
}

int32_t sample(std::span<const float> logits, const SamplingParams& p, std::mt19937_64& rng) {
  const int64_t V = static_cast<int64_t>(logits.size());
  GRAFT_CHECK(V > 0, "sample: empty logits");
  if (p.temperature == 0.0f) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  size_t keep = static_cast<size_t>(V);
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  std::vector<double> prob(keep);
  const double mx = logits[static_cast<size_t>(idx[0])];
  double z = 0;
  for (size_t i = 0; i < keep; ++i) z += (prob[i] = std::exp((logits[static_cast<size_t>(idx[i])] - mx) / p.temperature));
  for (auto& v : prob) v /= z;
  if (p.min_p > 0.0f) {
    size_t n = 1;
    while (n < keep && prob[n] >= p.min_p * prob[0]) ++n;
    keep = n;
  }
  if (p.top_p < 1.0f) {
    double c = 0;
    size_t n = 0;
    while (n < keep) {
      c += prob[n++];
      if (c >= p.top_p) break;
    }
    keep = n;
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[i];
  std::uniform_real_distribution<double> u(0.0, total);
  double r = u(rng), acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (r < acc) return idx[i];
  }
  return idx[keep - 1];
}

std::vector<int32_t> generate(const Model& m, Backend& be, std::span<const int32_t> prompt, const GenerateOptions& o,
                              const std::function<bool(int32_t)>& on_token) {
  validate(o.sampling);
  GRAFT_CHECK_FIX(!prompt.empty(), "pass a non-empty prompt", "generate: the prompt has no tokens");
  GRAFT_CHECK_FIX(o.max_tokens >= 0, "use --max-tokens >= 0", "max_tokens {} is negative", o.max_tokens);
  std::mt19937_64 rng(o.sampling.seed);
  KvCache cache = m.new_cache(static_cast<int64_t>(prompt.size()) + o.max_tokens);
  std::vector<int32_t> out;
  if (o.max_tokens == 0) return out;
  std::vector<const LoraSource*> slots;
  if (o.adapter) slots.push_back(o.adapter);
  Batch b;
  b.ids = prompt;
  b.adapters = slots;
  b.last_logits_only = true;
  Tensor logits = m.forward(be, b, &cache);
  const int64_t V = m.vocab_size();
  std::span<const float> last(logits.data<float>() + (logits.size(0) - 1) * V, static_cast<size_t>(V));
  int32_t next = sample(last, o.sampling, rng);
  for (int i = 0; i < o.max_tokens; ++i) {
    out.push_back(next);
    if (on_token && !on_token(next)) break;
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end()) break;
    if (i + 1 == o.max_tokens) break;
    std::vector<int32_t> one = {next};
    Batch s;
    s.ids = one;
    s.adapters = slots;
    Tensor l = m.forward(be, s, &cache);
    next = sample(std::span<const float>(l.data<float>(), static_cast<size_t>(V)), o.sampling, rng);
  }
  return out;
}

std::vector<int32_t> eos_ids(const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::vector<int32_t> ids;
  for (const char* f : {"generation_config.json", "config.json"}) {
    const fs::path p = fs::path(model_dir) / f;
    if (!fs::exists(p)) continue;
    auto j = nlohmann::json::parse(read_text_file(p.string()), nullptr, false);
    if (!j.is_object()) continue;
    const nlohmann::json* e = j.contains("eos_token_id") ? &j["eos_token_id"] : nullptr;
    if (!e && j.contains("text_config") && j["text_config"].is_object() && j["text_config"].contains("eos_token_id"))
      e = &j["text_config"]["eos_token_id"];
    if (!e) continue;
    if (e->is_number_integer()) ids.push_back(e->get<int32_t>());
    else if (e->is_array())
      for (const auto& v : *e)
        if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
    if (!ids.empty()) break;
  }
  return ids;
}

}  // namespace graft::model
