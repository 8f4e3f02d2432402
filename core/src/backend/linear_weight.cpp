#include "graft/backend/backend.hpp"

namespace graft {

size_t LinearWeight::bytes() const {
  size_t b = nf4 ? nf4->bytes() : q8 ? q8->bytes() : q6 ? q6->bytes() : (dense.defined() ? dense.nbytes() : 0);
  if (bias.defined()) b += bias.nbytes();
  return b;
}

}  // namespace graft
