// libFuzzer target: graft::io::parse_safetensors_header on arbitrary bytes (the whole file image).
// The parser must either return a header whose every tensor lies inside the buffer, or throw
// graft::Error — never crash, read out of bounds, overflow or leak. Build: see fuzz/CMakeLists.txt.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = graft::io::parse_safetensors_header(data, size, "fuzz-input");
    // Invariants of an accepted header: touch every tensor's bytes (ASan checks the bounds).
    uint64_t sum = 0;
    for (const auto& t : h.tensors) {
      if (t.end > h.data_bytes || t.begin > t.end || h.data_start + t.end > size) std::abort();
      if (static_cast<uint64_t>(t.numel()) * graft::dtype_size(t.dtype) != t.end - t.begin) std::abort();
      if (t.begin != t.end) sum += data[h.data_start + t.begin] + data[h.data_start + t.end - 1];
    }
    for (const auto& [k, v] : h.metadata) sum += k.size() + v.size();
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const graft::Error&) {
    // Rejected with a clear message: fine.
  }
  return 0;
}
