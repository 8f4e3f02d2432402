#include "graft/finetune/routes.hpp"

#include <algorithm>

#include "graft/train/recipe.hpp"

namespace graft::finetune {
using nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

std::string owner_of(const std::string& api_key) { return api_key.empty() ? "" : train::sha256_hex(api_key); }

namespace {
int64_t limit_of(const Req& req, int64_t def) {
  if (!req.has_param("limit")) return def;
  const std::string v = req.get_param_value("limit");
  int64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9' || n > 100000)
      throw serve::bad_request("limit must be an integer in [1, 10000]", "limit", "invalid_value");
    n = n * 10 + (c - '0');
  }
  if (n < 1 || n > 10000) throw serve::bad_request("limit must be an integer in [1, 10000]", "limit", "invalid_value");
  return n;
}
}  // namespace

serve::RouteExtension fine_tuning_routes(FileStore& files, JobManager& jobs, std::string base_name) {
  return [&files, &jobs, base_name](serve::RouteContext& ctx) {
    auto& svr = ctx.server;
    // Each handler: authenticate, then run guarded (errors become OpenAI error objects).
    auto handle = [ctx](const Req& req, Res& res, const std::function<void(const std::string& owner)>& body) {
      auto key = ctx.authenticate(req, res);
      if (!key) return;
      ctx.guarded(res, [&] { body(owner_of(*key)); });
    };
    svr.Post("/v1/files", [=, &files](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        if (!req.is_multipart_form_data())
          throw serve::bad_request("upload the file as multipart/form-data with fields 'file' and 'purpose'", "file",
                                   "invalid_upload");
        if (!req.has_file("file")) throw serve::bad_request("missing the 'file' field", "file", "missing_field");
        const auto f = req.get_file_value("file");
        const std::string purpose = req.has_file("purpose") ? req.get_file_value("purpose").content : "";
        ctx.send_json(res, 200, files.add(owner, f.filename, purpose, f.content).to_openai());
      });
    });
    svr.Get("/v1/files", [=, &files](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        json data = json::array();
        for (const auto& f : files.list(owner)) data.push_back(f.to_openai());
        ctx.send_json(res, 200, {{"object", "list"}, {"data", data}, {"has_more", false}});
      });
    });
    svr.Get(R"(/v1/files/([A-Za-z0-9_-]+))", [=, &files](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) { ctx.send_json(res, 200, files.get(owner, req.matches[1]).to_openai()); });
    });
    svr.Delete(R"(/v1/files/([A-Za-z0-9_-]+))", [=, &files](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        const std::string id = req.matches[1];
        files.remove(owner, id);
        ctx.send_json(res, 200, {{"id", id}, {"object", "file"}, {"deleted", true}});
      });
    });
    svr.Post("/v1/fine_tuning/jobs", [=, &jobs](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        auto body = json::parse(req.body, nullptr, false);
        if (body.is_discarded()) throw serve::bad_request("the body is not valid JSON", "", "invalid_json");
        ctx.send_json(res, 200, jobs.create(owner, parse_job_request(body)).to_openai(base_name));
      });
    });
    svr.Get("/v1/fine_tuning/jobs", [=, &jobs](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        const int64_t limit = limit_of(req, 20);
        const std::string after = req.has_param("after") ? req.get_param_value("after") : "";
        json data = json::array();
        bool skipping = !after.empty(), more = false;
        for (const auto& j : jobs.list(owner)) {  // newest first
          if (skipping) {
            skipping = j.id != after;
            continue;
          }
          if (static_cast<int64_t>(data.size()) == limit) {
            more = true;
            break;
          }
          data.push_back(j.to_openai(base_name));
        }
        ctx.send_json(res, 200, {{"object", "list"}, {"data", data}, {"has_more", more}});
      });
    });
    svr.Get(R"(/v1/fine_tuning/jobs/([A-Za-z0-9_-]+))", [=, &jobs](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) { ctx.send_json(res, 200, jobs.get(owner, req.matches[1]).to_openai(base_name)); });
    });
    svr.Get(R"(/v1/fine_tuning/jobs/([A-Za-z0-9_-]+)/events)", [=, &jobs](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) {
        const int64_t limit = limit_of(req, 20);
        const std::string after = req.has_param("after") ? req.get_param_value("after") : "";
        const std::string order = req.has_param("order") ? req.get_param_value("order") : "desc";
        if (order != "asc" && order != "desc") throw serve::bad_request("order must be asc or desc", "order", "invalid_value");
        auto evs = jobs.events(owner, req.matches[1], after, 1000000);
        bool more = false;
        if (order == "desc") std::reverse(evs.begin(), evs.end());  // newest first, like OpenAI
        if (static_cast<int64_t>(evs.size()) > limit) {
          more = true;
          evs.resize(static_cast<size_t>(limit));
        }
        json data = json::array();
        for (const auto& e : evs) data.push_back(e.to_openai());
        ctx.send_json(res, 200, {{"object", "list"}, {"data", data}, {"has_more", more}});
      });
    });
    svr.Post(R"(/v1/fine_tuning/jobs/([A-Za-z0-9_-]+)/cancel)", [=, &jobs](const Req& req, Res& res) {
      handle(req, res, [&](const std::string& owner) { ctx.send_json(res, 200, jobs.cancel(owner, req.matches[1]).to_openai(base_name)); });
    });
  };
}

}  // namespace graft::finetune
