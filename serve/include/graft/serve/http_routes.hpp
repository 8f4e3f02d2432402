// Extension point of HttpServer: extra route groups (the fine-tuning API in finetune/) registered on
// the same server, with the same authentication, error format and shutdown behaviour.
#pragma once

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "graft/serve/api_error.hpp"

namespace graft::serve {

struct RouteContext {
  httplib::Server& server;
  // The caller's API key ("" when the server has no keys). On a missing/wrong key it writes the 401
  // error into `res` and returns nullopt; while shutting down it writes 503 and returns nullopt.
  std::function<std::optional<std::string>(const httplib::Request&, httplib::Response&)> authenticate;
  // Runs `body`, turning ApiError / graft::Error / anything else into the OpenAI error response.
  std::function<void(httplib::Response&, const std::function<void()>& body)> guarded;
  std::function<void(httplib::Response&, int status, const nlohmann::json&)> send_json;
  // Lets every key for which `match(key)` holds use `adapter` (fine-tuned adapters go to their owner).
  std::function<void(const std::function<bool(std::string_view key)>& match, const std::string& adapter)> grant;
};
using RouteExtension = std::function<void(RouteContext&)>;

}  // namespace graft::serve
