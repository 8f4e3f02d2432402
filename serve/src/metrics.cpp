// Prometheus metrics of `graft serve`. See graft/serve/metrics.hpp.
#include "graft/serve/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace graft::serve {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  ++count_;
  sum_ += v;
}

std::vector<uint64_t> Histogram::cumulative() const {
  std::vector<uint64_t> c(counts_.size());
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) c[i] = acc += counts_[i];
  return c;
}

std::string prometheus_escape(std::string_view v) {
  std::string o;
  o.reserve(v.size());
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '"') o += "\\\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

std::string prometheus_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

namespace {
// vLLM's buckets (vllm/v1/metrics/loggers.py), extended at the low end for a CPU/tiny-model server.
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                                          2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                         0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kRequestBuckets = {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0,
                                             20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const char* kReasons[] = {"stop", "length", "abort", "error"};

struct Writer {
  std::string out;
  void family(const std::string& name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void sample(const std::string& name, const std::string& labels, double v) {
    out += name;
    if (!labels.empty()) out += "{" + labels + "}";
    out += " " + prometheus_number(v) + "\n";
  }
  void histogram(const std::string& name, const char* help, const std::string& labels, const Histogram& h) {
    family(name, "histogram", help);
    auto c = h.cumulative();
    for (size_t i = 0; i < h.bounds().size(); ++i)
      sample(name + "_bucket", labels + ",le=\"" + prometheus_number(h.bounds()[i]) + "\"", static_cast<double>(c[i]));
    sample(name + "_bucket", labels + ",le=\"+Inf\"", static_cast<double>(c.back()));
    sample(name + "_sum", labels, h.sum());
    sample(name + "_count", labels, static_cast<double>(h.count()));
  }
};
}  // namespace

Metrics::Metrics(std::string model_name)
    : model_name_(std::move(model_name)), ttft_(kTtftBuckets), itl_(kItlBuckets), e2e_(kRequestBuckets), queue_(kRequestBuckets) {
  for (const char* r : kReasons) finished_[r] = 0;
}

void Metrics::on_request_finished(const FinishedRequest& r) {
  std::lock_guard lk(mu_);
  prompt_tokens_ += r.prompt_tokens;
  generation_tokens_ += r.generation_tokens;
  ++finished_[r.finished_reason.empty() ? std::string("abort") : r.finished_reason];
  if (r.ttft_s >= 0) ttft_.observe(r.ttft_s);
  if (r.e2e_s >= 0) e2e_.observe(r.e2e_s);
  if (r.queue_s >= 0) queue_.observe(r.queue_s);
  for (double d : r.itl_s) itl_.observe(d);
  if (!r.adapter.empty()) {
    auto& a = adapters_[r.adapter];
    ++a.requests;
    a.prompt_tokens += r.prompt_tokens;
    a.generation_tokens += r.generation_tokens;
  }
}

void Metrics::on_http_response(const std::string& route, int status) {
  std::lock_guard lk(mu_);
  ++http_[{route, status}];
}

std::string Metrics::render(const Live& live) const {
  std::lock_guard lk(mu_);
  Writer w;
  const std::string m = "model_name=\"" + prometheus_escape(model_name_) + "\"";
  const EngineStats& s = live.engine;

  w.family("graft:num_requests_running", "gauge", "Number of requests in model execution batches.");
  w.sample("graft:num_requests_running", m, s.running);
  w.family("graft:num_requests_waiting", "gauge", "Number of requests waiting to be processed.");
  w.sample("graft:num_requests_waiting", m, s.waiting);
  w.family("graft:num_requests_waiting_for_adapter", "gauge", "Number of waiting requests whose adapter is still loading.");
  w.sample("graft:num_requests_waiting_for_adapter", m, s.waiting_for_adapter);
  w.family("graft:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
  w.sample("graft:kv_cache_usage_perc", m, s.kv_usage);
  w.family("graft:kv_cache_blocks_total", "gauge", "KV-cache blocks in the paged pool.");
  w.sample("graft:kv_cache_blocks_total", m, static_cast<double>(s.kv_blocks_total));
  w.family("graft:max_model_len", "gauge", "Maximum tokens (prompt + completion) of one request.");
  w.sample("graft:max_model_len", m, static_cast<double>(s.max_model_len));

  w.family("graft:num_preemptions_total", "counter", "Cumulative number of preemptions from the engine.");
  w.sample("graft:num_preemptions_total", m, static_cast<double>(s.preemptions));
  w.family("graft:engine_steps_total", "counter", "Cumulative number of engine steps (forward batches).");
  w.sample("graft:engine_steps_total", m, static_cast<double>(s.steps));
  w.family("graft:prompt_tokens_total", "counter", "Number of prefill tokens processed (finished requests).");
  w.sample("graft:prompt_tokens_total", m, static_cast<double>(prompt_tokens_));
  w.family("graft:generation_tokens_total", "counter", "Number of generation tokens processed (finished requests).");
  w.sample("graft:generation_tokens_total", m, static_cast<double>(generation_tokens_));
  w.family("graft:request_success_total", "counter", "Count of finished requests by finish reason.");
  for (const auto& [reason, n] : finished_)
    w.sample("graft:request_success_total", m + ",finished_reason=\"" + prometheus_escape(reason) + "\"", static_cast<double>(n));

  w.histogram("graft:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m, ttft_);
  w.histogram("graft:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", m, itl_);
  w.histogram("graft:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", m, e2e_);
  w.histogram("graft:request_queue_time_seconds", "Histogram of time spent waiting in the queue in seconds.", m, queue_);

  // Adapters: counters for every adapter that served a request; gauges for every registered one.
  auto al = [&](const std::string& a) { return m + ",adapter=\"" + prometheus_escape(a) + "\""; };
  w.family("graft:adapter_requests_total", "counter", "Finished requests (choices) per adapter.");
  for (const auto& [a, c] : adapters_) w.sample("graft:adapter_requests_total", al(a), static_cast<double>(c.requests));
  w.family("graft:adapter_prompt_tokens_total", "counter", "Prompt tokens of finished requests per adapter.");
  for (const auto& [a, c] : adapters_) w.sample("graft:adapter_prompt_tokens_total", al(a), static_cast<double>(c.prompt_tokens));
  w.family("graft:adapter_generation_tokens_total", "counter", "Generated tokens of finished requests per adapter.");
  for (const auto& [a, c] : adapters_)
    w.sample("graft:adapter_generation_tokens_total", al(a), static_cast<double>(c.generation_tokens));
  int64_t loaded = 0;
  w.family("graft:adapter_loaded", "gauge", "1 when the adapter is resident in the host cache, 0 when only registered.");
  for (const auto& a : live.adapters) {
    w.sample("graft:adapter_loaded", al(a.name), a.loaded ? 1 : 0);
    loaded += a.loaded;
  }
  w.family("graft:num_adapters_loaded", "gauge", "Adapters resident in the host cache.");
  w.sample("graft:num_adapters_loaded", m, static_cast<double>(loaded));
  w.family("graft:num_adapters_registered", "gauge", "Adapters known to the server (loaded or not).");
  w.sample("graft:num_adapters_registered", m, static_cast<double>(live.adapters.size()));
  w.family("graft:adapter_cache_bytes", "gauge", "Bytes of parsed adapters held in the host cache.");
  w.sample("graft:adapter_cache_bytes", m, static_cast<double>(live.adapter_cache_bytes));

  w.family("graft:http_requests_total", "counter", "HTTP responses by route and status.");
  for (const auto& [k, n] : http_)
    w.sample("graft:http_requests_total",
             m + ",route=\"" + prometheus_escape(k.first) + "\",status=\"" + std::to_string(k.second) + "\"",
             static_cast<double>(n));
  return w.out;
}

}  // namespace graft::serve
