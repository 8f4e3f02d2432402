// The --device option shared by the commands that run a model (eval, generate, serve): cpu, cuda,
// cuda:N or auto (cuda:0 when a CUDA device is usable, else cpu). graft::make_backend parses it and
// names what is wrong with a bad value.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "graft/backend/make_backend.hpp"

namespace graft::cli {

inline void add_device_option(CLI::App* sub, std::string& device) {
  sub->add_option("--device", device,
                  "Compute device: cpu, cuda, cuda:N, or auto (default: cuda:0 when a CUDA GPU is usable, else cpu; "
                  "see `graft devices`)");
}

// The backend for `device`, with one stderr line saying which device runs when it was chosen automatically.
inline std::unique_ptr<Backend> backend_for(const std::string& device) {
  auto be = graft::make_backend(device);
  if (device.empty() || device == "auto") std::fprintf(stderr, "device: %s\n", be->device().str().c_str());
  return be;
}

}  // namespace graft::cli
