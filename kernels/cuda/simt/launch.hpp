// launch.hpp — SIMT build only: what GRAFT_LAUNCH (kernels/cuda/launch.cuh) expands to. The kernel's
// arguments are copied (as CUDA does) and the launch is checked against the device limits, then
// run on the host in stream order (or recorded when the stream is being captured into a graph).
#pragma once

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "include/cuda_runtime.h"

namespace graft::simt {

void enqueue_launch(const char* name, const void* func, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    std::function<void()> body);

template <class... P>
struct Launcher {
  const char* name;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  void (*func)(P...);
  template <class... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    std::tuple<std::decay_t<P>...> args(static_cast<std::decay_t<P>>(std::forward<A>(a))...);
    auto f = func;
    enqueue_launch(name, reinterpret_cast<const void*>(func), grid, block, smem, stream,
                   [f, args]() { std::apply(f, args); });
  }
};

template <class... P>
Launcher<P...> launcher(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, void (*func)(P...)) {
  return {name, grid, block, smem, stream, func};
}

}  // namespace graft::simt
