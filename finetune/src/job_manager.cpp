// Fine-tuning jobs inside the server (see job_manager.hpp).
#include "graft/finetune/job_manager.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/train/recipe.hpp"
#include "graft/train/trainer.hpp"

namespace graft::finetune {
namespace fs = std::filesystem;
using serve::ApiError;
using serve::bad_request;
using Clock = std::chrono::steady_clock;

namespace {
int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
std::string random_hex(int n) {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> g(mu);
  std::string s;
  for (int i = 0; i < n; ++i) s += "0123456789abcdef"[rng() % 16];
  return s;
}
bool suffix_ok(const std::string& s) {
  if (s.size() > 40) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'; });
}
std::string name_part(const std::string& s) {
  std::string o;
  for (char c : s) o += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '-';
  return o.substr(0, 40);
}

nlohmann::json request_json(const JobRequest& r) {
  nlohmann::json j = {{"model", r.model}, {"training_file", r.training_file}, {"suffix", r.suffix}, {"extra", r.extra}};
  if (!r.validation_file.empty()) j["validation_file"] = r.validation_file;
  if (r.n_epochs) j["n_epochs"] = *r.n_epochs;
  if (r.batch_size) j["batch_size"] = *r.batch_size;
  if (r.learning_rate_multiplier) j["learning_rate_multiplier"] = *r.learning_rate_multiplier;
  if (r.seed) j["seed"] = *r.seed;
  return j;
}
JobRequest request_from(const nlohmann::json& j) {
  JobRequest r;
  r.model = j.at("model").get<std::string>();
  r.training_file = j.at("training_file").get<std::string>();
  r.suffix = j.value("suffix", "");
  r.validation_file = j.value("validation_file", "");
  r.extra = nlohmann::ordered_json::parse(j.at("extra").dump());
  if (j.contains("n_epochs")) r.n_epochs = j["n_epochs"].get<int64_t>();
  if (j.contains("batch_size")) r.batch_size = j["batch_size"].get<int64_t>();
  if (j.contains("learning_rate_multiplier")) r.learning_rate_multiplier = j["learning_rate_multiplier"].get<double>();
  if (j.contains("seed")) r.seed = j["seed"].get<int64_t>();
  return r;
}
nlohmann::json job_json(const Job& j) {
  return {{"id", j.id}, {"owner", j.owner}, {"status", j.status}, {"request", request_json(j.request)},
          {"created_at", j.created_at}, {"finished_at", j.finished_at}, {"trained_tokens", j.trained_tokens},
          {"fine_tuned_model", j.fine_tuned_model}, {"error_code", j.error_code}, {"error_message", j.error_message},
          {"resumes", j.resumes}, {"progress_mark", j.progress_mark}, {"stopped_cleanly", j.stopped_cleanly},
          {"stalled_restarts", j.stalled_restarts}, {"warnings", j.warnings}};
}
Job job_from(const nlohmann::json& x) {
  Job j;
  j.id = x.at("id").get<std::string>();
  j.owner = x.at("owner").get<std::string>();
  j.status = x.at("status").get<std::string>();
  j.request = request_from(x.at("request"));
  j.created_at = x.at("created_at").get<int64_t>();
  j.finished_at = x.at("finished_at").get<int64_t>();
  j.trained_tokens = x.at("trained_tokens").get<int64_t>();
  j.fine_tuned_model = x.at("fine_tuned_model").get<std::string>();
  j.error_code = x.at("error_code").get<std::string>();
  j.error_message = x.at("error_message").get<std::string>();
  j.resumes = x.value("resumes", int64_t{0});
  j.progress_mark = x.value("progress_mark", std::string());
  j.stopped_cleanly = x.value("stopped_cleanly", false);
  j.stalled_restarts = x.value("stalled_restarts", int64_t{0});
  j.warnings = x.value("warnings", std::vector<std::string>{});
  return j;
}
}  // namespace

JobRequest parse_job_request(const nlohmann::json& b) {
  if (!b.is_object()) throw bad_request("the body must be a JSON object", "", "invalid_body");
  JobRequest r;
  auto str = [&](const char* k, bool required) -> std::string {
    if (!b.contains(k) || b[k].is_null()) {
      if (required) throw bad_request(std::string("missing required field '") + k + "'", k, "missing_field");
      return "";
    }
    if (!b[k].is_string()) throw bad_request(std::string("'") + k + "' must be a string", k, "invalid_type");
    return b[k].get<std::string>();
  };
  r.model = str("model", true);
  r.training_file = str("training_file", true);
  r.validation_file = str("validation_file", false);
  r.suffix = str("suffix", false);
  if (!suffix_ok(r.suffix)) throw bad_request("suffix must be at most 40 characters of [A-Za-z0-9_-]", "suffix", "invalid_value");
  if (b.contains("seed") && !b["seed"].is_null()) {
    if (!b["seed"].is_number_integer()) throw bad_request("'seed' must be an integer", "seed", "invalid_type");
    r.seed = b["seed"].get<int64_t>();
  }
  if (b.contains("hyperparameters") && !b["hyperparameters"].is_null()) {
    const auto& h = b["hyperparameters"];
    if (!h.is_object()) throw bad_request("'hyperparameters' must be an object", "hyperparameters", "invalid_type");
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string k = it.key();
      const auto& v = it.value();
      if (v.is_string() && v.get<std::string>() == "auto") continue;
      const std::string param = "hyperparameters." + k;
      if (k == "n_epochs" || k == "batch_size") {
        if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (k == "n_epochs" ? 50 : 256))
          throw bad_request("'" + param + "' must be \"auto\" or an integer in [1, " + (k == "n_epochs" ? "50" : "256") + "]",
                            param, "invalid_value");
        (k == "n_epochs" ? r.n_epochs : r.batch_size) = v.get<int64_t>();
      } else if (k == "learning_rate_multiplier") {
        if (!v.is_number() || !(v.get<double>() > 0) || v.get<double>() > 100)
          throw bad_request("'" + param + "' must be \"auto\" or a number in (0, 100]", param, "invalid_value");
        r.learning_rate_multiplier = v.get<double>();
      } else {
        throw bad_request("unknown hyperparameter '" + k + "' (n_epochs, batch_size, learning_rate_multiplier; put graft "
                          "recipe keys under \"extra\")", param, "invalid_value");
      }
    }
  }
  if (b.contains("extra") && !b["extra"].is_null()) {
    if (!b["extra"].is_object()) throw bad_request("'extra' must be an object of recipe keys", "extra", "invalid_type");
    r.extra = nlohmann::ordered_json::parse(b["extra"].dump());
  }
  return r;
}

nlohmann::json JobEvent::to_openai() const {
  nlohmann::json j = {{"object", "fine_tuning.job.event"}, {"id", id}, {"created_at", created_at}, {"level", level},
                      {"message", message}, {"type", type}};
  j["data"] = data.is_null() ? nlohmann::json::object() : data;
  return j;
}

nlohmann::json Job::to_openai(const std::string& base_name) const {
  nlohmann::json j = {{"object", "fine_tuning.job"}, {"id", id}, {"model", base_name}, {"created_at", created_at},
                      {"status", status}, {"training_file", request.training_file},
                      {"organization_id", "graft"}, {"result_files", nlohmann::json::array()},
                      {"trained_tokens", status == "succeeded" ? nlohmann::json(trained_tokens) : nlohmann::json()},
                      {"seed", request.seed ? *request.seed : 1}};
  j["validation_file"] = request.validation_file.empty() ? nlohmann::json() : nlohmann::json(request.validation_file);
  j["fine_tuned_model"] = fine_tuned_model.empty() ? nlohmann::json() : nlohmann::json(fine_tuned_model);
  j["finished_at"] = finished_at ? nlohmann::json(finished_at) : nlohmann::json();
  j["error"] = error_code.empty() ? nlohmann::json() : nlohmann::json({{"code", error_code}, {"message", error_message}, {"param", nullptr}});
  j["hyperparameters"] = {{"n_epochs", request.n_epochs ? nlohmann::json(*request.n_epochs) : nlohmann::json("auto")},
                          {"batch_size", request.batch_size ? nlohmann::json(*request.batch_size) : nlohmann::json("auto")},
                          {"learning_rate_multiplier", request.learning_rate_multiplier
                                                           ? nlohmann::json(*request.learning_rate_multiplier)
                                                           : nlohmann::json("auto")}};
  if (!request.suffix.empty()) j["suffix"] = request.suffix;
  if (!warnings.empty()) j["warnings"] = warnings;  // graft extension: recipe warnings (also job events)
  return j;
}

// Training's turn next to serving: while the engine has work, training may take at most `share` of
// wall time over a sliding window; when serving is idle it runs unthrottled.
class Throttle {
 public:
  Throttle(double share, double window, std::function<serve::EngineStats()> stats, std::function<bool()> stop)
      : share_(share), window_(window), stats_(std::move(stats)), stop_(std::move(stop)) {}
  void before_step() {
    const auto now = Clock::now();
    if (has_start_) spans_.emplace_back(start_, now);
    for (;;) {
      const auto t = Clock::now();
      while (!spans_.empty() && std::chrono::duration<double>(t - spans_.front().second).count() > window_) spans_.pop_front();
      if (stop_()) break;
      const serve::EngineStats st = stats_ ? stats_() : serve::EngineStats{};
      if (st.running + st.waiting == 0) break;
      double busy = 0;
      for (const auto& [a, b] : spans_) {
        const auto lo = std::max(a, t - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(window_)));
        if (b > lo) busy += std::chrono::duration<double>(b - lo).count();
      }
      if (busy < share_ * window_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      waited_s_ += 0.005;
    }
    start_ = Clock::now();
    has_start_ = true;
  }
  double waited_s() const { return waited_s_; }

 private:
  double share_, window_;
  std::function<serve::EngineStats()> stats_;
  std::function<bool()> stop_;
  std::deque<std::pair<Clock::time_point, Clock::time_point>> spans_;
  Clock::time_point start_;
  bool has_start_ = false;
  double waited_s_ = 0;
};

struct JobManager::Impl {
  Impl(JobManagerOptions o, FileStore& f, JobHooks h) : opts(std::move(o)), files(f), hooks(std::move(h)) {}
  JobManagerOptions opts;
  FileStore& files;
  JobHooks hooks;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Job> jobs;
  std::vector<std::string> order;  // creation order
  std::map<std::string, std::vector<JobEvent>> events;
  std::atomic<bool> stopping{false};
  std::string cancel_id;           // the running job to cancel
  std::thread worker;
  int64_t event_seq = 0;

  fs::path job_dir(const std::string& id) const { return fs::path(opts.dir) / "jobs" / id; }
  // The newest checkpoint file of a job ("" when none): progress between two starts.
  std::string newest_checkpoint(const std::string& id) const {
    std::string best;
    std::error_code ec;
    for (fs::directory_iterator it(job_dir(id) / "out" / "checkpoints", ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".h5" && it->path().filename().string()[0] != '.')
        best = std::max(best, it->path().filename().string());
    return best;
  }
  bool is_cancelled(const std::string& id) const {
    std::lock_guard<std::mutex> g(mu);
    return jobs.at(id).status == "cancelled";
  }
  void fail(const std::string& id, const std::string& code, const std::string& msg) {
    set_status(id, [&](Job& x) {
      x.status = "failed";
      x.finished_at = now_s();
      x.error_code = code;
      x.error_message = msg;
    });
    add_event(id, "error", "Job failed: " + msg);
  }

  void persist(const Job& j) {
    fs::create_directories(job_dir(j.id));
    const std::string s = job_json(j).dump(2);
    write_file_atomic((job_dir(j.id) / "job.json").string(), s.data(), s.size());
  }
  void add_event(const std::string& id, const std::string& level, const std::string& msg, nlohmann::json data = {}) {
    JobEvent e;
    {
      std::lock_guard<std::mutex> g(mu);
      e.id = "ftevent-" + id.substr(6) + "-" + std::to_string(++event_seq);
    }
    e.created_at = now_s();
    e.level = level;
    e.message = msg;
    e.type = data.is_null() ? "message" : "metrics";
    e.data = std::move(data);
    std::ofstream f(job_dir(id) / "events.jsonl", std::ios::app);
    f << nlohmann::json({{"id", e.id}, {"created_at", e.created_at}, {"level", e.level}, {"message", e.message},
                         {"type", e.type}, {"data", e.data}}).dump()
      << "\n";
    std::lock_guard<std::mutex> g(mu);
    events[id].push_back(std::move(e));
  }
  void set_status(const std::string& id, const std::function<void(Job&)>& f) {
    Job copy;
    {
      std::lock_guard<std::mutex> g(mu);
      f(jobs.at(id));
      copy = jobs.at(id);
    }
    persist(copy);
    cv.notify_all();
  }

  void run_job(const std::string& id) {
    Job j;
    {
      std::lock_guard<std::mutex> g(mu);
      j = jobs.at(id);
    }
    const fs::path dir = job_dir(id);
    const std::string mark = newest_checkpoint(id);
    const bool resume = !mark.empty();
    {
      std::lock_guard<std::mutex> g(mu);
      if (jobs.at(id).status != "queued") return;  // cancelled since the worker picked it
    }
    set_status(id, [&](Job& x) {
      x.status = "running";
      x.progress_mark = mark;
      x.stopped_cleanly = false;
    });
    add_event(id, "info", resume ? "Resuming fine-tuning job from its last checkpoint" : "Fine-tuning job started");
    bool cancelled = false;
    auto should_stop = [&] {
      std::lock_guard<std::mutex> g(mu);
      cancelled = cancel_id == id;
      return stopping.load() || cancelled;
    };
    Throttle throttle(opts.compute_share, opts.share_window_s, hooks.serving_stats, should_stop);
    try {
      auto recipe = train::load_recipe((dir / "recipe.yaml").string());
      // Again before every (re)start: the budget may have changed, or the job predates the limits.
      if (hooks.base) check_job_recipe(recipe.proto, *hooks.base, opts.limits);
      train::TrainOptions o;
      o.resume = resume;
      o.progress = false;
      o.base = hooks.base;
      o.before_step = [&] { throttle.before_step(); };
      o.should_stop = should_stop;
      o.on_step = [&](const train::StepLog& s) {
        nlohmann::json d = {{"step", s.step}, {"total_steps", s.total}, {"train_loss", s.loss}, {"learning_rate", s.lr},
                            {"tokens_per_s", s.tokens_per_s}, {"elapsed_s", s.elapsed_s},
                            {"tokens", s.tokens_per_s * s.elapsed_s}, {"throttled_s", throttle.waited_s()}};
        std::string msg = "Step " + std::to_string(s.step) + "/" + std::to_string(s.total) + ": training loss=" + fmt::format("{:.4f}", s.loss);
        if (s.eval_loss >= 0) {
          d["eval_loss"] = s.eval_loss;
          msg += fmt::format(", validation loss={:.4f}", s.eval_loss);
        }
        add_event(id, "info", msg, d);
      };
      const train::TrainSummary sum = train::run_training(recipe, o);
      if (sum.stopped) {
        // Cancelled: cancel() already recorded it. Server stopping: status stays "running" on disk
        // (resumed at the next start), marked as a clean stop for the crash-loop guard.
        if (!cancelled && !is_cancelled(id)) set_status(id, [](Job& x) { x.stopped_cleanly = true; });
        return;
      }
      if (is_cancelled(id)) return;  // cancelled after its last step: nothing is published
      std::string base = name_part(opts.base_name);
      const std::string name = "ft:" + base + ":" + j.request.suffix + ":" + id;
      hooks.publish(name, sum.adapter_dir, j.owner);
      set_status(id, [&](Job& x) {
        x.status = "succeeded";
        x.finished_at = now_s();
        x.fine_tuned_model = name;
        x.trained_tokens = sum.trained_tokens;
      });
      add_event(id, "info", "New fine-tuned model created: " + name);
      add_event(id, "info", "The job has successfully completed");
    } catch (const std::exception& e) {
      if (is_cancelled(id)) return;
      const auto* ge = dynamic_cast<const Error*>(&e);
      const auto* ae = dynamic_cast<const ApiError*>(&e);
      const std::string msg = ge ? ge->message() + (ge->fix().empty() ? "" : " (" + ge->fix() + ")") : e.what();
      fail(id, ae && !ae->code.empty() ? ae->code : "training_failed", msg);
    }
  }

  void loop() {
    for (;;) {
      std::string next;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] {
          if (stopping) return true;
          for (const auto& id : order)
            if (jobs.at(id).status == "queued") return true;
          return false;
        });
        if (stopping) return;
        for (const auto& id : order)
          if (jobs.at(id).status == "queued") {
            next = id;
            break;
          }
        cancel_id.clear();
      }
      run_job(next);
    }
  }
};

JobManager::JobManager(JobManagerOptions opts, FileStore& files, JobHooks hooks)
    : impl_(std::make_unique<Impl>(std::move(opts), files, std::move(hooks))) {
  GRAFT_CHECK_FIX(impl_->opts.compute_share > 0 && impl_->opts.compute_share <= 1, "use --ft-compute-share in (0, 1]",
                  "compute share {} is invalid", impl_->opts.compute_share);
  fs::create_directories(fs::path(impl_->opts.dir) / "jobs");
}

JobManager::~JobManager() {
  impl_->stopping = true;
  impl_->cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
}

void JobManager::start() {
  auto& I = *impl_;
  std::vector<Job> loaded;
  for (const auto& e : fs::directory_iterator(fs::path(I.opts.dir) / "jobs")) {
    const fs::path jf = e.path() / "job.json";
    if (!fs::exists(jf)) continue;
    try {
      loaded.push_back(job_from(nlohmann::json::parse(read_text_file(jf.string()))));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "graft serve: skipping fine-tuning job state %s: %s\n", jf.c_str(), e.what());
      continue;  // damaged state: leave the folder for inspection
    }
  }
  std::sort(loaded.begin(), loaded.end(), [](const Job& a, const Job& b) {
    return a.created_at < b.created_at || (a.created_at == b.created_at && a.id < b.id);
  });
  for (Job& j : loaded) {
    bool failed_now = false;
    if (j.status == "running") {
      // Interrupted. A crash (not a clean stop) without a new checkpoint since the job started counts
      // toward the crash-loop guard.
      const bool progress = I.newest_checkpoint(j.id) != j.progress_mark;
      j.stalled_restarts = j.stopped_cleanly || progress ? 0 : j.stalled_restarts + 1;
      j.stopped_cleanly = false;
      if (j.stalled_restarts >= kMaxStalledRestarts) {
        j.status = "failed";
        j.finished_at = now_s();
        j.error_code = "interrupted_without_progress";
        j.error_message = fmt::format(
            "the server stopped {} times in a row while this job ran, before it wrote a new checkpoint (it may exhaust "
            "the server's memory); it is not resumed again",
            j.stalled_restarts);
        failed_now = true;
      } else {
        j.status = "queued";
        ++j.resumes;
      }
      I.persist(j);
    }
    std::vector<JobEvent> evs;
    std::ifstream f(I.job_dir(j.id) / "events.jsonl");
    for (std::string line; std::getline(f, line);) {
      auto x = nlohmann::json::parse(line, nullptr, false);
      if (!x.is_object()) continue;  // a torn last line after a crash
      JobEvent ev;
      ev.id = x.value("id", "");
      ev.created_at = x.value("created_at", int64_t{0});
      ev.level = x.value("level", "info");
      ev.message = x.value("message", "");
      ev.type = x.value("type", "message");
      ev.data = x.value("data", nlohmann::json());
      evs.push_back(ev);
    }
    {
      std::lock_guard<std::mutex> g(I.mu);
      I.event_seq += static_cast<int64_t>(evs.size());
      I.events[j.id] = std::move(evs);
      I.jobs[j.id] = j;
      I.order.push_back(j.id);
    }
    if (failed_now) I.add_event(j.id, "error", "Job failed: " + j.error_message);
    if (j.status == "succeeded" && I.hooks.publish) {
      try {
        I.hooks.publish(j.fine_tuned_model, (I.job_dir(j.id) / "out").string(), j.owner);
      } catch (const std::exception& e) {
        I.add_event(j.id, "warn", std::string("could not load the fine-tuned adapter after restart: ") + e.what());
      }
    }
  }
  I.worker = std::thread([this] { impl_->loop(); });
}

std::string JobManager::compose_recipe(const JobRequest& req, const std::string& job_dir) const {
  const auto& I = *impl_;
  check_job_keys(req.extra);
  nlohmann::ordered_json r;
  r["base_model"] = I.opts.base_dir;
  r["load_in_4bit"] = I.opts.load_in_4bit;
  r["adapter"] = I.opts.load_in_4bit ? "qlora" : "lora";
  r["lora_r"] = 8;
  r["lora_alpha"] = 16;
  r["lora_target_modules"] = {"q_proj", "k_proj", "v_proj", "o_proj"};
  r["num_epochs"] = req.n_epochs ? *req.n_epochs : 3;
  r["micro_batch_size"] = req.batch_size ? *req.batch_size : 4;
  r["learning_rate"] = 2e-4 * (req.learning_rate_multiplier ? *req.learning_rate_multiplier : 1.0);
  r["save_steps"] = I.opts.default_save_steps;
  r["seed"] = req.seed ? *req.seed : 1;
  for (auto it = req.extra.begin(); it != req.extra.end(); ++it) r[it.key()] = it.value();
  r["output_dir"] = (fs::path(job_dir) / "out").string();
  // Datasets are filled by create() (they need the owner's files).
  return r.dump(2);
}

Job JobManager::create(const std::string& owner, JobRequest req) {
  auto& I = *impl_;
  if (req.model != I.opts.base_name)
    throw ApiError(404, "invalid_request_error",
                   "model '" + req.model + "' is not the base this server fine-tunes ('" + I.opts.base_name + "')", "model",
                   "model_not_found");
  const FileInfo tf = I.files.get(owner, req.training_file);
  std::optional<FileInfo> vf;
  if (!req.validation_file.empty()) vf = I.files.get(owner, req.validation_file);
  Job j;
  j.id = "ftjob-" + random_hex(24);
  j.owner = owner;
  j.status = "queued";
  j.created_at = now_s();
  j.request = req;
  const fs::path dir = I.job_dir(j.id);
  auto r = nlohmann::ordered_json::parse(compose_recipe(req, dir.string()));
  r["datasets"] = nlohmann::ordered_json::array({{{"path", I.files.content_path(tf)}, {"type", tf.format}}});
  if (vf) r["test_datasets"] = nlohmann::ordered_json::array({{{"path", I.files.content_path(*vf)}, {"type", vf->format}}});
  train::LoadedRecipe loaded;
  try {
    // JSON is YAML: the trainer's loader validates every key (unknown keys name the nearest one).
    loaded = train::parse_recipe_text(r.dump(2), "fine-tuning job recipe");
  } catch (const Error& e) {
    throw bad_request("invalid recipe keys: " + e.message() + (e.fix().empty() ? "" : " (" + e.fix() + ")"), "extra",
                      "invalid_recipe");
  }
  check_job_keys_allowed(req.extra);
  if (I.hooks.base) check_job_recipe(loaded.proto, *I.hooks.base, I.opts.limits);
  j.warnings = loaded.warnings;
  const std::string& yaml = loaded.text;
  fs::create_directories(dir);
  write_file_atomic((dir / "recipe.yaml").string(), yaml.data(), yaml.size());
  I.persist(j);
  {
    std::lock_guard<std::mutex> g(I.mu);
    I.jobs[j.id] = j;
    I.order.push_back(j.id);
  }
  I.add_event(j.id, "info", "Created fine-tuning job: " + j.id);
  for (const auto& w : j.warnings) I.add_event(j.id, "warn", "recipe: " + w);
  I.cv.notify_all();
  return j;
}

std::vector<Job> JobManager::list(const std::string& owner) const {
  std::lock_guard<std::mutex> g(impl_->mu);
  std::vector<Job> out;
  for (auto it = impl_->order.rbegin(); it != impl_->order.rend(); ++it)
    if (impl_->jobs.at(*it).owner == owner) out.push_back(impl_->jobs.at(*it));
  return out;
}

Job JobManager::get(const std::string& owner, const std::string& id) const {
  std::lock_guard<std::mutex> g(impl_->mu);
  auto it = impl_->jobs.find(id);
  if (it == impl_->jobs.end() || it->second.owner != owner)
    throw ApiError(404, "invalid_request_error", "no fine-tuning job with id '" + id + "'", "fine_tuning_job_id",
                   "job_not_found");
  return it->second;
}

std::vector<JobEvent> JobManager::events(const std::string& owner, const std::string& id, const std::string& after,
                                         int64_t limit) const {
  get(owner, id);
  std::lock_guard<std::mutex> g(impl_->mu);
  const auto& evs = impl_->events[id];
  size_t start = 0;
  if (!after.empty())
    for (size_t i = 0; i < evs.size(); ++i)
      if (evs[i].id == after) start = i + 1;
  std::vector<JobEvent> out;
  for (size_t i = start; i < evs.size() && static_cast<int64_t>(out.size()) < limit; ++i) out.push_back(evs[i]);
  return out;
}

Job JobManager::cancel(const std::string& owner, const std::string& id) {
  Job j = get(owner, id);
  if (j.status == "succeeded" || j.status == "failed" || j.status == "cancelled") return j;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    Job& x = impl_->jobs.at(id);
    if (x.status == "succeeded" || x.status == "failed" || x.status == "cancelled") return x;
    if (x.status == "running") impl_->cancel_id = id;  // the worker stops within one micro-batch
    x.status = "cancelled";
    x.finished_at = now_s();
    j = x;
  }
  impl_->persist(j);
  impl_->add_event(id, "info", "Job cancelled");
  impl_->cv.notify_all();
  return j;
}

}  // namespace graft::finetune
