// `graft serve --enable-fine-tuning` on a tiny MoE base: 8 clients stream completions on the base and
// an existing adapter while a key uploads data (a corrupt upload and a job on an unknown base fail
// cleanly), starts a job and follows its events; the server is SIGKILLed mid-job and restarted, the
// job resumes from its checkpoint, finishes, and its adapter appears in /v1/models for its owner only
// and answers; no serving request fails; the adapter is byte-identical to `graft train` on the job's
// recipe.yaml.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <fstream>
#include <thread>

#include "../../adapters/adapter_test_util.hpp"
#include "../../common/reference_python.hpp"
#include "../../common/run_graft.hpp"
#include "../finetune_test_util.hpp"
#include "../../serve/e2e/serve_process.hpp"

using namespace graft;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
using finetunetest::dataset;
using finetunetest::read_bytes;

struct Client {
  explicit Client(int port, std::string key) : cli("127.0.0.1", port), key(std::move(key)) {
    cli.set_read_timeout(120, 0);
  }
  httplib::Headers h() const { return {{"Authorization", "Bearer " + key}}; }
  std::pair<int, json> get(const std::string& p) {
    auto r = cli.Get(p, h());
    return {r ? r->status : -1, r ? json::parse(r->body, nullptr, false) : json()};
  }
  std::pair<int, json> post(const std::string& p, const json& body) {
    auto r = cli.Post(p, h(), body.dump(), "application/json");
    return {r ? r->status : -1, r ? json::parse(r->body, nullptr, false) : json()};
  }
  std::pair<int, json> upload(const std::string& name, const std::string& content) {
    httplib::MultipartFormDataItems items = {{"purpose", "fine-tune", "", ""}, {"file", content, name, "application/jsonl"}};
    auto r = cli.Post("/v1/files", h(), items);
    return {r ? r->status : -1, r ? json::parse(r->body, nullptr, false) : json()};
  }
  httplib::Client cli;
  std::string key;
};

// Clients that stream completions until stopped; any non-200, error event or missing [DONE] counts.
struct Load {
  std::atomic<bool> run{true};
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> threads;
  std::string last_failure;
  std::mutex mu;
  void start(int port, int n) {
    run = true;
    for (int i = 0; i < n; ++i)
      threads.emplace_back([this, port, i] {
        Client c(port, "alice");
        while (run) {
          json body = {{"model", i % 2 ? "a1" : "tiny"}, {"prompt", "good bad " + std::to_string(i)},
                       {"max_tokens", 8}, {"temperature", 0}, {"stream", true}};
          auto r = c.cli.Post("/v1/completions", c.h(), body.dump(), "application/json");
          if (r && r->status == 200 && r->body.find("data: [DONE]") != std::string::npos &&
              r->body.find("\"error\"") == std::string::npos) {
            ++ok;
          } else {
            ++failed;
            std::lock_guard<std::mutex> g(mu);
            last_failure = r ? std::to_string(r->status) + " " + r->body.substr(0, 300) : httplib::to_string(r.error());
          }
        }
      });
  }
  void stop() {
    run = false;
    for (auto& t : threads) t.join();
    threads.clear();
  }
};
}  // namespace

TEST(FineTuneE2E, JobsTrainWhileServingSurviveSigkillAndMatchGraftTrain) {
  const fs::path dir = fs::temp_directory_path() / ("graft_ft_e2e_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto r = graft::testing::run_graft("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + (dir / "base").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto cfg = config::parse_model_config_text(read_bytes(dir / "base" / "config.json"));
  adapters::save_peft((dir / "adapters" / "a1").string(), testutil::random_adapter(cfg, 4, 16, 1), cfg);
  {
    std::ofstream k(dir / "keys.json");
    k << R"({"alice": ["a1"], "bob": []})";
  }
  const std::vector<std::string> args = {(dir / "base").string(), "--served-model-name", "tiny", "--adapter",
                                         "a1=" + (dir / "adapters" / "a1").string(), "--api-keys-file",
                                         (dir / "keys.json").string(), "--enable-fine-tuning", "--ft-dir",
                                         (dir / "ft").string(), "--ft-compute-share", "0.3"};
  graft::testing::ServeProcess server;
  ASSERT_TRUE(server.start(args, dir, "first")) << server.log();
  Load load;
  load.start(server.port(), 8);
  Client alice(server.port(), "alice"), bob(server.port(), "bob");
  // Bad inputs fail with clear 4xx and leave everything running.
  auto [bad_st, bad] = alice.upload("broken.jsonl", dataset(3, 0) + "{not json\n");
  EXPECT_EQ(bad_st, 400) << bad.dump();
  EXPECT_NE(bad.dump().find("line 4"), std::string::npos) << bad.dump();
  auto [up_st, up] = alice.upload("train.jsonl", dataset(32, 0));
  ASSERT_EQ(up_st, 200) << up.dump();
  const std::string file_id = up["id"];
  EXPECT_EQ(bob.get("/v1/files/" + file_id).first, 404) << "bob must not see alice's file";
  json job_req = {{"model", "tiny"}, {"training_file", file_id}, {"suffix", "acme"},
                  {"hyperparameters", {{"batch_size", 2}}},
                  {"extra", {{"max_steps", 30}, {"sequence_len", 64}, {"save_steps", 3}, {"learning_rate", 1e-3}}}};
  auto unknown = job_req;
  unknown["model"] = "llama-9000";
  EXPECT_EQ(alice.post("/v1/fine_tuning/jobs", unknown).first, 404);
  EXPECT_EQ(bob.post("/v1/fine_tuning/jobs", job_req).first, 404) << "bob cannot train on alice's file";
  auto [job_st, job] = alice.post("/v1/fine_tuning/jobs", job_req);
  ASSERT_EQ(job_st, 200) << job.dump();
  const std::string id = job["id"];
  EXPECT_EQ(job["object"], "fine_tuning.job");
  // Follow events until a few steps ran (and a checkpoint exists), then SIGKILL the server mid-job.
  int metric_events = 0;
  for (int i = 0; i < 3000 && metric_events < 7; ++i) {
    auto [st, evs] = alice.get("/v1/fine_tuning/jobs/" + id + "/events?limit=1000&order=asc");
    ASSERT_EQ(st, 200);
    metric_events = 0;
    for (const auto& e : evs["data"]) metric_events += e["type"] == "metrics";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(metric_events, 7);
  auto [mid_st, mid] = alice.get("/v1/fine_tuning/jobs/" + id);
  ASSERT_EQ(mid["status"], "running") << "the job finished before the kill: " << mid.dump();
  load.stop();
  const int served_before = load.ok;
  EXPECT_EQ(load.failed, 0) << load.last_failure;
  EXPECT_GT(served_before, 0);
  ::kill(server.pid(), SIGKILL);
  server.wait(10);
  // Restart: the job resumes from its last checkpoint and finishes while clients stream again.
  graft::testing::ServeProcess again;
  ASSERT_TRUE(again.start(args, dir, "second")) << again.log();
  Load load2;
  load2.start(again.port(), 8);
  Client alice2(again.port(), "alice"), bob2(again.port(), "bob");
  json fin;
  for (int i = 0; i < 6000; ++i) {
    fin = alice2.get("/v1/fine_tuning/jobs/" + id).second;
    if (fin["status"] == "succeeded" || fin["status"] == "failed") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(fin["status"], "succeeded") << fin.dump() << again.log();
  const std::string ft = fin["fine_tuned_model"];
  EXPECT_EQ(ft, "ft:tiny:acme:" + id);
  bool resumed = false;
  const json events = alice2.get("/v1/fine_tuning/jobs/" + id + "/events?limit=1000").second;
  for (const auto& e : events["data"])
    resumed |= e["message"].get<std::string>().find("Resuming") != std::string::npos;
  EXPECT_TRUE(resumed) << events.dump(1);
  // The new adapter is listed for and answers its owner only.
  auto has_model = [&](Client& c) {
    const json models = c.get("/v1/models").second;
    for (const auto& m : models["data"])
      if (m["id"] == ft) return true;
    return false;
  };
  EXPECT_TRUE(has_model(alice2));
  EXPECT_FALSE(has_model(bob2));
  auto [ans_st, ans] = alice2.post("/v1/completions", {{"model", ft}, {"prompt", "good bad"}, {"max_tokens", 4}, {"temperature", 0}});
  EXPECT_EQ(ans_st, 200) << ans.dump();
  EXPECT_EQ(bob2.post("/v1/completions", {{"model", ft}, {"prompt", "good bad"}, {"max_tokens", 4}}).first, 404);
  // `graft jobs` against the running server: the owner sees the job, another key does not.
  const std::string url = " --url http://127.0.0.1:" + std::to_string(again.port());
  auto got = graft::testing::run_graft("jobs get " + id + url + " --api-key alice");
  EXPECT_EQ(got.rc, 0) << got.err;
  EXPECT_NE(got.out.find("\"succeeded\""), std::string::npos) << got.out;
  auto follow = graft::testing::run_graft("jobs follow " + id + url + " --api-key alice");
  EXPECT_EQ(follow.rc, 0) << follow.err;
  EXPECT_NE(follow.out.find("Resuming"), std::string::npos) << follow.out;
  auto listed = graft::testing::run_graft("jobs list" + url + " --api-key bob");
  EXPECT_EQ(listed.rc, 0) << listed.err;
  EXPECT_EQ(listed.out.find(id), std::string::npos) << listed.out;
  auto denied = graft::testing::run_graft("jobs cancel " + id + url + " --api-key bob");
  EXPECT_NE(denied.rc, 0);
  EXPECT_NE(denied.err.find("404"), std::string::npos) << denied.err;
  load2.stop();
  EXPECT_EQ(load2.failed, 0) << load2.last_failure;
  EXPECT_GT(load2.ok, 0);
  EXPECT_EQ(again.stop(SIGTERM), 0);
  // `graft train` on the job's recipe gives the same adapter bytes.
  const fs::path jd = dir / "ft" / "jobs" / id;
  auto t = graft::testing::run_graft("train " + (jd / "recipe.yaml").string() + " --set output_dir=" + (dir / "cli_out").string());
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_EQ(read_bytes(dir / "cli_out" / "adapter_model.safetensors"), read_bytes(jd / "out" / "adapter_model.safetensors"));
  fs::remove_all(dir);
}

// The fine-tuning API through the official OpenAI Python client (tools/.venv): files, jobs
// create/retrieve/list/list_events/cancel, typed errors, and a completion on the resulting ft: model.
TEST(FineTuneE2E, OpenAIPythonClient) {
  GRAFT_REQUIRE_REFERENCE("openai");
  const fs::path dir = fs::temp_directory_path() / ("graft_ft_py_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto r = graft::testing::run_graft("init-model --arch qwen3_moe --preset tiny --seed 5 --out " + (dir / "base").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  {
    std::ofstream k(dir / "keys.json");
    k << R"({"alice": [], "bob": []})";
    std::ofstream t(dir / "train.jsonl");
    t << dataset(24, 1);
    std::ofstream b(dir / "broken.jsonl");
    b << dataset(2, 0) << "{\"messages\": 3}\n";
  }
  graft::testing::ServeProcess server;
  ASSERT_TRUE(server.start({(dir / "base").string(), "--served-model-name", "tiny", "--api-keys-file",
                            (dir / "keys.json").string(), "--enable-fine-tuning", "--ft-dir", (dir / "ft").string()},
                           dir, "py"))
      << server.log();
  const std::string script = (fs::path(GRAFT_SOURCE_DIR) / "tests/finetune/e2e/openai_finetune_client.py").string();
  auto [rc, out] = graft::testing::ref_run("timeout 280 " + graft::testing::ref_python() + " " + script +
                                           " http://127.0.0.1:" + std::to_string(server.port()) + "/v1 alice bob tiny " +
                                           (dir / "train.jsonl").string() + " " + (dir / "broken.jsonl").string() + " 2>&1");
  std::cout << out;
  EXPECT_EQ(rc, 0) << out << server.log();
  EXPECT_NE(out.find("ALL OK"), std::string::npos) << out;
  EXPECT_EQ(server.stop(SIGTERM), 0);
  fs::remove_all(dir);
}
