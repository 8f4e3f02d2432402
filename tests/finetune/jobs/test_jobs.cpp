// Fine-tuning jobs in-process: uploads are validated by the trainer's parser (line-numbered errors,
// nothing stored on failure), files and jobs are private to their owner, a job's adapter is byte-for-
// byte the adapter `graft train` makes from the job's recipe.yaml, a job stopped mid-run (server
// shutdown) resumes from its checkpoint on the next start and still gives that adapter, cancel works,
// and bad requests fail with the field named while everything else keeps running.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "../../adapters/adapter_test_util.hpp"
#include "../finetune_test_util.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/finetune/file_store.hpp"
#include "graft/finetune/job_manager.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/tokenizer/tokenizer.hpp"
#include "graft/train/data.hpp"
#include "graft/train/recipe.hpp"
#include "graft/train/trainer.hpp"

using namespace graft;
using namespace graft::testutil;
using finetune::FileStore;
using finetune::JobManager;

namespace {
using finetunetest::dataset;
using finetunetest::read_bytes;

class Jobs : public TmpDir {
 protected:
  void SetUp() override {
    TmpDir::SetUp();
    base_ = dir_ / "base";
    write_tiny_model(base_);
    model_ = std::make_unique<model::Model>(model::Model::load(base_.string()));
    tok_ = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::from_file(base_.string()));
    tpl_ = std::make_unique<chat_template::ChatTemplate>(chat_template::ChatTemplate::from_tokenizer_config(base_.string()));
    files_ = make_store();
  }
  std::unique_ptr<FileStore> make_store() {
    return std::make_unique<FileStore>((dir_ / "state").string(), [this](const std::string& path, const std::string& type) {
      train::DatasetSpec spec;
      spec.path = path;
      spec.type = type;
      train::DataStats st;
      train::load_dataset(spec, *tok_, tpl_.get(), train::DataOptions{}, &st);
      return st.records;
    });
  }
  std::unique_ptr<JobManager> make_jobs(std::function<serve::EngineStats()> stats = {}) {
    finetune::JobManagerOptions o;
    o.dir = (dir_ / "state").string();
    o.base_dir = base_.string();
    o.base_name = "tiny";
    o.default_save_steps = 2;
    finetune::JobHooks h;
    h.base = model_.get();
    h.serving_stats = std::move(stats);
    h.publish = [this](const std::string& name, const std::string& d, const std::string& owner) {
      std::lock_guard<std::mutex> g(mu_);
      published_.push_back({name, d, owner});
    };
    auto jm = std::make_unique<JobManager>(o, *files_, h);
    jm->start();
    return jm;
  }
  finetune::Job wait_done(JobManager& jm, const std::string& owner, const std::string& id, double seconds = 120) {
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      auto j = jm.get(owner, id);
      if (j.status == "succeeded" || j.status == "failed" || j.status == "cancelled") return j;
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  finetune::JobRequest request(const std::string& file, int64_t steps) {
    finetune::JobRequest r;
    r.model = "tiny";
    r.training_file = file;
    r.suffix = "acme";
    r.extra = {{"max_steps", steps}, {"sequence_len", 64}, {"learning_rate", 1e-3}};
    r.batch_size = 2;
    return r;
  }
  fs::path base_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  std::unique_ptr<chat_template::ChatTemplate> tpl_;
  std::unique_ptr<FileStore> files_;
  std::mutex mu_;
  struct Pub { std::string name, dir, owner; };
  std::vector<Pub> published_;
};
}  // namespace

TEST_F(Jobs, UploadsAreValidatedPrivateAndPersistent) {
  auto f = files_->add("alice", "train.jsonl", "fine-tune", dataset(12, 0));
  EXPECT_EQ(f.records, 12);
  EXPECT_EQ(f.format, "chat_template");
  EXPECT_EQ(files_->list("alice").size(), 1u);
  EXPECT_TRUE(files_->list("bob").empty());
  EXPECT_THROW(files_->get("bob", f.id), serve::ApiError);
  // Line 3 is broken: the error names it and the upload's filename, nothing is stored.
  std::string bad = dataset(2, 0) + "{\"messages\": [{\"role\": \"user\"\n" + dataset(2, 1);
  try {
    files_->add("alice", "broken.jsonl", "fine-tune", bad);
    FAIL() << "accepted a broken file";
  } catch (const serve::ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("broken.jsonl"), std::string::npos) << e.what();
  }
  for (const std::string& b : {std::string(""), std::string("[1,2]\n"), std::string("{\"foo\": 1}\n"),
                               std::string("{\"messages\": []}\n")})
    EXPECT_THROW(files_->add("alice", "x.jsonl", "fine-tune", b), serve::ApiError) << b;
  EXPECT_THROW(files_->add("alice", "x.jsonl", "assistants", dataset(3, 0)), serve::ApiError);
  EXPECT_EQ(files_->list("alice").size(), 1u);
  auto again = make_store();
  ASSERT_EQ(again->list("alice").size(), 1u);
  EXPECT_EQ(again->get("alice", f.id).records, 12);
}

TEST_F(Jobs, BadRequestsNameTheField) {
  auto jm = make_jobs();
  auto f = files_->add("alice", "t.jsonl", "fine-tune", dataset(8, 0));
  auto status = [&](const std::function<void()>& fn) {
    try {
      fn();
      return 200;
    } catch (const serve::ApiError& e) {
      return e.status;
    }
  };
  auto r = request(f.id, 2);
  r.model = "gpt-4o";
  EXPECT_EQ(status([&] { jm->create("alice", r); }), 404);
  r = request("file-nope", 2);
  EXPECT_EQ(status([&] { jm->create("alice", r); }), 404);
  r = request(f.id, 2);
  EXPECT_EQ(status([&] { jm->create("bob", r); }), 404) << "another key's file";
  r.extra["lora_rr"] = 4;
  try {
    jm->create("alice", r);
    FAIL();
  } catch (const serve::ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("lora_r"), std::string::npos) << e.what();
  }
  r = request(f.id, 2);
  r.extra["output_dir"] = "/tmp/x";
  EXPECT_EQ(status([&] { jm->create("alice", r); }), 400);
  EXPECT_THROW(finetune::parse_job_request(nlohmann::json::parse(R"({"model": "tiny"})")), serve::ApiError);
  EXPECT_THROW(finetune::parse_job_request(nlohmann::json::parse(R"({"model": "tiny", "training_file": 3})")), serve::ApiError);
  EXPECT_THROW(finetune::parse_job_request(nlohmann::json::parse(
                   R"({"model": "tiny", "training_file": "f", "hyperparameters": {"n_epochs": 0}})")),
               serve::ApiError);
  EXPECT_THROW(finetune::parse_job_request(nlohmann::json::parse(
                   R"({"model": "tiny", "training_file": "f", "hyperparameters": {"momentum": 1}})")),
               serve::ApiError);
  EXPECT_THROW(finetune::parse_job_request(nlohmann::json::parse(R"({"model": "tiny", "training_file": "f", "suffix": "a/b"})")),
               serve::ApiError);
  auto ok = finetune::parse_job_request(nlohmann::json::parse(
      R"({"model": "tiny", "training_file": "f", "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}, "extra": {"lora_r": 4}})"));
  EXPECT_EQ(*ok.n_epochs, 2);
  EXPECT_FALSE(ok.batch_size.has_value());
  EXPECT_DOUBLE_EQ(*ok.learning_rate_multiplier, 0.5);
  EXPECT_EQ(ok.extra["lora_r"], 4);
}

TEST_F(Jobs, JobAdapterEqualsGraftTrainAndResumesAfterRestart) {
  auto f = files_->add("alice", "t.jsonl", "fine-tune", dataset(24, 0));
  auto v = files_->add("alice", "v.jsonl", "fine-tune", dataset(6, 3));
  // Serving looks busy half the time: the throttle must still let the job finish.
  std::atomic<int> calls{0};
  auto busy = [&] {
    serve::EngineStats s;
    s.running = (calls++ / 50) % 2;
    return s;
  };
  std::string id1, id2;
  {
    auto jm = make_jobs(busy);
    auto req = request(f.id, 8);
    req.validation_file = v.id;
    id1 = jm->create("alice", req).id;
    auto j = wait_done(*jm, "alice", id1);
    ASSERT_EQ(j.status, "succeeded") << j.error_message;
    EXPECT_EQ(j.fine_tuned_model, "ft:tiny:acme:" + id1);
    EXPECT_GT(j.trained_tokens, 0);
    auto evs = jm->events("alice", id1, "", 1000);
    int metrics = 0;
    for (auto& e : evs) metrics += e.type == "metrics";
    EXPECT_EQ(metrics, 8);
    EXPECT_THROW(jm->events("bob", id1, "", 10), serve::ApiError);
    // A second job, stopped after 3 steps by a server shutdown (the manager is destroyed).
    id2 = jm->create("alice", request(f.id, 8)).id;
    for (int i = 0; i < 6000; ++i) {
      if (jm->events("alice", id2, "", 1000).size() >= 5) break;  // created, started, 3 metrics
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0].owner, "alice");
  {
    auto jm = make_jobs();
    auto j = jm->get("alice", id2);
    EXPECT_EQ(j.resumes, 1);
    j = wait_done(*jm, "alice", id2);
    ASSERT_EQ(j.status, "succeeded") << j.error_message;
    bool resumed = false;
    for (auto& e : jm->events("alice", id2, "", 1000)) resumed |= e.message.find("Resuming") != std::string::npos;
    EXPECT_TRUE(resumed);
    // Both succeeded adapters are published again after the restart (id1) or now (id2).
    EXPECT_EQ(published_.size(), 3u);
  }
  // `graft train` on each job's recipe.yaml (output elsewhere) gives the same bytes.
  for (const auto& id : {id1, id2}) {
    const fs::path jd = dir_ / "state" / "jobs" / id;
    auto recipe = train::load_recipe((jd / "recipe.yaml").string(), {"output_dir=" + (dir_ / ("cli_" + id)).string()});
    train::TrainOptions o;
    o.progress = false;
    auto sum = train::run_training(recipe, o);
    EXPECT_EQ(read_bytes(fs::path(sum.adapter_dir) / "adapter_model.safetensors"),
              read_bytes(jd / "out" / "adapter_model.safetensors"))
        << id;
    EXPECT_EQ(read_bytes(fs::path(sum.adapter_dir) / "adapter_config.json"), read_bytes(jd / "out" / "adapter_config.json"));
  }
}

TEST_F(Jobs, CancelQueuedAndRunningJobs) {
  auto f = files_->add("alice", "t.jsonl", "fine-tune", dataset(16, 0));
  auto jm = make_jobs();
  auto a = jm->create("alice", request(f.id, 400));
  auto b = jm->create("alice", request(f.id, 400));  // queued behind a
  EXPECT_EQ(jm->cancel("alice", b.id).status, "cancelled");
  for (int i = 0; i < 4000 && jm->get("alice", a.id).status != "running"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(jm->cancel("alice", a.id).status, "cancelled");
  EXPECT_THROW(jm->cancel("bob", a.id), serve::ApiError);
  EXPECT_EQ(jm->list("alice").size(), 2u);
  EXPECT_TRUE(jm->list("bob").empty());
  EXPECT_TRUE(published_.empty());
}
