// The CPU backend: graft::Backend implemented with the fp32 reference ops of kernels/cpu.
#pragma once

#include <memory>

#include "graft/backend/backend.hpp"

namespace graft::cpu {

std::unique_ptr<Backend> make_backend();

// Row-grouped LoRA on the CPU: for each slot s, rows r with row_slot[r] == s get
// y[r] += scale_s · (x[r]·A_sᵀ)·B_sᵀ.  x [T, in], y [T, out] (+=)
void lora_rows_acc(const Tensor& x, const LoraBatch& lora, Tensor& y);

}  // namespace graft::cpu
