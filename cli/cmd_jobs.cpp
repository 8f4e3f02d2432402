// `graft jobs` — fine-tuning jobs on a running `graft serve --enable-fine-tuning` (OpenAI API):
//   graft jobs create --file train.jsonl --model BASE [--validation-file v.jsonl] [--suffix S]
//                     [--n-epochs N] [--batch-size B] [--lr-multiplier M] [--set KEY=VALUE]... [--follow]
//   graft jobs list | get ID | events ID | follow ID | cancel ID
// Common: --url http://127.0.0.1:8000 (or $GRAFT_URL), --api-key K (or $GRAFT_API_KEY / $OPENAI_API_KEY).
// Prints JSON for list/get/create/cancel, one line per event for events/follow. Exit code 1 when a
// followed job ends failed or cancelled.
#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "command.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace {
using nlohmann::json;

struct JobsArgs {
  std::string url, api_key, id, file, validation_file, model, suffix;
  int64_t n_epochs = 0, batch_size = 0;
  double lr_multiplier = 0;
  std::vector<std::string> sets;
  bool follow = false;
};

std::string env_or(const char* a, const char* b, const std::string& def) {
  if (const char* v = std::getenv(a); v && *v) return v;
  if (b)
    if (const char* v = std::getenv(b); v && *v) return v;
  return def;
}

class Api {
 public:
  explicit Api(const JobsArgs& a) : cli_(a.url.empty() ? env_or("GRAFT_URL", nullptr, "http://127.0.0.1:8000") : a.url) {
    key_ = a.api_key.empty() ? env_or("GRAFT_API_KEY", "OPENAI_API_KEY", "") : a.api_key;
    cli_.set_read_timeout(600, 0);
    cli_.set_connection_timeout(10, 0);
  }
  json get(const std::string& path) { return check(cli_.Get(path, headers()), "GET " + path); }
  json post(const std::string& path, const json& body) {
    return check(cli_.Post(path, headers(), body.dump(), "application/json"), "POST " + path);
  }
  json upload(const std::string& path) {
    const std::string content = graft::read_text_file(path);
    httplib::MultipartFormDataItems items = {{"purpose", "fine-tune", "", ""},
                                             {"file", content, std::filesystem::path(path).filename().string(),
                                              "application/jsonl"}};
    return check(cli_.Post("/v1/files", headers(), items), "upload " + path);
  }

 private:
  httplib::Headers headers() const {
    httplib::Headers h;
    if (!key_.empty()) h.emplace("Authorization", "Bearer " + key_);
    return h;
  }
  json check(const httplib::Result& r, const std::string& what) {
    GRAFT_CHECK_FIX(r, "start the server with `graft serve MODEL --enable-fine-tuning` or pass --url",
                    "{}: cannot reach the server ({})", what, httplib::to_string(r.error()));
    auto j = json::parse(r->body, nullptr, false);
    if (r->status >= 400) {
      std::string msg = j.is_object() && j.contains("error") ? j["error"].value("message", r->body) : r->body;
      GRAFT_FAIL("", "{}: HTTP {}: {}", what, r->status, msg);
    }
    GRAFT_CHECK(!j.is_discarded(), "{}: the server answered non-JSON: {}", what, r->body.substr(0, 200));
    return j;
  }
  httplib::Client cli_;
  std::string key_;
};

void print_event(const json& e) {
  std::printf("%s %s\n", e.value("level", "info").c_str(), e.value("message", "").c_str());
  std::fflush(stdout);
}

// Prints new events until the job ends; returns its final status.
std::string follow(Api& api, const std::string& id) {
  std::string last;
  for (;;) {
    auto evs = api.get("/v1/fine_tuning/jobs/" + id + "/events?limit=1000&order=asc" + (last.empty() ? "" : "&after=" + last));
    for (const auto& e : evs["data"]) {
      print_event(e);
      last = e.value("id", last);
    }
    const std::string st = api.get("/v1/fine_tuning/jobs/" + id).value("status", "");
    if (st == "succeeded" || st == "failed" || st == "cancelled") return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

graft::cli::Registration reg{"jobs", 62, [](CLI::App& app) {
  auto a = std::make_shared<JobsArgs>();
  auto* sub = app.add_subcommand("jobs", "Fine-tuning jobs on a running graft serve (create, list, follow, cancel)");
  sub->require_subcommand(1);
  auto common = [a](CLI::App* c) {
    c->add_option("--url", a->url, "Server URL (default $GRAFT_URL or http://127.0.0.1:8000)");
    c->add_option("--api-key", a->api_key, "API key (default $GRAFT_API_KEY or $OPENAI_API_KEY)");
  };
  auto* create = sub->add_subcommand("create", "Upload the data and start a fine-tuning job");
  common(create);
  create->add_option("--file", a->file, "Training data (JSONL)")->required()->check(CLI::ExistingFile);
  create->add_option("--validation-file", a->validation_file, "Validation data (JSONL)")->check(CLI::ExistingFile);
  create->add_option("--model", a->model, "The served base model's name")->required();
  create->add_option("--suffix", a->suffix, "Suffix of the fine-tuned model's name");
  create->add_option("--n-epochs", a->n_epochs, "Epochs")->check(CLI::Range(1, 50));
  create->add_option("--batch-size", a->batch_size, "Micro-batch size")->check(CLI::Range(1, 256));
  create->add_option("--lr-multiplier", a->lr_multiplier, "Learning-rate multiplier")->check(CLI::PositiveNumber);
  create->add_option("--set", a->sets, "A graft recipe key for the job: KEY=VALUE (JSON value or string)");
  create->add_flag("--follow", a->follow, "Print the job's events until it ends");
  create->callback([a] {
    Api api(*a);
    json body = {{"model", a->model}, {"training_file", api.upload(a->file)["id"]}};
    if (!a->validation_file.empty()) body["validation_file"] = api.upload(a->validation_file)["id"];
    if (!a->suffix.empty()) body["suffix"] = a->suffix;
    json hp = json::object();
    if (a->n_epochs) hp["n_epochs"] = a->n_epochs;
    if (a->batch_size) hp["batch_size"] = a->batch_size;
    if (a->lr_multiplier > 0) hp["learning_rate_multiplier"] = a->lr_multiplier;
    if (!hp.empty()) body["hyperparameters"] = hp;
    json extra = json::object();
    for (const auto& s : a->sets) {
      const size_t eq = s.find('=');
      GRAFT_CHECK_FIX(eq != std::string::npos && eq > 0, "write --set KEY=VALUE", "--set '{}' has no '='", s);
      auto v = json::parse(s.substr(eq + 1), nullptr, false);
      extra[s.substr(0, eq)] = v.is_discarded() ? json(s.substr(eq + 1)) : v;
    }
    if (!extra.empty()) body["extra"] = extra;
    auto job = api.post("/v1/fine_tuning/jobs", body);
    std::printf("%s\n", job.dump(2).c_str());
    if (a->follow) {
      const std::string st = follow(api, job.value("id", ""));
      if (st != "succeeded") graft::cli::exit_code() = 1;
    }
  });
  auto* list = sub->add_subcommand("list", "List your fine-tuning jobs");
  common(list);
  list->callback([a] {
    Api api(*a);
    std::printf("%s\n", api.get("/v1/fine_tuning/jobs?limit=100").dump(2).c_str());
  });
  for (const char* verb : {"get", "events", "follow", "cancel"}) {
    auto* c = sub->add_subcommand(verb, std::string(verb) == "get"      ? "Show a job"
                                        : std::string(verb) == "events" ? "Print a job's events"
                                        : std::string(verb) == "follow" ? "Print a job's events until it ends"
                                                                        : "Cancel a job");
    common(c);
    c->add_option("id", a->id, "Job id (ftjob-...)")->required();
    const std::string v = verb;
    c->callback([a, v] {
      Api api(*a);
      const std::string base = "/v1/fine_tuning/jobs/" + a->id;
      if (v == "get") std::printf("%s\n", api.get(base).dump(2).c_str());
      if (v == "cancel") std::printf("%s\n", api.post(base + "/cancel", json::object()).dump(2).c_str());
      if (v == "events")
        for (const auto& e : api.get(base + "/events?limit=1000&order=asc")["data"]) print_event(e);
      if (v == "follow" && follow(api, a->id) != "succeeded") graft::cli::exit_code() = 1;
    });
  }
}};
}  // namespace
