// End to end: `graft chat-template` prints exactly what Jinja2 (tools/chat_template/render_ref.py) renders.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {
std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST(ChatTemplateCli, MatchesReferenceRenderer) {
  const fs::path graft = fs::path(GRAFT_BINARY_DIR) / "bin" / "graft";
  const fs::path model = fs::path(GRAFT_SOURCE_DIR) / ".." / "shared" / "assets" / "tokenizers" / "qwen3";
  if (!fs::exists(graft)) GTEST_SKIP() << "graft binary not built at " << graft;
  if (!fs::exists(model)) GTEST_SKIP() << "shared assets not found at " << model;
  if (std::system((std::string(GRAFT_REF_PYTHON) + " -c 'import jinja2' >/dev/null 2>&1").c_str()) != 0) GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with jinja2 is unavailable";
  const fs::path dir = fs::path(GRAFT_BINARY_DIR) / "chat_template_cli_test";
  fs::create_directories(dir);
  std::ofstream(dir / "m.json") << R"([{"role":"user","content":"Hi 👋"},{"role":"assistant","content":"<think>\nx\n</think>\n\nHello"},{"role":"user","content":"Weather?"}])";
  std::ofstream(dir / "t.json") << R"([{"type":"function","function":{"name":"get_weather","parameters":{}}}])";
  std::string args = " '" + model.string() + "' --messages '" + (dir / "m.json").string() + "' --tools '" + (dir / "t.json").string() +
                     "' --add-generation-prompt --set enable_thinking=false";
  ASSERT_EQ(std::system((graft.string() + " chat-template" + args + " --now 2024-07-26 > '" + (dir / "g.txt").string() + "'").c_str()), 0);
  ASSERT_EQ(std::system((std::string(GRAFT_REF_PYTHON) + " '" + (fs::path(GRAFT_SOURCE_DIR) / "tools" / "chat_template" / "render_ref.py").string() +
                         "'" + args + " > '" + (dir / "p.txt").string() + "'")
                            .c_str()),
            0);
  EXPECT_EQ(slurp(dir / "g.txt"), slurp(dir / "p.txt"));
  EXPECT_FALSE(slurp(dir / "g.txt").empty());
}
