// Shared helpers of the fine-tuning tests (tests/finetune/jobs, tests/finetune/e2e): a small
// deterministic chat dataset and whole-file reads.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace graft::finetunetest {

// n JSONL chat records ("<word> <word>" -> "positive" / "negative"); `seed` shifts the word pairs.
inline std::string dataset(int n, int seed) {
  std::string s;
  const char* words[] = {"good", "bad", "fine", "awful", "great", "poor"};
  for (int i = 0; i < n; ++i) {
    const int a = (i * 7 + seed) % 6, b = (i * 5 + seed + 1) % 6;
    nlohmann::json j = {{"messages", {{{"role", "user"}, {"content", std::string(words[a]) + " " + words[b]}},
                                      {{"role", "assistant"}, {"content", a % 2 ? "negative" : "positive"}}}}};
    s += j.dump() + "\n";
  }
  return s;
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace graft::finetunetest
