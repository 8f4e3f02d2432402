// graft's default for how long an idle OpenMP thread spins before it sleeps: GOMP_SPINCOUNT=1000 (on the order of a
// microsecond of spinning, then a futex wait), unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
//
// Why: libgomp's own default spins 300,000 times at every barrier and at the end of every parallel loop. When another
// process holds one of the cores, the waiting thread keeps its core busy while the thread it waits for shares the
// other core with that process, and a 2-thread run falls far below a 1-thread run (Zen 4, 2 cores, one core held by a
// busy loop, small Qwen3-MoE NF4 + Q8 head: 128-token prefill 97-122 ms vs 64 ms at 1 thread, decode 71-116 vs
// 205-215 tok/s). With 1000 spins: 70-72 ms and 155 tok/s there, and on an idle machine within 5% (prefill) and 0-14%
// (decode) of libgomp's default (docs/performance.md, "Another process on a core").
//
// How: libgomp reads its environment once, in its shared-library constructor, before the program's own constructors
// run; no API changes it later, and a variable set from the executable's .preinit_array did not reach the program
// (Debian 12, glibc 2.36: test_omp_wait_default failed that way). So the executable sets the variable in a
// constructor and, once, re-executes itself (the file /proc/self/exe links to, same arguments, same process id) so
// that libgomp starts with it. If the re-execution fails, the program goes on with libgomp's default. Only executables link this file
// (an OBJECT library: the `graft` CLI and the benchmarks), never the libraries.
#include <unistd.h>

#include <cstdlib>

namespace {

void set_omp_wait_default(int /*argc*/, char** argv, char** /*envp*/) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  // The program's own path, not /proc/self/exe itself: the kernel names a process after the file it executes, and
  // `graft` must stay `graft` to ps, pkill and the tests that look for it.
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0 || argv == nullptr || setenv("GOMP_SPINCOUNT", "1000", 0) != 0) return;
  self[n] = '\0';
  execv(self, argv);  // returns only on failure: carry on with libgomp's default
}

}  // namespace

// glibc calls .init_array functions with (argc, argv, envp).
__attribute__((section(".init_array"), used)) void (*const graft_omp_wait_default_init)(int, char**, char**) =
    set_omp_wait_default;
