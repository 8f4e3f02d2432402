// fiber.cpp — the SIMT scheduler: one fiber per CUDA thread, blocks one after another, block and
// warp barriers, warp exchange, cp.async queues, dynamic shared memory with a poisoned red zone,
// faults and deadlock detection. Fibers switch with a few instructions on x86-64 (callee-saved
// registers + stack pointer + FP control words) and with ucontext elsewhere.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "internal.hpp"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace graft::simt {
namespace detail {
namespace {

#if defined(__x86_64__)
extern "C" void graft_simt_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.p2align 4
.globl graft_simt_switch
.type graft_simt_switch,@function
graft_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size graft_simt_switch,.-graft_simt_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kRedZone = 256;  // bytes after the dynamic shared memory, poisoned and checked

struct Sched {
  Block block;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<void*> stacks;  // mmap'd, guard page at the bottom
  const std::function<void()>* body = nullptr;
  Fiber* cur = nullptr;
  const char* kernel = "";
  bool faulted = false;
  std::string fault_msg;
  std::vector<unsigned char> dyn;
  size_t dyn_bytes = 0;
#if defined(__x86_64__)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
  std::vector<ucontext_t> ctx;
#endif
  ~Sched() {
    for (void* s : stacks) munmap(s, kStackBytes);
  }
};
thread_local Sched* t_sched = nullptr;
thread_local std::string t_last_fault;

Sched& sched() { return *t_sched; }

void yield_to_scheduler() {
  Sched& s = sched();
  Fiber* f = s.cur;
#if defined(__x86_64__)
  graft_simt_switch(&f->sp, s.sched_sp);
#else
  swapcontext(&s.ctx[static_cast<size_t>(f - s.fibers.data())], &s.sched_ctx);
#endif
}

void release_block_barrier_if_complete(Block& b) {
  if (b.arrived > 0 && b.arrived + b.exited == b.nthreads) {
    b.arrived = 0;
    ++b.gen;
  }
}

[[noreturn]] void fiber_main() {
  Sched& s = sched();
  (*s.body)();
  Fiber& f = *s.cur;
  f.state = Fiber::Done;
  Block& b = s.block;
  ++b.exited;
  Warp& w = s.warps[static_cast<size_t>(f.ts.warp)];
  w.exited |= 1u << f.ts.lane;
  if (w.arrived && (w.mask & (1u << f.ts.lane)))
    fault(fmt::format("lane {} returned while lanes {:#010x} wait for it at a warp collective", f.ts.lane, w.arrived));
  release_block_barrier_if_complete(b);
  yield_to_scheduler();
  std::abort();  // never resumed
}

#if !defined(__x86_64__)
void fiber_trampoline() { fiber_main(); }
#endif

void* stack_at(Sched& s, size_t i) {
  while (s.stacks.size() <= i) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "graft SIMT: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);  // guard page: overflow faults
    s.stacks.push_back(p);
  }
  return static_cast<unsigned char*>(s.stacks[i]) + kStackBytes;
}

void prepare(Sched& s, size_t i) {
  Fiber& f = s.fibers[i];
#if defined(__x86_64__)
  auto* top = static_cast<uint64_t*>(stack_at(s, i));  // 16-byte aligned
  uint64_t* sp = top;
  *--sp = 0;                                             // fake return address of fiber_main
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);      // `ret` target
  for (int r = 0; r < 6; ++r) *--sp = 0;                 // rbp rbx r12..r15
  *--sp = 0x037F00001F80ull;                             // mxcsr (low 32 bits), x87 control word
  f.sp = sp;
#else
  ucontext_t& c = s.ctx[i];
  getcontext(&c);
  c.uc_stack.ss_sp = static_cast<unsigned char*>(stack_at(s, i)) - kStackBytes + 4096;
  c.uc_stack.ss_size = kStackBytes - 4096;
  c.uc_link = nullptr;
  makecontext(&c, fiber_trampoline, 0);
#endif
}

std::string describe_waits(const Sched& s) {
  std::string out;
  int shown = 0;
  for (const Fiber& f : s.fibers) {
    if (f.state != Fiber::AtBlockBarrier && f.state != Fiber::AtWarpBarrier) continue;
    if (shown++ == 8) {
      out += " ...";
      break;
    }
    out += fmt::format(" thread {} at {};", f.ts.linear, f.state == Fiber::AtBlockBarrier ? "__syncthreads" : "a warp collective");
  }
  return out;
}

}  // namespace

Fiber& cur_fiber() { return *sched().cur; }
Warp& cur_warp() { return sched().warps[static_cast<size_t>(sched().cur->ts.warp)]; }

const Injection& injection() {
  static const Injection inj = [] {
    Injection j;
    const char* e = std::getenv("GRAFT_SIMT_INJECT");
    if (!e) return j;
    const std::string v(e);
    const auto eq = v.find('=');
    const std::string key = v.substr(0, eq), val = eq == std::string::npos ? "" : v.substr(eq + 1);
    if (key == "skip_syncthreads") j.skip_syncthreads = val;
    else if (key == "skip_cp_async_wait") j.skip_cp_async_wait = std::atoi(val.c_str());
    else if (key == "fragment_lane_xor") j.fragment_lane_xor = std::atoi(val.c_str());
    else if (key == "shrink_dynamic_smem") j.shrink_dynamic_smem = std::atoi(val.c_str());
    else {
      std::fprintf(stderr, "GRAFT_SIMT_INJECT=%s: unknown key '%s' (skip_syncthreads, skip_cp_async_wait, "
                           "fragment_lane_xor, shrink_dynamic_smem)\n", e, key.c_str());
      std::abort();
    }
    std::fprintf(stderr, "graft SIMT: injecting bug %s\n", e);
    return j;
  }();
  return inj;
}

std::string run_grid(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  Sched* prev = t_sched;  // launches from inside a kernel are not supported; keep the outer one intact
  if (prev && prev->cur) return "a kernel launched another kernel (dynamic parallelism is not emulated)";
  static thread_local Sched s;
  t_sched = &s;
  s.body = &body;
  s.kernel = name;
  s.faulted = false;
  s.fault_msg.clear();
  const int n = static_cast<int>(block.x * block.y * block.z);
  const int nw = (n + kWarpSize - 1) / kWarpSize;
  s.fibers.assign(static_cast<size_t>(n), Fiber{});
  s.warps.assign(static_cast<size_t>(nw), Warp{});
#if !defined(__x86_64__)
  s.ctx.resize(static_cast<size_t>(n));
#endif
  const size_t shrink = static_cast<size_t>(injection().shrink_dynamic_smem);
  s.dyn_bytes = smem > shrink ? smem - shrink : 0;
  s.dyn.assign(s.dyn_bytes + kRedZone + 128, 0xff);
  unsigned char* dyn = s.dyn.data() + (128 - reinterpret_cast<uintptr_t>(s.dyn.data()) % 128) % 128;
  Block& b = s.block;
  b.fibers = &s.fibers;
  b.warps = &s.warps;
  b.nthreads = n;
  b.dyn_smem = dyn;
  b.bs.block_dim = block;
  b.bs.grid_dim = grid;
  std::string result;
  for (unsigned bz = 0; bz < grid.z && result.empty(); ++bz)
    for (unsigned by = 0; by < grid.y && result.empty(); ++by)
      for (unsigned bx = 0; bx < grid.x && result.empty(); ++bx) {
        b.bs.block_idx = {bx, by, bz};
        b.arrived = b.exited = 0;
        b.gen = 0;
        std::memset(dyn, 0xff, s.dyn_bytes + kRedZone);
        for (int w = 0; w < nw; ++w) {
          Warp& wp = s.warps[static_cast<size_t>(w)];
          wp.exists = (w + 1) * kWarpSize <= n ? 0xffffffffu : (1u << (n - w * kWarpSize)) - 1u;
          wp.exited = wp.arrived = wp.mask = 0;
          wp.gen = 0;
        }
        for (int i = 0; i < n; ++i) {
          Fiber& f = s.fibers[static_cast<size_t>(i)];
          f.ts.tid = {static_cast<unsigned>(i) % block.x, static_cast<unsigned>(i) / block.x % block.y,
                      static_cast<unsigned>(i) / (block.x * block.y)};
          f.ts.linear = i;
          f.ts.lane = i % kWarpSize;
          f.ts.warp = i / kWarpSize;
          f.state = Fiber::Ready;
          f.wait_gen = 0;
          f.open.clear();
          f.groups.clear();
          f.waits = 0;
          prepare(s, static_cast<size_t>(i));
        }
        t_block = &b.bs;
        int done = 0;
        while (done < n && !s.faulted) {
          bool progressed = false;
          done = 0;
          for (int i = 0; i < n && !s.faulted; ++i) {
            Fiber& f = s.fibers[static_cast<size_t>(i)];
            if (f.state == Fiber::Done) {
              ++done;
              continue;
            }
            const bool runnable =
                f.state == Fiber::Ready || (f.state == Fiber::AtBlockBarrier && b.gen != f.wait_gen) ||
                (f.state == Fiber::AtWarpBarrier && s.warps[static_cast<size_t>(f.ts.warp)].gen != f.wait_gen);
            if (!runnable) continue;
            f.state = Fiber::Ready;
            s.cur = &f;
            t_cur = &f.ts;
#if defined(__x86_64__)
            graft_simt_switch(&s.sched_sp, f.sp);
#else
            swapcontext(&s.sched_ctx, &s.ctx[static_cast<size_t>(i)]);
#endif
            t_cur = nullptr;
            s.cur = nullptr;
            progressed = true;
            if (f.state == Fiber::Done) ++done;
          }
          if (!progressed && done < n && !s.faulted) {
            s.faulted = true;
            s.fault_msg = fmt::format("{}: block ({},{},{}): deadlock, no thread can proceed:{}", name, bx, by, bz,
                                      describe_waits(s));
          }
        }
        t_block = nullptr;
        if (s.faulted) {
          result = s.fault_msg;
          break;
        }
        for (size_t i = 0; i < kRedZone; ++i)
          if (dyn[s.dyn_bytes + i] != 0xff) {
            result = fmt::format("{}: block ({},{},{}): wrote byte {} past the end of its {} bytes of dynamic shared memory",
                                 name, bx, by, bz, i, s.dyn_bytes);
            break;
          }
      }
  s.body = nullptr;
  t_sched = prev;
  if (!result.empty()) t_last_fault = result;
  return result;
}

}  // namespace detail

using namespace detail;

[[noreturn]] void fault(const std::string& what) {
  Sched* s = t_sched;
  if (!s || !s->cur) {
    std::fprintf(stderr, "graft SIMT: %s (outside any kernel)\n", what.c_str());
    std::abort();
  }
  const Fiber& f = *s->cur;
  const uint3 bi = s->block.bs.block_idx;
  s->faulted = true;
  s->fault_msg = fmt::format("{}: block ({},{},{}) thread ({},{},{}): {}", s->kernel, bi.x, bi.y, bi.z, f.ts.tid.x,
                             f.ts.tid.y, f.ts.tid.z, what);
  s->cur->state = Fiber::Faulted;
  yield_to_scheduler();
  std::abort();  // a faulted fiber is never resumed
}

const std::string& last_fault() { return t_last_fault; }
void clear_fault() { t_last_fault.clear(); }

void syncthreads_at(const char* file, unsigned line) {
  Sched& s = sched();
  const auto& skip = injection().skip_syncthreads;
  if (!skip.empty()) {
    const std::string here = fmt::format("{}:{}", file, line);
    if (here.size() >= skip.size() && here.compare(here.size() - skip.size(), skip.size(), skip) == 0) return;
  }
  Block& b = s.block;
  Fiber& f = *s.cur;
  ++b.arrived;
  if (b.arrived + b.exited == b.nthreads) {
    b.arrived = 0;
    ++b.gen;
    return;
  }
  f.state = Fiber::AtBlockBarrier;
  f.wait_gen = b.gen;
  yield_to_scheduler();
}

void syncwarp(unsigned mask) {
  Sched& s = sched();
  Fiber& f = *s.cur;
  Warp& w = s.warps[static_cast<size_t>(f.ts.warp)];
  const unsigned bit = 1u << f.ts.lane;
  if (!(mask & bit)) fault(fmt::format("warp collective with mask {:#010x} called by lane {} outside the mask", mask, f.ts.lane));
  const unsigned need = mask & w.exists;
  if (need & w.exited)
    fault(fmt::format("warp collective with mask {:#010x} names lanes {:#010x} that have returned", mask, need & w.exited));
  if (w.arrived == 0) w.mask = need;
  else if (w.mask != need)
    fault(fmt::format("lanes of warp {} disagree on the collective's mask ({:#010x} vs {:#010x})", f.ts.warp, w.mask, need));
  w.arrived |= bit;
  if (w.arrived == w.mask) {
    w.arrived = 0;
    ++w.gen;
    return;
  }
  f.state = Fiber::AtWarpBarrier;
  f.wait_gen = w.gen;
  yield_to_scheduler();
}

uint64_t warp_exchange(unsigned mask, uint64_t v, int src) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  w.slot[lane][0] = v;
  syncwarp(mask);
  uint64_t r = v;
  if (src >= 0 && src < kWarpSize && src != lane) {
    if (!(mask & w.exists & (1u << src)))
      fault(fmt::format("shuffle reads lane {}, which is not in the mask {:#010x} (or not in the block)", src, mask));
    r = w.slot[src][0];
  }
  syncwarp(mask);
  return r;
}

unsigned warp_ballot(unsigned mask, bool pred) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  w.slot[lane][0] = pred;
  syncwarp(mask);
  unsigned r = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if ((w.mask >> l) & 1u && w.slot[l][0]) r |= 1u << l;
  syncwarp(mask);
  return r;
}

unsigned warp_match_any(unsigned mask, uint64_t v) {
  Warp& w = cur_warp();
  const int lane = cur_fiber().ts.lane;
  w.slot[lane][0] = v;
  syncwarp(mask);
  unsigned r = 0;
  for (int l = 0; l < kWarpSize; ++l)
    if ((w.mask >> l) & 1u && w.slot[l][0] == v) r |= 1u << l;
  syncwarp(mask);
  return r;
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) fault(fmt::format("cp.async of {} bytes (4, 8 or 16)", bytes));
  if (src_bytes < 0 || src_bytes > bytes) fault(fmt::format("cp.async src-size {} outside [0, {}]", src_bytes, bytes));
  if (reinterpret_cast<uintptr_t>(dst) % static_cast<unsigned>(bytes))
    fault(fmt::format("cp.async destination {} not {}-byte aligned", dst, bytes));
  if (src_bytes && reinterpret_cast<uintptr_t>(src) % static_cast<unsigned>(bytes))
    fault(fmt::format("cp.async source {} not {}-byte aligned", src, bytes));
  cur_fiber().open.push_back({dst, src, bytes, src_bytes});
}

void cp_async_commit() {
  Fiber& f = cur_fiber();
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}

void cp_async_wait(int n) {
  Fiber& f = cur_fiber();
  ++f.waits;
  if (injection().skip_cp_async_wait == f.waits) return;
  while (static_cast<int>(f.groups.size()) > n) {
    for (const AsyncCopy& c : f.groups.front()) {
      if (c.src_bytes) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
      std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
    }
    f.groups.erase(f.groups.begin());
  }
}

void* dynamic_shared_base() {
  if (!t_sched || !t_sched->cur) fault("extern __shared__ memory used outside a kernel");
  return t_sched->block.dyn_smem;
}

}  // namespace graft::simt
