// host_f32 (backend.hpp).
#include "graft/backend/backend.hpp"

namespace graft {

Tensor host_f32(Backend& be, const Tensor& t) {
  const Tensor h = t.device().is_cpu() ? t : be.to_host(t);
  return h.dtype() == DType::F32 ? h.contiguous() : h.to(DType::F32);
}

}  // namespace graft
