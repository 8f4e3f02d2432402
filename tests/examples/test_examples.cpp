// examples/<story>/run.sh end to end with the built graft (GRAFT) in a scratch WORK directory. Each
// script checks its own outcome (e.g. the adapter beats the base) and exits non-zero otherwise.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "../common/reference_python.hpp"

namespace fs = std::filesystem;

namespace {

// Runs examples/NAME/run.sh; returns {exit code, stdout+stderr}.
std::pair<int, std::string> run_example(const std::string& name) {
  const fs::path work = fs::temp_directory_path() / ("graft_example_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(work);
  const std::string cmd = "GRAFT='" + std::string(GRAFT_BINARY_DIR) + "/bin/graft' PYTHON='" + GRAFT_REF_PYTHON +
                          "' WORK='" + work.string() + "' bash '" + std::string(GRAFT_SOURCE_DIR) + "/examples/" + name +
                          "/run.sh' 2>&1";
  auto r = graft::testing::ref_run(cmd);
  if (!std::getenv("GRAFT_KEEP_TMP")) fs::remove_all(work);
  return r;
}

TEST(Examples, EvaluateAdapterVsBase) {
  GRAFT_REQUIRE_REFERENCE("lm_eval, tenacity, transformers");
  auto [rc, out] = run_example("evaluate-adapter-vs-base");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("detected format chat_template"), std::string::npos) << out;
  EXPECT_NE(out.find("OK: the adapter beats the base on both tasks"), std::string::npos) << out;
}

TEST(Examples, RecipeOnPrivateData) {
  GRAFT_REQUIRE_REFERENCE("torch, transformers, peft");
  auto [rc, out] = run_example("recipe-on-private-data");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("step 120/120"), std::string::npos) << out;  // the progress bar
  EXPECT_NE(out.find("detected format alpaca"), std::string::npos) << out;
  EXPECT_NE(out.find("OK: held-out loss"), std::string::npos) << out;
  EXPECT_NE(out.find("OK: PEFT loaded the adapter"), std::string::npos) << out;
}

TEST(Examples, FineTuneThroughTheApi) {
  GRAFT_REQUIRE_REFERENCE("openai");
  auto [rc, out] = run_example("fine-tune-through-the-api");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("OK: uploaded train.jsonl"), std::string::npos) << out;
  EXPECT_NE(out.find("event [info] Step 40/40: training loss="), std::string::npos) << out;  // events as they come
  EXPECT_NE(out.find("OK: job succeeded, training loss"), std::string::npos) << out;
  EXPECT_NE(out.find("OK: ft:tiny-llama:zebra:ftjob-"), std::string::npos) << out;  // listed in /v1/models
  EXPECT_NE(out.find("OK: the fine-tuned model answers 'zebra' to a held-out question, the base does not"),
            std::string::npos)
      << out;
}

}  // namespace

TEST(Examples, PerCustomerAdapters) {
  GRAFT_REQUIRE_REFERENCE("openai");
  auto [rc, out] = run_example("per-customer-adapters");
  ASSERT_EQ(rc, 0) << out;
  for (const char* ok : {"OK: acme gets its own adapter: chat 'alpha', completion 'alpha'",
                         "OK: globex gets its own adapter: chat 'bravo', completion 'bravo'",
                         "OK: initech gets its own adapter: chat 'charlie', completion 'charlie'",
                         "OK: the base alone answers", "OK: /v1/models lists only the base and the key's own adapter",
                         "OK: another customer's adapter is a 404 model_not_found",
                         "OK: umbrella is a 404 before the hot-load", "OK: a customer key may not load adapters",
                         "OK: umbrella hot-loaded without a restart", "chat 'delta', completion 'delta'",
                         "OK: the hot-loaded adapter is still only umbrella's"})
    EXPECT_NE(out.find(ok), std::string::npos) << ok << "\n" << out;
}
