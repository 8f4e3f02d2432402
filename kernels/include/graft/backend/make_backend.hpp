// The one place that maps a device name to a Backend implementation.
#pragma once

#include <memory>
#include <string>

#include "graft/backend/backend.hpp"

namespace graft {

// "cpu" -> the CPU reference backend. Any other name throws graft::Error naming the device and the
// devices this build has.
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace graft
