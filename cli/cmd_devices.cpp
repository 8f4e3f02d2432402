// `graft devices [--json]`: the compute devices graft can use (CPU threads; CUDA GPUs when built with CUDA).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <thread>
#include <unistd.h>

#include "command.hpp"
#include "graft/backend/make_backend.hpp"
#include "graft/cpu/thread_pool.hpp"
#include "graft/dist/communicator.hpp"
#ifdef GRAFT_HAVE_CUDA
#include "graft/cuda/device_info.hpp"
#endif

namespace {
graft::cli::Registration reg{"devices", 90, [](CLI::App& app) {
  auto* sub = app.add_subcommand("devices", "List the CPU and CUDA devices graft can use");
  auto json = std::make_shared<bool>(false);
  sub->add_flag("--json", *json, "Emit JSON");
  sub->callback([json] {
    nlohmann::json out;
    out["cpu_threads"] = std::thread::hardware_concurrency();
    // How idle OpenMP threads wait, as this process started it (kernels/omp_wait: graft's default GOMP_SPINCOUNT=1000
    // unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT).
    std::string wait;
    for (const char* var : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"})
      if (const char* v = std::getenv(var)) wait += (wait.empty() ? "" : " ") + std::string(var) + "=" + v;
    out["cpu_openmp_wait"] = wait.empty() ? std::string("libgomp default") : wait;
    // graft's own thread pool (the CPU kernels' parallel loops): how long an idle worker spins before it sleeps
    // (GRAFT_CPU_SPIN_US; a malformed value is reported here, before any model runs).
    out["cpu_pool_spin_us"] = graft::cpu::pool_spin_us();
    out["cuda_built"] = false;
    out["cuda_devices"] = nlohmann::json::array();
    out["default_device"] = graft::default_device();  // what --device auto (the default) picks
#ifdef GRAFT_HAVE_CUDA
    out["cuda_built"] = true;
    int n = graft::cuda::device_count();
    if (n == 0) out["cuda_status"] = graft::cuda::no_device_reason();
    for (int i = 0; i < n; ++i) {
      auto d = graft::cuda::device_info(i);
      out["cuda_devices"].push_back(nlohmann::json{{"index", i}, {"name", d.name}, {"compute_capability", fmt::format("{}.{}", d.cc_major, d.cc_minor)},
                                     {"sm_count", d.sm_count}, {"memory_bytes", d.total_mem_bytes},
                                     {"smem_per_block_optin", d.smem_per_block_optin}, {"peak_dram_gbps", d.peak_dram_gbps()}});
    }
#endif
    // Under mpirun every rank reports what it sees (its host, local rank, devices) and rank 0 prints them all.
    if (graft::dist::launched_by_mpi()) {
      auto& w = graft::dist::world();
      char host[256] = {0};
      gethostname(host, sizeof(host) - 1);
      const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
      out["rank"] = w.rank();
      out["world_size"] = w.size();
      out["host"] = host;
      out["local_rank"] = local ? std::atoi(local) : 0;
      out["train_device"] = "cpu";  // graft train's step runs on the CPU backend (docs/distributed.md)
      const auto all = w.allgather(out.dump());
      if (w.is_root()) {
        nlohmann::json ranks = nlohmann::json::array();
        for (const auto& r : all) ranks.push_back(nlohmann::json::parse(r));
        if (*json) {
          std::printf("%s\n", nlohmann::json{{"ranks", ranks}}.dump(2).c_str());
        } else {
          for (const auto& r : ranks)
            std::printf("rank %d/%d on %s (local rank %d): cpu %u threads, %zu CUDA device(s), --device auto -> %s, "
                        "graft train -> %s\n",
                        r["rank"].get<int>(), r["world_size"].get<int>(), r["host"].get<std::string>().c_str(),
                        r["local_rank"].get<int>(), r["cpu_threads"].get<unsigned>(), r["cuda_devices"].size(),
                        r["default_device"].get<std::string>().c_str(), r["train_device"].get<std::string>().c_str());
        }
      }
      w.finalize();
      return;
    }
    if (*json) {
      std::printf("%s\n", out.dump(2).c_str());
      return;
    }
    std::printf("cpu: %u hardware threads; thread pool spins %d us before sleeping; OpenMP waits: %s\n",
                out["cpu_threads"].get<unsigned>(), out["cpu_pool_spin_us"].get<int>(),
                out["cpu_openmp_wait"].get<std::string>().c_str());
    if (!out["cuda_built"].get<bool>()) std::printf("cuda: not built (nvcc was not found at configure time)\n");
    else if (out["cuda_devices"].empty()) std::printf("cuda: %s\n", out["cuda_status"].get<std::string>().c_str());
    for (auto& d : out["cuda_devices"])
      std::printf("cuda:%d %s (sm_%s, %d SMs, %.1f GiB)\n", d["index"].get<int>(), d["name"].get<std::string>().c_str(),
                  d["compute_capability"].get<std::string>().c_str(), d["sm_count"].get<int>(),
                  d["memory_bytes"].get<double>() / (1ull << 30));
    std::printf("default (--device auto): %s\n", out["default_device"].get<std::string>().c_str());
  });
}};
}  // namespace
