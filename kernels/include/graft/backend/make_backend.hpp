// The one place that maps a device name to a Backend implementation (kernels/backend/make_backend.cpp,
// target graft_backend: the CPU backend always, the CUDA backend when this build has CUDA).
#pragma once

#include <memory>
#include <string>

#include "graft/backend/backend.hpp"

namespace graft {

// "cpu" -> the CPU reference backend; "cuda" / "cuda:N" -> the CUDA backend on device N (0 if omitted);
// "auto" (or "") -> cuda:0 when a CUDA device is usable, else cpu. Anything else, a CUDA device that
// does not exist, or "cuda" in a build without CUDA throws graft::Error saying what to use instead.
std::unique_ptr<Backend> make_backend(const std::string& device);

// The device "auto" resolves to right now: "cuda:0" or "cpu".
std::string default_device();

// Whether this build contains the CUDA backend (it may still find no GPU at run time).
bool build_has_cuda();

// A human-readable report of what each device name would use (for `graft devices`): every CUDA device
// with its name, compute capability, SMs, memory and peak bandwidth, or why there is none, plus the CPU.
std::string devices_report();

}  // namespace graft
