// libFuzzer target: graft::config::parse_model_config_text on arbitrary text (a hostile config.json),
// plus the per-layer helpers and parameter counting on whatever parses. Must only ever throw graft::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/model_info.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto c = graft::config::parse_model_config_text(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    if (c.num_hidden_layers > 4096) return 0;  // keep per-input work bounded
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) (void)c.layer_kind(i);
    auto p = graft::count_parameters(c);
    auto m = graft::estimate_memory(c);
    volatile int64_t sink = p.total + static_cast<int64_t>(m.nf4_bytes);
    (void)sink;
  } catch (const graft::Error&) {
  }
  return 0;
}
