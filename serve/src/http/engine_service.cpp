// GenerationService over the real Engine and AdapterManager (what `graft serve` runs).
#include "graft/serve/http_server.hpp"

namespace graft::serve {
namespace {

class EngineService final : public GenerationService {
 public:
  EngineService(Engine& e, AdapterManager& a) : engine_(e), adapters_(a) {}
  uint64_t submit(GenRequest req, Sink sink) override { return engine_.submit(std::move(req), std::move(sink)); }
  void cancel(uint64_t id) override { engine_.cancel(id); }
  EngineStats stats() const override { return engine_.stats(); }
  bool adapter_known(const std::string& name) override { return adapters_.known(name); }
  std::vector<AdapterInfo> adapters() const override { return adapters_.list(); }
  size_t adapter_cache_bytes() const override { return adapters_.cached_bytes(); }
  void load_adapter(const std::string& name, const std::string& path) override { adapters_.add_and_load(name, path); }
  void unload_adapter(const std::string& name) override { adapters_.remove(name); }

 private:
  Engine& engine_;
  AdapterManager& adapters_;
};

}  // namespace

std::unique_ptr<GenerationService> make_engine_service(Engine& engine, AdapterManager& adapters) {
  return std::make_unique<EngineService>(engine, adapters);
}

}  // namespace graft::serve
