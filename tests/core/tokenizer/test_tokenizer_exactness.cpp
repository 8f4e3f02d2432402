// Exactness against Hugging Face's Rust tokenizers (PyPI `tokenizers`, pinned in tools/requirements-reference.txt,
// run from the reference venv tools/.venv) on the committed
// corpus (tests/core/tokenizer/data/corpus.json, from tools/tokenizer/gen_corpus.py): every tokenizer in
// shared/assets/tokenizers plus stories260K; ids with add_special_tokens=false for every string, with true for
// the first kSpecial strings, and decode(ids) vs HF decode (with and without skip_special_tokens).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "graft/tokenizer/tokenizer.hpp"
#include "../../common/reference_python.hpp"

namespace fs = std::filesystem;
using graft::tokenizer::Tokenizer;
using json = nlohmann::json;

namespace {

constexpr int kSpecial = 300;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

struct Fixture {
  std::string skip_reason;
  std::vector<std::pair<std::string, fs::path>> toks;  // name, dir
  json corpus, ref;
};

const Fixture& fixture() {
  static Fixture fx = [] {
    Fixture f;
    fs::path src(GRAFT_SOURCE_DIR);
    fs::path assets = src / ".." / "shared" / "assets";
    if (!fs::exists(assets / "tokenizers")) {
      f.skip_reason = "shared assets absent (" + (assets / "tokenizers").string() + "): exactness test skipped";
      return f;
    }
    if (std::string why = graft::testing::ref_python_missing("tokenizers"); !why.empty()) {
      f.skip_reason = why;
      return f;
    }
    std::vector<fs::path> dirs;
    for (auto& e : fs::directory_iterator(assets / "tokenizers"))
      if (fs::exists(e.path() / "tokenizer.json")) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
    dirs.push_back(assets / "models" / "stories260K_hf_llama");
    // Hand-built documents exercising the components the real tokenizers do not use (make_synthetic.py).
    std::vector<fs::path> synth;
    for (auto& e : fs::directory_iterator(src / "tests" / "core" / "tokenizer" / "data" / "synthetic"))
      if (e.path().extension() == ".json") synth.push_back(e.path());
    std::sort(synth.begin(), synth.end());
    dirs.insert(dirs.end(), synth.begin(), synth.end());
    fs::path corpus = src / "tests" / "core" / "tokenizer" / "data" / "corpus.json";
    fs::path out = fs::temp_directory_path() / ("graft_tok_ref_" + std::to_string(::getpid()) + ".json");
    std::string cmd = graft::testing::ref_python() + " '" + (src / "tools" / "tokenizer" / "hf_reference.py").string() + "' '" + corpus.string() +
                      "' '" + out.string() + "' " + std::to_string(kSpecial);
    for (auto& d : dirs) {
      bool file = d.extension() == ".json";
      std::string name = file ? "synthetic/" + d.stem().string() : d.filename().string();
      f.toks.emplace_back(name, d);
      cmd += " '" + name + "=" + (file ? d : d / "tokenizer.json").string() + "'";
    }
    int rc = std::system(cmd.c_str());
    if (rc != 0) {
      f.skip_reason = "FAILED to run the Python reference: " + cmd;
      return f;
    }
    f.corpus = json::parse(slurp(corpus));
    f.ref = json::parse(slurp(out));
    fs::remove(out);
    return f;
  }();
  return fx;
}

}  // namespace

TEST(TokenizerExactness, MatchesHuggingFaceRust) {
  const Fixture& fx = fixture();
  if (!fx.skip_reason.empty()) {
    ASSERT_EQ(fx.skip_reason.rfind("FAILED", 0), std::string::npos) << fx.skip_reason;
    GTEST_SKIP() << fx.skip_reason;
  }
  ASSERT_GE(fx.corpus.size(), 2000u);
  for (auto& [name, dir] : fx.toks) {
    Tokenizer tok = Tokenizer::from_file(dir.string());
    const json& r = fx.ref.at(name);
    size_t mismatches = 0, decode_mismatches = 0, compared = 0, compared_special = 0;
    for (size_t i = 0; i < fx.corpus.size(); ++i) {
      const std::string s = fx.corpus[i].get<std::string>();
      auto want = r["ids"][i].get<std::vector<int32_t>>();
      auto got = tok.encode(s, false);
      ++compared;
      if (got != want && ++mismatches <= 10)
        ADD_FAILURE() << name << " encode mismatch on #" << i << " " << json(s).dump() << "\n  graft: " << ids_str(got)
                      << "\n  HF:    " << ids_str(want);
      std::string dec = tok.decode(want, false);
      if (dec != r["decoded"][i].get<std::string>() && ++decode_mismatches <= 10)
        ADD_FAILURE() << name << " decode mismatch on #" << i << " ids " << ids_str(want) << "\n  graft: " << json(dec).dump()
                      << "\n  HF:    " << r["decoded"][i].dump();
      if (static_cast<int>(i) < kSpecial) {
        auto want2 = r["ids_special"][i].get<std::vector<int32_t>>();
        auto got2 = tok.encode(s, true);
        ++compared_special;
        if (got2 != want2 && ++mismatches <= 10)
          ADD_FAILURE() << name << " encode(add_special_tokens) mismatch on #" << i << " " << json(s).dump()
                        << "\n  graft: " << ids_str(got2) << "\n  HF:    " << ids_str(want2);
        std::string dec2 = tok.decode(want2, true);
        if (dec2 != r["decoded_skip"][i].get<std::string>() && ++decode_mismatches <= 10)
          ADD_FAILURE() << name << " decode(skip_special) mismatch on #" << i << "\n  graft: " << json(dec2).dump()
                        << "\n  HF:    " << r["decoded_skip"][i].dump();
      }
    }
    std::printf("[exactness] %-34s strings=%zu (+%zu with special tokens) encode_mismatches=%zu decode_mismatches=%zu\n",
                name.c_str(), compared, compared_special, mismatches, decode_mismatches);
    EXPECT_EQ(mismatches, 0u) << name;
    EXPECT_EQ(decode_mismatches, 0u) << name;
  }
}
