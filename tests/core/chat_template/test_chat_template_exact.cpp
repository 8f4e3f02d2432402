// Exactness: graft's renders are byte-identical to Jinja2's (configured like Hugging Face) on the
// fixture conversations of tests/core/chat_template/data/conversations.json, for the six real templates.
// Jinja2's output is produced at test time by tools/chat_template/render_ref.py run with the reference venv (tools/.venv).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "graft/chat_template/chat_template.hpp"
#include "graft/error.hpp"

namespace ct = graft::chat_template;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c == '\r') o += "\\r";
    else o.push_back(c);
  }
  return o;
}

std::string diff_excerpt(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  size_t b = i > 60 ? i - 60 : 0;
  std::ostringstream o;
  o << "first difference at byte " << i << " (jinja2 " << want.size() << " bytes, graft " << got.size() << " bytes)\n"
    << "  jinja2: ..." << escape(want.substr(b, 160)) << "\n"
    << "  graft : ..." << escape(got.substr(b, 160)) << "\n";
  return o.str();
}

}  // namespace

TEST(ChatTemplateExact, MatchesJinja2OnRealTemplates) {
  const fs::path src = GRAFT_SOURCE_DIR;
  const fs::path assets = src / ".." / "shared" / "assets" / "tokenizers";
  if (!fs::exists(assets / "qwen3" / "tokenizer_config.json"))
    GTEST_SKIP() << "shared assets not found at " << assets << " (the tokenizer_config.json files of the real templates)";
  if (std::system((std::string(GRAFT_REF_PYTHON) + " -c 'import jinja2' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with jinja2 is unavailable: cannot produce reference renders";
  // GRAFT_CHAT_TEMPLATE_CASES overrides the fixture file (e.g. with tools/chat_template/fuzz_cases.py output).
  const char* override_cases = std::getenv("GRAFT_CHAT_TEMPLATE_CASES");
  const fs::path cases = override_cases ? fs::path(override_cases) : src / "tests" / "core" / "chat_template" / "data" / "conversations.json";
  const fs::path out = fs::path(GRAFT_BINARY_DIR) / "chat_template_jinja2_reference.json";
  std::string cmd = std::string(GRAFT_REF_PYTHON) + " '" + (src / "tools" / "chat_template" / "render_ref.py").string() + "' --assets '" +
                    assets.string() + "' --cases '" + cases.string() + "' --out '" + out.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "reference renderer failed: " << cmd;

  auto fx = nlohmann::ordered_json::parse(slurp(cases));
  auto ref = nlohmann::ordered_json::parse(slurp(out));
  const auto& results = ref["results"];
  ASSERT_EQ(results.size(), fx["cases"].size());

  std::map<std::string, ct::ChatTemplate> templates;
  std::map<std::string, int> compared, errors_matched, mismatches;
  int total_mismatch = 0;
  for (size_t k = 0; k < fx["cases"].size(); ++k) {
    const auto& c = fx["cases"][k];
    const auto& r = results[k];
    const std::string tmpl = c["template"].get<std::string>();
    const std::string name = c.value("template_name", std::string("default"));
    const std::string key = tmpl + "/" + name;
    if (!templates.count(key))
      templates.emplace(key, ct::ChatTemplate::from_tokenizer_config((assets / tmpl).string(), name));
    const auto& tpl = templates.at(key);
    ct::RenderOptions o;
    o.add_generation_prompt = c["add_generation_prompt"].get<bool>();
    if (c.contains("tools")) o.tools = c["tools"].is_null() ? nlohmann::ordered_json() : fx["tools"][c["tools"].get<std::string>()];
    if (c.contains("kwargs")) o.extra = c["kwargs"];
    o.now = ct::make_date(2024, 7, 26);
    std::string got, err;
    bool failed = false;
    try {
      got = tpl.render(fx["conversations"][c["conv"].get<size_t>()], o).text;
    } catch (const graft::Error& e) {
      failed = true;
      err = e.what();
    }
    ++compared[tmpl];
    const std::string id = c["id"].get<std::string>();
    if (r.contains("error")) {
      if (failed) {
        ++errors_matched[tmpl];
        continue;
      }
      ++mismatches[tmpl];
      ++total_mismatch;
      ADD_FAILURE() << id << ": Jinja2 raised (" << r["error"].get<std::string>() << ") but graft rendered:\n  "
                    << escape(got.substr(0, 300));
      continue;
    }
    const std::string want = r["rendered"].get<std::string>();
    if (failed) {
      ++mismatches[tmpl];
      ++total_mismatch;
      ADD_FAILURE() << id << ": graft raised but Jinja2 rendered. graft error:\n" << err;
      continue;
    }
    if (got != want) {
      ++mismatches[tmpl];
      ++total_mismatch;
      ADD_FAILURE() << id << ": render differs from Jinja2\n" << diff_excerpt(want, got);
    }
  }
  for (auto& [t, n] : compared) {
    std::printf("[chat-template exactness] %-13s conversations compared: %3d (of which expected errors: %d), mismatches: %d\n",
                t.c_str(), n, errors_matched[t], mismatches[t]);
    if (!override_cases) {
      EXPECT_GE(n, 50) << t << " needs at least 50 fixture conversations";
    }
  }
  if (!override_cases) {
    EXPECT_EQ(compared.size(), 6u);
  }
  EXPECT_EQ(total_mismatch, 0);
}

TEST(ChatTemplateExact, ExistingGoldens) {
  const fs::path assets = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "tokenizers";
  if (!fs::exists(assets)) GTEST_SKIP() << "shared assets not found at " << assets;
  int n = 0;
  for (const char* t : {"qwen3", "qwen2_5", "llama3_1", "llama3_2", "deepseek_v3", "mistral_nemo"}) {
    auto golden = nlohmann::ordered_json::parse(slurp(assets / t / "golden_chat_jinja2.json"));
    auto tpl = ct::ChatTemplate::from_tokenizer_config((assets / t).string());
    for (auto& g : golden["chat"]) {
      ct::RenderOptions o;
      o.add_generation_prompt = g["add_generation_prompt"].get<bool>();
      o.extra["date_string"] = "26 Jul 2024";  // as render_chat.py passes it
      o.now = ct::make_date(2024, 7, 26);
      if (g["rendered"].is_null()) {
        EXPECT_THROW(tpl.render(g["messages"], o), graft::Error) << t;
      } else {
        EXPECT_EQ(tpl.render(g["messages"], o).text, g["rendered"].get<std::string>()) << t;
      }
      ++n;
    }
  }
  EXPECT_GT(n, 0);
}
