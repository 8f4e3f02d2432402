// Fixture for TrainBackendNeutral.CheckCatchesCpuKernels: must be rejected by check_backend_neutral.cmake.
#include "graft/cpu/ops.hpp"
void f(graft::Tensor& y) { graft::cpu::fill(y, 0.0f); }
