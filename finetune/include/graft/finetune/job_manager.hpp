// JobManager: OpenAI-style fine-tuning jobs trained inside `graft serve` on the base it already holds.
//
// A job is a recipe: the server composes one YAML recipe from the request (model = the served base,
// training_file/validation_file = uploaded files, hyperparameters n_epochs/batch_size/
// learning_rate_multiplier, and graft's own recipe keys under `extra`), validates it with the
// trainer's recipe loader (unknown keys and bad values are 400 errors naming the key), and writes it
// to DIR/jobs/JOB_ID/recipe.yaml — `graft train` on that file produces the same adapter, bit for bit.
//
// Jobs run one at a time on a worker thread through train::run_training with the server's model
// (TrainOptions::base: one copy of the weights). Before every optimizer step the job asks the
// Throttle for its turn: while the engine has requests, training may use at most `compute_share` of
// wall time (measured over a sliding window); when serving is idle it runs freely. Checkpoints are
// written every `save_steps`; a job interrupted by a crash or restart is resumed from its newest
// checkpoint when the server starts again. A finished job's adapter is loaded into the adapter
// manager as `ft:BASE:SUFFIX:JOB_ID` and granted to the job's owner.
//
// State on disk: DIR/jobs/JOB_ID/{job.json, recipe.yaml, events.jsonl, out/...}, job.json rewritten
// atomically at every status change.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "graft/finetune/file_store.hpp"
#include "graft/finetune/job_limits.hpp"
#include "graft/model/model.hpp"
#include "graft/serve/engine.hpp"

namespace graft::finetune {

struct JobRequest {
  std::string model;                       // must name the served base
  std::string training_file, validation_file;
  std::optional<int64_t> n_epochs, batch_size;
  std::optional<double> learning_rate_multiplier;
  std::optional<int64_t> seed;
  std::string suffix;                      // <= 40 chars of [A-Za-z0-9_-]
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // recipe keys
};
// Parses a POST /v1/fine_tuning/jobs body (ApiError 400 naming the field).
JobRequest parse_job_request(const nlohmann::json& body);

struct JobEvent {
  std::string id, level, message, type;  // type: "message" | "metrics"
  int64_t created_at = 0;
  nlohmann::json data;                   // metrics: step, total_steps, train_loss, learning_rate, tokens_per_s, eval_loss
  nlohmann::json to_openai() const;
};

struct Job {
  std::string id, owner, status;  // validating_files | queued | running | succeeded | failed | cancelled
  JobRequest request;
  int64_t created_at = 0, finished_at = 0, trained_tokens = 0;
  std::string fine_tuned_model;   // adapter name once succeeded
  std::string error_code, error_message;
  int64_t resumes = 0;            // times resumed after a restart
  // Crash-loop guard: the newest checkpoint when the job last started, whether it was stopped by a
  // clean shutdown, and how many restarts in a row found it interrupted without a new checkpoint
  // (kMaxStalledRestarts of them fail the job for good).
  std::string progress_mark;
  bool stopped_cleanly = false;
  int64_t stalled_restarts = 0;
  // The recipe loader's warnings (accepted keys graft ignores or honours differently, e.g. an 8-bit
  // optimizer name): one "job.recipe:line:col: ..." line each; also one "warn" event each.
  std::vector<std::string> warnings;
  nlohmann::json to_openai(const std::string& base_name) const;
};

struct JobManagerOptions {
  std::string dir;                 // state root (files/ and jobs/)
  std::string base_dir;            // the served model directory (recipe base_model)
  std::string base_name;           // the served model's name (requests' `model`)
  bool load_in_4bit = false;       // how the server loaded the base
  double compute_share = 0.5;      // training's share of wall time while serving is busy (0, 1]
  double share_window_s = 2.0;
  int64_t default_save_steps = 10;
  JobLimits limits;                // sizes and memory budget of a job (job_limits.hpp)
};

// A job found interrupted (the server died while it ran) this many times in a row without having
// written a new checkpoint fails instead of being resumed again (e.g. it makes the server run out of
// memory): a failed job stays failed across restarts.
inline constexpr int64_t kMaxStalledRestarts = 2;

// The server side a job touches: the shared base, serving load, and adapter publication.
struct JobHooks {
  const model::Model* base = nullptr;
  std::function<serve::EngineStats()> serving_stats;
  // Loads the finished adapter under `name` and grants it to `owner` (throws on failure).
  std::function<void(const std::string& name, const std::string& dir, const std::string& owner)> publish;
};

class JobManager {
 public:
  JobManager(JobManagerOptions opts, FileStore& files, JobHooks hooks);
  ~JobManager();  // stops the running job at its next step (it resumes on the next start) and joins
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Loads jobs from disk, re-queues interrupted ones, re-publishes succeeded adapters, and starts
  // the worker.
  void start();
  Job create(const std::string& owner, JobRequest req);           // ApiError 400/404
  std::vector<Job> list(const std::string& owner) const;
  Job get(const std::string& owner, const std::string& id) const;  // ApiError 404
  // Events after `after` (an event id; "" = from the start), oldest first, at most `limit`.
  std::vector<JobEvent> events(const std::string& owner, const std::string& id, const std::string& after,
                               int64_t limit) const;
  // ApiError 404; no-op when finished. Answers at once: the job is "cancelled" from now on, and a
  // running one stops within one micro-batch on the worker.
  Job cancel(const std::string& owner, const std::string& id);
  // The recipe YAML a request turns into (exposed for tests and `graft jobs recipe`).
  std::string compose_recipe(const JobRequest& req, const std::string& job_dir) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace graft::finetune
