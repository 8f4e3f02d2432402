// Prometheus metrics of `graft serve` (GET /metrics, text exposition format 0.0.4).
//
// Names follow vLLM's with the prefix `graft:` (docs/serving.md lists them all):
//   gauges      graft:num_requests_running, graft:num_requests_waiting, graft:kv_cache_usage_perc, ...
//   counters    graft:prompt_tokens_total, graft:generation_tokens_total, graft:num_preemptions_total,
//               graft:request_success_total{finished_reason}
//   histograms  graft:time_to_first_token_seconds, graft:inter_token_latency_seconds,
//               graft:e2e_request_latency_seconds, graft:request_queue_time_seconds
//   adapters    graft:adapter_requests_total / _prompt_tokens_total / _generation_tokens_total and the
//               graft:adapter_loaded gauge, labelled {model_name, adapter}
// Every series carries model_name = the served base model name.
//
// Thread-safe: HTTP threads record finished requests; the scrape renders under the same mutex.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "graft/serve/adapter_manager.hpp"
#include "graft/serve/engine.hpp"

namespace graft::serve {

// A cumulative histogram with fixed upper bounds (+Inf implied). Not synchronized by itself.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Cumulative counts: one per bound (v <= bound), then the +Inf bucket (= count()).
  std::vector<uint64_t> cumulative() const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, last = above every bound
  uint64_t count_ = 0;
  double sum_ = 0;
};

// One finished generation (one choice of a request).
struct FinishedRequest {
  std::string adapter;          // "" = the base model
  std::string finished_reason;  // "stop", "length", "abort", "error"
  int64_t prompt_tokens = 0, generation_tokens = 0;
  double queue_s = -1, ttft_s = -1, e2e_s = -1;  // seconds; < 0 = not measured (e.g. no token)
  std::vector<double> itl_s;                     // gaps between consecutive tokens
};

class Metrics {
 public:
  explicit Metrics(std::string model_name);

  void on_request_finished(const FinishedRequest& r);
  // One HTTP response (route: the endpoint path for known routes, "other" otherwise).
  void on_http_response(const std::string& route, int status);

  struct Live {  // values read at scrape time
    EngineStats engine;
    std::vector<AdapterInfo> adapters;
    size_t adapter_cache_bytes = 0;
  };
  std::string render(const Live& live) const;

 private:
  struct AdapterCounters {
    int64_t requests = 0, prompt_tokens = 0, generation_tokens = 0;
  };
  std::string model_name_;
  mutable std::mutex mu_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  std::map<std::string, int64_t> finished_;  // finished_reason -> count
  Histogram ttft_, itl_, e2e_, queue_;
  std::map<std::string, AdapterCounters> adapters_;
  std::map<std::pair<std::string, int>, int64_t> http_;
};

// Label value escaping of the text format (\\, \", \n).
std::string prometheus_escape(std::string_view v);
// A sample value: integers without a fraction, others in shortest round-trip form; +Inf/-Inf/NaN.
std::string prometheus_number(double v);

}  // namespace graft::serve
