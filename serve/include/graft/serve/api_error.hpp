// ApiError: a graft::Error that carries an OpenAI error object's fields and its HTTP status.
//
// The engine, the adapter manager and the HTTP layer throw it for anything a client did or can fix
// (unknown model, bad parameter, queue full, adapter limit); the HTTP layer turns it into
// {"error": {"message", "type", "param", "code"}} with `status`. Plain graft::Error escaping a
// handler is a 500 ("internal_error").
#pragma once

#include <string>

#include "graft/error.hpp"

namespace graft::serve {

class ApiError : public Error {
 public:
  // status: HTTP status (400, 401, 403, 404, 413, 429, 503, ...). type: OpenAI error type
  // ("invalid_request_error", "authentication_error", "permission_error", "not_found_error",
  // "rate_limit_error", "server_error"). param: the offending request field or "". code: a short
  // machine-readable code ("model_not_found", "queue_full", "context_length_exceeded", ...).
  ApiError(int status, std::string type, std::string message, std::string param = {}, std::string code = {})
      : Error(message, "", ""), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type, param, code;
};

inline ApiError bad_request(std::string message, std::string param = {}, std::string code = {}) {
  return ApiError(400, "invalid_request_error", std::move(message), std::move(param), std::move(code));
}

}  // namespace graft::serve
