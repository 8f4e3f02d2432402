#include "graft/serve/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "graft/model/generate.hpp"
#include "graft/serve/api_error.hpp"

namespace graft::serve {

void validate(const RequestSampling& s) {
  auto check = [](bool ok, const char* param, const std::string& msg) {
    if (!ok) throw bad_request(msg, param, "invalid_value");
  };
  check(std::isfinite(s.temperature) && s.temperature >= 0.0f && s.temperature <= 100.0f, "temperature",
        "temperature must be between 0 and 100 (0 = greedy)");
  check(std::isfinite(s.top_p) && s.top_p > 0.0f && s.top_p <= 1.0f, "top_p", "top_p must be in (0, 1]");
  check(s.top_k >= 0, "top_k", "top_k must be >= 0 (0 or -1 = off)");
  check(std::isfinite(s.min_p) && s.min_p >= 0.0f && s.min_p <= 1.0f, "min_p", "min_p must be in [0, 1]");
  check(std::isfinite(s.presence_penalty) && std::fabs(s.presence_penalty) <= 2.0f, "presence_penalty",
        "presence_penalty must be in [-2, 2]");
  check(std::isfinite(s.frequency_penalty) && std::fabs(s.frequency_penalty) <= 2.0f, "frequency_penalty",
        "frequency_penalty must be in [-2, 2]");
  check(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0.0f && s.repetition_penalty <= 10.0f,
        "repetition_penalty", "repetition_penalty must be in (0, 10]");
}

int32_t pick_token(std::span<const float> logits, const RequestSampling& s, const PenaltyState& st, std::mt19937_64& rng,
                   std::vector<float>& scratch) {
  const bool penalties = s.repetition_penalty != 1.0f || s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f;
  std::span<const float> use = logits;
  if (penalties) {
    scratch.assign(logits.begin(), logits.end());
    const auto V = static_cast<int32_t>(logits.size());
    if (s.repetition_penalty != 1.0f) {
      auto rep = [&](int32_t id) {
        if (id < 0 || id >= V) return;
        float& l = scratch[static_cast<size_t>(id)];
        l = l > 0 ? l / s.repetition_penalty : l * s.repetition_penalty;
      };
      std::unordered_set<int32_t> seen(st.prompt);
      for (const auto& [id, n] : st.generated) seen.insert(id);
      for (int32_t id : seen) rep(id);
    }
    for (const auto& [id, n] : st.generated) {
      if (id < 0 || id >= V) continue;
      scratch[static_cast<size_t>(id)] -= s.presence_penalty + s.frequency_penalty * static_cast<float>(n);
    }
    use = scratch;
  }
  model::SamplingParams p;
  p.temperature = s.temperature;
  p.top_p = s.top_p;
  p.top_k = s.top_k;
  p.min_p = s.min_p;
  return model::sample(use, p, rng);
}

void fill_logprobs(std::span<const float> logits, int32_t id, int top_n, TokenOut& out) {
  const size_t V = logits.size();
  double mx = -INFINITY;
  for (float v : logits) mx = std::max<double>(mx, v);
  double z = 0;
  for (float v : logits) z += std::exp(double(v) - mx);
  const double lse = mx + std::log(z);
  out.id = id;
  out.logprob = static_cast<float>(double(logits[static_cast<size_t>(id)]) - lse);
  out.top.clear();
  if (top_n <= 0) return;
  const size_t n = std::min(static_cast<size_t>(top_n), V);
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n), idx.end(), [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    return la > lb || (la == lb && a < b);
  });
  for (size_t i = 0; i < n; ++i)
    out.top.emplace_back(idx[i], static_cast<float>(double(logits[static_cast<size_t>(idx[i])]) - lse));
}

}  // namespace graft::serve
