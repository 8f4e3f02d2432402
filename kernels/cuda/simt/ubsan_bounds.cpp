// ubsan_bounds.cpp — the SIMT kernels are compiled with -fsanitize=bounds (kernels/CMakeLists.txt):
// every index into an array of known size (__shared__ tiles, register arrays) is checked. This is
// the handler the compiler calls for an index out of bounds: it faults the running CUDA thread
// (the launch fails with file, line, array type and index) instead of linking the UBSan runtime.
#include <fmt/format.h>

#include <cstdint>

#include "simt.hpp"

namespace {
struct SourceLocation {
  const char* file;
  uint32_t line, column;
};
struct TypeDescriptor {
  uint16_t kind, info;
  char name[1];
};
struct OutOfBoundsData {
  SourceLocation loc;
  const TypeDescriptor* array_type;
  const TypeDescriptor* index_type;
};

[[noreturn]] void report(const OutOfBoundsData* d, uintptr_t index) {
  const bool is_signed = d->index_type->kind == 0 && (d->index_type->info & 1);
  const int bits = d->index_type->kind == 0 ? 1 << (d->index_type->info >> 1) : 64;
  int64_t v = static_cast<int64_t>(index);
  if (bits < 64) {
    const uint64_t m = (uint64_t{1} << bits) - 1;
    v = static_cast<int64_t>(index & m);
    if (is_signed && (index >> (bits - 1) & 1)) v -= static_cast<int64_t>(m) + 1;
  }
  graft::simt::fault(fmt::format("index {} out of bounds for type {} at {}:{}:{}", v, d->array_type->name, d->loc.file,
                                 d->loc.line, d->loc.column));
}
}  // namespace

extern "C" {
void __ubsan_handle_out_of_bounds(OutOfBoundsData* d, uintptr_t index) { report(d, index); }
void __ubsan_handle_out_of_bounds_abort(OutOfBoundsData* d, uintptr_t index) { report(d, index); }
}
