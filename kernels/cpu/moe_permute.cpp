// CPU reference: MoE permute (token-major -> expert-major gather) and unpermute (weighted combine
// over the k slots), forward and backward. Formulas and layouts: graft/cpu/moe_ref.hpp.
#include <algorithm>

#include "graft/cpu/moe_ref.hpp"
#include "graft/error.hpp"

namespace graft::cpu {
namespace {
void check_plan(const ops::MoePermutation& plan, int64_t T, int k) {
  GRAFT_CHECK(static_cast<int64_t>(plan.order.size()) == T * k, "moe_permute: plan has {} rows for {} tokens x top-{}",
              plan.order.size(), T, k);
}
}  // namespace

std::vector<int32_t> moe_inverse_order(const ops::MoePermutation& plan) {
  std::vector<int32_t> pos(plan.order.size());
  for (size_t p = 0; p < plan.order.size(); ++p) pos[static_cast<size_t>(plan.order[p])] = static_cast<int32_t>(p);
  return pos;
}

template <class S>
void moe_permute_fwd(const S* x, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* scale, S* xp) {
  check_plan(plan, T, k);
  for (size_t p = 0; p < plan.order.size(); ++p) {
    const int64_t f = plan.order[p], t = f / k;
    const S c = scale ? scale[f] : S(1);
    for (int64_t h = 0; h < H; ++h) xp[static_cast<int64_t>(p) * H + h] = c * x[t * H + h];
  }
}

template <class S>
void moe_permute_bwd(const S* x, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* scale,
                     const S* dxp, S* dx, S* dscale) {
  check_plan(plan, T, k);
  const std::vector<int32_t> pos = moe_inverse_order(plan);
  for (int64_t t = 0; t < T; ++t) {
    S* d = dx + t * H;
    std::fill(d, d + H, S(0));
    for (int j = 0; j < k; ++j) {
      const int64_t f = t * k + j, p = pos[static_cast<size_t>(f)];
      const S c = scale ? scale[f] : S(1);
      S dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        d[h] += c * dxp[p * H + h];
        dot += x[t * H + h] * dxp[p * H + h];
      }
      if (dscale) dscale[f] = dot;
    }
  }
}

template <class S>
void moe_unpermute_fwd(const S* yp, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* w, S* out) {
  check_plan(plan, T, k);
  const std::vector<int32_t> pos = moe_inverse_order(plan);
  for (int64_t t = 0; t < T; ++t) {
    S* o = out + t * H;
    std::fill(o, o + H, S(0));
    for (int j = 0; j < k; ++j) {
      const int64_t f = t * k + j, p = pos[static_cast<size_t>(f)];
      const S c = w ? w[f] : S(1);
      for (int64_t h = 0; h < H; ++h) o[h] += c * yp[p * H + h];
    }
  }
}

template <class S>
void moe_unpermute_bwd(const S* yp, int64_t T, int64_t H, int k, const ops::MoePermutation& plan, const S* w,
                       const S* dout, S* dyp, S* dw) {
  check_plan(plan, T, k);
  const std::vector<int32_t> pos = moe_inverse_order(plan);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      const int64_t f = t * k + j, p = pos[static_cast<size_t>(f)];
      const S c = w ? w[f] : S(1);
      S dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        dyp[p * H + h] = c * dout[t * H + h];
        dot += yp[p * H + h] * dout[t * H + h];
      }
      if (dw) dw[f] = dot;
    }
  }
}

#define GRAFT_MOE_PERMUTE_INSTANTIATE(S)                                                                           \
  template void moe_permute_fwd<S>(const S*, int64_t, int64_t, int, const ops::MoePermutation&, const S*, S*);      \
  template void moe_permute_bwd<S>(const S*, int64_t, int64_t, int, const ops::MoePermutation&, const S*, const S*, \
                                   S*, S*);                                                                          \
  template void moe_unpermute_fwd<S>(const S*, int64_t, int64_t, int, const ops::MoePermutation&, const S*, S*);    \
  template void moe_unpermute_bwd<S>(const S*, int64_t, int64_t, int, const ops::MoePermutation&, const S*,         \
                                     const S*, S*, S*);
GRAFT_MOE_PERMUTE_INSTANTIATE(float)
GRAFT_MOE_PERMUTE_INSTANTIATE(double)
#undef GRAFT_MOE_PERMUTE_INSTANTIATE

}  // namespace graft::cpu
