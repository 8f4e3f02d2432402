// Default bodies of the Backend's training-step ops (backend.hpp, "training step"): a backend that
// does not implement one names it in a graft::Error instead of computing anything.
#include "graft/backend/backend.hpp"
#include "graft/error.hpp"

namespace graft {

void Backend::missing(const char* op) const {
  GRAFT_FAIL("run the training step on device 'cpu' until this backend implements it",
             "backend '{}' has no {} (an op of the training step)", name(), op);
}

void Backend::fill(Tensor&, float) { missing("fill"); }
void Backend::mul(const Tensor&, const Tensor&, Tensor&) { missing("mul"); }
void Backend::lora_acc(const Tensor&, const LoraFactors&, Tensor&) { missing("lora_acc"); }
void Backend::dropout_mask(uint64_t, std::span<const int32_t>, double, Tensor&) { missing("dropout_mask"); }
void Backend::gather_rows(const Tensor&, std::span<const int32_t>, const Tensor&, Tensor&) { missing("gather_rows"); }
void Backend::scatter_add_rows(const Tensor&, std::span<const int32_t>, const Tensor&, Tensor&) {
  missing("scatter_add_rows");
}
void Backend::rows_dot(const Tensor&, std::span<const int32_t>, const Tensor&, Tensor&) { missing("rows_dot"); }
void Backend::copy_cols(const Tensor&, int64_t, int64_t, Tensor&, int64_t) { missing("copy_cols"); }
void Backend::set_rows(const Tensor&, std::span<const int32_t>, Tensor&) { missing("set_rows"); }
void Backend::sigmoid(const Tensor&, Tensor&) { missing("sigmoid"); }
void Backend::sigmoid_bwd(const Tensor&, const Tensor&, Tensor&) { missing("sigmoid_bwd"); }
void Backend::moe_route_bwd(const Tensor&, const ops::RouterParams&, const Tensor&, const Tensor&, Tensor&) {
  missing("moe_route_bwd");
}
ops::MoePermutation Backend::moe_permute_plan(const Tensor&, int) { missing("moe_permute_plan"); }

}  // namespace graft
