// with_static_t(T, f): calls f(std::integral_constant<int, T>) for T in 1..16 and f(std::integral_constant<int, 0>)
// (run-time T) otherwise, so the decode kernels of nf4_gemv.cpp and q8_gemv.cpp keep one accumulator register per
// row of x with T known at compile time, from one dispatch instead of a 16-case switch per kernel.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace graft::cpu {

namespace detail {
template <class F, int... Ns>
void with_static_t(int64_t T, F& f, std::integer_sequence<int, Ns...>) {
  const bool done = ((T == Ns + 1 ? (f(std::integral_constant<int, Ns + 1>{}), true) : false) || ...);
  if (!done) f(std::integral_constant<int, 0>{});
}
}  // namespace detail

template <class F>
void with_static_t(int64_t T, F&& f) {
  detail::with_static_t(T, f, std::make_integer_sequence<int, 16>{});
}

}  // namespace graft::cpu
