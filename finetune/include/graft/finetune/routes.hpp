// The OpenAI fine-tuning API on `graft serve --enable-fine-tuning`:
//   POST /v1/files (multipart: file, purpose=fine-tune), GET /v1/files, GET/DELETE /v1/files/{id}
//   POST /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id},
//   GET /v1/fine_tuning/jobs/{id}/events (?after=EVENT_ID&limit=N&order=asc|desc), POST .../{id}/cancel
// Owners are sha256(API key) ("" without keys): a key sees only its own files and jobs.
#pragma once

#include <string>

#include "graft/finetune/file_store.hpp"
#include "graft/finetune/job_manager.hpp"
#include "graft/serve/http_routes.hpp"

namespace graft::finetune {

// The owner id of an API key.
std::string owner_of(const std::string& api_key);
serve::RouteExtension fine_tuning_routes(FileStore& files, JobManager& jobs, std::string base_name);

}  // namespace graft::finetune
