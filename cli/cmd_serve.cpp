// `graft serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--served-model-name NAME] [--adapter NAME=DIR]...
//  [--adapter-dir ROOT]... [--max-loras N] [--max-cpu-loras-bytes B] [--max-lora-rank R] [--max-num-seqs N]
//  [--max-batch-tokens N] [--kv-cache-bytes B] [--block-size N] [--max-queue N] [--max-model-len N]
//  [--api-key KEY]... [--api-keys-file FILE] [--max-request-bytes B] [--load-in-4bit] [--lm-head-dtype f32|q8|q6|nf4]
//  [--http-threads N] [--max-connections N] [--max-connections-per-client N] [--max-header-bytes B]
//  [--http-header-timeout S] [--http-read-timeout S] [--http-keep-alive S]
//  [--enable-lora-runtime-updates] [--port-file FILE]
//  [--enable-fine-tuning [--ft-dir DIR] [--ft-compute-share S] [--ft-memory-budget B]]`
//
// Serves the base model and its LoRA adapters over the OpenAI-compatible HTTP API (docs/serving.md).
// Prints "graft serve: listening on http://HOST:PORT" on stderr once requests are accepted; with
// --port 0 the kernel picks a free port, written to --port-file. SIGINT/SIGTERM: stop accepting
// (503), drain in-flight requests, exit 0.
#include <fmt/format.h>
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "command.hpp"
#include "device_option.hpp"
#include "expert_parallel_inference.hpp"
#include "lm_head_option.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/error.hpp"
#include "graft/finetune/file_store.hpp"
#include "graft/finetune/job_limits.hpp"
#include "graft/finetune/job_manager.hpp"
#include "graft/finetune/routes.hpp"
#include "graft/train/data.hpp"
#include "graft/train/memory_estimate.hpp"
#include "graft/mmap_file.hpp"
#include "graft/model/generate.hpp"
#include "graft/serve/adapter_manager.hpp"
#include "graft/serve/api_error.hpp"
#include "graft/serve/engine.hpp"
#include "graft/serve/http_server.hpp"
#include "graft/tokenizer/tokenizer.hpp"

namespace {
namespace fs = std::filesystem;

struct ServeArgs {
  std::string device = "auto";  // --device
  std::string lm_head_dtype = "f32";  // --lm-head-dtype
  std::string dir, host = "127.0.0.1", served_name, api_keys_file, port_file;
  int port = 8000;
  std::vector<std::string> adapters, adapter_dirs, api_keys;
  graft::serve::AdapterLimits limits;
  graft::serve::EngineOptions engine;
  size_t max_request_bytes = size_t(8) << 20;
  int http_threads = 64;
  graft::serve::HttpServerOptions http;  // transport limits (connections, header size, timeouts)
  double drain_timeout = 60;
  bool load_in_4bit = false, runtime_updates = false;
  bool fine_tuning = false;
  std::string ft_dir = "graft-finetune";
  double ft_share = 0.5;
  uint64_t ft_memory_budget = 0;  // 0: half of the memory available at start-up
};

void write_port_file(const std::string& path, int port) {
  const std::string s = std::to_string(port) + "\n";
  graft::write_file_atomic(path, s.data(), s.size());
}

void run(const ServeArgs& a) {
  using namespace graft;
  // Block the shutdown signals before any thread exists; one thread waits for them (sigwait).
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  GRAFT_CHECK_FIX(fs::exists(fs::path(a.dir) / "config.json"), "pass a Hugging Face model directory",
                  "'{}' has no config.json", a.dir);
  serve::ApiKeys keys;
  for (const auto& k : a.api_keys) keys.add(k, serve::ApiGrant{true, {}});
  if (!a.api_keys_file.empty()) keys.add_file(a.api_keys_file);

  // Adapters: NAME=DIR pairs; each DIR's parent becomes an allowed root (the manager's rule).
  std::vector<std::pair<std::string, std::string>> named;
  std::vector<std::string> roots = a.adapter_dirs;
  for (const auto& spec : a.adapters) {
    const size_t eq = spec.find('=');
    GRAFT_CHECK_FIX(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "write --adapter NAME=DIR",
                    "--adapter '{}' is not NAME=DIR", spec);
    const std::string name = spec.substr(0, eq), path = spec.substr(eq + 1);
    GRAFT_CHECK_FIX(fs::is_directory(path), "pass an adapter directory (adapter_config.json + weights)",
                    "--adapter {}: '{}' is not a directory", name, path);
    named.emplace_back(name, path);
    roots.push_back(fs::absolute(path).lexically_normal().parent_path().string());
  }

  auto tok = tokenizer::Tokenizer::from_file(a.dir);
  std::unique_ptr<chat_template::ChatTemplate> chat;
  try {
    chat = std::make_unique<chat_template::ChatTemplate>(chat_template::ChatTemplate::from_tokenizer_config(a.dir));
  } catch (const Error& e) {
    std::fprintf(stderr, "graft serve: no chat template (%s); /v1/chat/completions will answer 400\n", e.message().c_str());
  }
  const auto eos = model::eos_ids(a.dir);

  model::LoadOptions lo;
  lo.load_in_4bit = a.load_in_4bit;
  lo.lm_head_dtype = graft::cli::lm_head_dtype(a.lm_head_dtype);
  GRAFT_CHECK_FIX(!a.fine_tuning || lo.lm_head_dtype == model::LmHeadDtype::F32,
                  "drop --lm-head-dtype (fine-tuning jobs train through the exact f32 lm_head) or --enable-fine-tuning",
                  "--lm-head-dtype {} is inference only, but --enable-fine-tuning trains on the served base",
                  a.lm_head_dtype);
  GRAFT_CHECK_FIX(!a.fine_tuning || !graft::dist::launched_by_mpi(),
                  "serve without mpirun to run fine-tuning jobs, or drop --enable-fine-tuning",
                  "--enable-fine-tuning trains on the served base, which cannot have its experts sharded over ranks");
  graft::cli::InferenceGroup group(a.dir, lo, a.device, "serve");  // mpirun: experts sharded over the ranks
  if (!group.model()) return;  // a worker rank: it served its experts' rows until rank 0 finished
  auto& m = *group.model();
  auto be = graft::cli::backend_for(a.device);
  if (a.fine_tuning) {  // fine-tuned adapters are loaded from the jobs' folders
    fs::create_directories(fs::path(a.ft_dir) / "jobs");
    roots.push_back(fs::absolute(fs::path(a.ft_dir) / "jobs").lexically_normal().string());
  }
  serve::AdapterManager adapters(m.config(), roots, a.limits);
  for (const auto& [name, path] : named) {
    try {
      adapters.add_and_load(name, path);
    } catch (const serve::ApiError& e) {
      GRAFT_FAIL("fix the adapter or drop the --adapter flag", "--adapter {}={}: {}", name, path, e.message());
    }
  }
  serve::Engine engine(m, *be, adapters, a.engine);
  auto service = serve::make_engine_service(engine, adapters);

  serve::HttpServerOptions ho = a.http;
  ho.host = a.host;
  ho.port = a.port;
  ho.served_model_name = a.served_name.empty() ? a.dir : a.served_name;
  ho.model_path = fs::absolute(a.dir).lexically_normal().string();
  ho.vocab_size = m.vocab_size();
  ho.max_request_bytes = a.max_request_bytes;
  ho.threads = a.http_threads;
  ho.enable_lora_runtime_updates = a.runtime_updates;
  ho.drain_timeout_s = a.drain_timeout;
  serve::HttpServer server(ho, *service, tok, chat.get(), eos, std::move(keys));
  // Fine-tuning jobs (opt-in): one copy of the base, shared with the engine.
  std::unique_ptr<finetune::FileStore> ft_files;
  std::unique_ptr<finetune::JobManager> ft_jobs;
  if (a.fine_tuning) {
    ft_files = std::make_unique<finetune::FileStore>(a.ft_dir, [&](const std::string& path, const std::string& type) {
      train::DatasetSpec spec;
      spec.path = path;
      spec.type = type;
      train::DataStats st;
      train::load_dataset(spec, tok, chat.get(), train::DataOptions{}, &st);
      return st.records;
    });
    finetune::JobManagerOptions jo;
    jo.dir = a.ft_dir;
    jo.base_dir = fs::absolute(a.dir).lexically_normal().string();
    jo.base_name = ho.served_model_name;
    jo.load_in_4bit = a.load_in_4bit;
    jo.compute_share = a.ft_share;
    jo.limits.memory_budget_bytes = a.ft_memory_budget ? a.ft_memory_budget : finetune::default_memory_budget();
    std::fprintf(stderr, "graft serve: fine-tuning jobs may use up to %s of memory (--ft-memory-budget)\n",
                 train::format_bytes(jo.limits.memory_budget_bytes).c_str());
    finetune::JobHooks hooks;
    hooks.base = &m;
    hooks.serving_stats = [&engine] { return engine.stats(); };
    hooks.publish = [&adapters, &server](const std::string& name, const std::string& dir, const std::string& owner) {
      if (!adapters.known(name)) adapters.add_and_load(name, dir);
      if (!owner.empty())
        server.grant_adapter([&](std::string_view key) { return finetune::owner_of(std::string(key)) == owner; }, name);
    };
    ft_jobs = std::make_unique<finetune::JobManager>(jo, *ft_files, hooks);
    server.add_routes(finetune::fine_tuning_routes(*ft_files, *ft_jobs, ho.served_model_name));
    ft_jobs->start();
  }
  const int port = server.bind();
  if (!a.port_file.empty()) write_port_file(a.port_file, port);

  std::atomic<bool> done{false};
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (done) return;  // woken by ourselves after serve() returned
    std::fprintf(stderr, "graft serve: %s received: draining %d in-flight request(s)\n",
                 sig == SIGINT ? "SIGINT" : "SIGTERM", server.in_flight());
    server.shutdown();
  });
  std::fprintf(stderr, "graft serve: listening on http://%s:%d\n", a.host.c_str(), port);
  std::fflush(stderr);
  server.serve();
  done = true;
  if (!server.shutting_down()) pthread_kill(signals.native_handle(), SIGTERM);  // serve() failed: wake the waiter
  signals.join();
  ft_jobs.reset();  // a running job stops at its next step, checkpointed; it resumes at the next start
  engine.shutdown(/*drain=*/false);
  std::fprintf(stderr, "graft serve: stopped\n");
}

graft::cli::Registration reg{"serve", 45, [](CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* sub = app.add_subcommand("serve", "Serve the model and its LoRA adapters over an OpenAI-compatible HTTP API");
  sub->add_option("model_dir", a->dir, "Hugging Face model directory (the frozen base)")->required();
  graft::cli::add_device_option(sub, a->device);
  sub->add_option("--host", a->host, "Address to listen on (default 127.0.0.1: this machine only)");
  sub->add_option("--port", a->port, "TCP port (0: any free port, see --port-file)")->check(CLI::Range(0, 65535));
  sub->add_option("--port-file", a->port_file, "Write the bound port to this file once listening");
  sub->add_option("--served-model-name", a->served_name, "The base model's id in requests and /v1/models (default: MODEL_DIR)");
  sub->add_option("--adapter", a->adapters, "A LoRA adapter NAME=DIR (PEFT directory), loaded at start-up; repeatable");
  sub->add_option("--adapter-dir", a->adapter_dirs,
                  "A root directory of adapters: ROOT/NAME is served as NAME on first use, and runtime loads must stay inside a root; repeatable");
  sub->add_option("--max-loras", a->limits.max_loras, "Distinct adapters in one engine step")->check(CLI::PositiveNumber);
  sub->add_option("--max-cpu-loras-bytes", a->limits.max_cpu_bytes, "Host cache budget for parsed adapters (e.g. 2GiB)")
      ->transform(CLI::AsSizeValue(false));
  sub->add_option("--max-lora-rank", a->limits.max_rank, "Reject adapters of a larger rank")->check(CLI::PositiveNumber);
  sub->add_option("--max-num-seqs", a->engine.max_num_seqs, "Running sequences per engine step")->check(CLI::PositiveNumber);
  sub->add_option("--max-batch-tokens", a->engine.max_batch_tokens, "Tokens per engine step (decode + prefill chunks)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-cache-bytes", a->engine.kv_cache_bytes, "Paged KV cache size (e.g. 512MiB)")->transform(CLI::AsSizeValue(false));
  sub->add_option("--block-size", a->engine.block_size, "KV tokens per cache block")->check(CLI::PositiveNumber);
  sub->add_option("--max-queue", a->engine.max_queue, "Waiting requests before 429")->check(CLI::NonNegativeNumber);
  sub->add_option("--max-model-len", a->engine.max_model_len, "Maximum prompt + completion tokens (0: the model's)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--api-key", a->api_keys, "Require 'Authorization: Bearer KEY' (full access); repeatable");
  sub->add_option("--api-keys-file", a->api_keys_file, "JSON {\"KEY\": [\"adapter\", ...] or \"*\"}: keys and the adapters each may use");
  sub->add_option("--max-request-bytes", a->max_request_bytes, "Larger request bodies get 413 (e.g. 8MiB)")
      ->transform(CLI::AsSizeValue(false));
  sub->add_option("--http-threads", a->http_threads,
                  "HTTP worker threads (each holds one request from its complete header to its response)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--max-connections", a->http.max_connections,
                  "Open connections in all; more are answered 503 and closed")->check(CLI::Range(1, 65536));
  sub->add_option("--max-connections-per-client", a->http.max_connections_per_client,
                  "Open connections from one client address; more are answered 503 and closed")->check(CLI::Range(1, 65536));
  sub->add_option("--max-header-bytes", a->http.max_header_bytes,
                  "Request line + headers; larger heads get 431 (a request line over 8 KiB: 414)")
      ->transform(CLI::AsSizeValue(false));
  sub->add_option("--http-header-timeout", a->http.header_timeout_s,
                  "Seconds a client has to send a request's line and headers (then 408)")->check(CLI::Range(1, 3600));
  sub->add_option("--http-read-timeout", a->http.read_timeout_s,
                  "Seconds a request body may stall; bodies must also average 64 KiB/s after that grace (then 408)")
      ->check(CLI::Range(1, 3600));
  sub->add_option("--http-keep-alive", a->http.keep_alive_timeout_s, "Seconds an idle keep-alive connection stays open")
      ->check(CLI::Range(1, 3600));
  sub->add_option("--drain-timeout", a->drain_timeout, "Seconds to let in-flight requests finish on SIGINT/SIGTERM")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--load-in-4bit", a->load_in_4bit, "Quantize projection weights to NF4 on load");
  graft::cli::add_lm_head_dtype_option(sub, a->lm_head_dtype);
  sub->add_flag("--enable-lora-runtime-updates", a->runtime_updates,
                "Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM-compatible)");
  sub->add_flag("--enable-fine-tuning", a->fine_tuning,
                "Enable the OpenAI fine-tuning API (/v1/files, /v1/fine_tuning/jobs): jobs train on the served base");
  sub->add_option("--ft-dir", a->ft_dir, "Where uploaded files and fine-tuning jobs live (survives restarts)");
  sub->add_option("--ft-compute-share", a->ft_share,
                  "Training's share of wall time while requests are being served (0, 1]; idle time is used fully")
      ->check(CLI::Range(0.01, 1.0));
  sub->add_option("--ft-memory-budget", a->ft_memory_budget,
                  "Memory one fine-tuning job may use (e.g. 4GiB; default: half of what is available at start-up); "
                  "larger jobs are refused with 400")
      ->transform(CLI::AsSizeValue(false));
  sub->callback([a] { run(*a); });
}};
}  // namespace
