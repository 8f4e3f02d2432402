// The --lm-head-dtype option shared by the commands that only run a model (eval, generate, serve): f32 (default,
// exact), q8, q6 or nf4 (the lm_head projection quantized on load for faster CPU decode; inference only, cf. llama.cpp's
// --output-tensor-type). model::parse_lm_head_dtype names the flag and the choices for a bad value.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "graft/model/model.hpp"

namespace graft::cli {

inline void add_lm_head_dtype_option(CLI::App* sub, std::string& value) {
  sub->add_option("--lm-head-dtype", value,
                  "Storage of the lm_head projection: f32 (default, exact), q8 (8-bit, CPU only: 3.8x fewer bytes per "
                  "decoded token, logits close to f32), q6 (6-bit, CPU only: 4.9x fewer, llama.cpp's Q6_K density) or "
                  "nf4 (4-bit: 7.7x fewer, logits change more); inference only, see docs/models.md");
}

inline model::LmHeadDtype lm_head_dtype(const std::string& value) {
  return model::parse_lm_head_dtype(value, "--lm-head-dtype");
}

}  // namespace graft::cli
