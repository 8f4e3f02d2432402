// graft's CPU thread pool (graft/cpu/thread_pool.hpp has the contract).
//
// One job at a time. The caller writes the job's parameters, then for every queue (one block of [0, n) per thread for
// Static, one queue for Dynamic) a claim word = job sequence (32 bits) | sub-range count (16) | next sub-range (16),
// then publishes the job word and bumps the futex word the workers wait on. Any thread claims sub-range `next` of a
// queue by a compare-and-swap that succeeds only while the word still carries the job's sequence and next < count, so
// a claim that succeeds is a sub-range of the live job (the caller cannot return before that sub-range is counted
// done), and a worker that wakes late, or sees a later job, can never run a stale or a foreign sub-range.
#include "graft/cpu/thread_pool.hpp"

#include <linux/futex.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <Eigen/Core>

#include "graft/error.hpp"

namespace graft::cpu {
namespace {

constexpr int kMaxThreads = 512;          // threads in one job (participants); more are not used
constexpr uint32_t kMaxSubRanges = 65535;  // per queue: the claim word's 16-bit count

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

int read_spin_us() {
  const char* v = std::getenv("GRAFT_CPU_SPIN_US");
  if (v == nullptr || *v == '\0') return kDefaultSpinUs;
  char* end = nullptr;
  errno = 0;
  const long us = std::strtol(v, &end, 10);
  GRAFT_CHECK(errno == 0 && end != v && *end == '\0' && us >= 0 && us <= 1000000,
              "GRAFT_CPU_SPIN_US='{}' is not a whole number of microseconds in [0, 1000000] (how long an idle CPU "
              "worker thread spins before it sleeps); unset it for the default {} or set e.g. GRAFT_CPU_SPIN_US=0",
              v, kDefaultSpinUs);
  return static_cast<int>(us);
}

// Spins while pred() holds, up to `us` microseconds; returns whether pred() still holds.
template <class Pred>
bool spin_while(int us, const Pred& pred) {
  if (us <= 0) return pred();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (!pred()) return false;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= until) return pred();
  }
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Notices that another process shares this thread's core: the thread was preempted (getrusage(RUSAGE_THREAD)
// .ru_nivcsw, involuntary context switches) at least kContendedSwitches times in a window of at least kProbeWindowNs,
// at a rate of at least kContendedSwitches per kProbeWindowNs. Measured on the 2-core Zen 4 VM (2026-12-07,
// bench_model MoE decode, 2 threads, /proc/PID/task/*/status): ~10 a second per thread on idle cores (kernel threads,
// in bursts of up to ~10 at one per 4 ms tick), ~400 a second with a busy loop beside the process.
class ContentionProbe {
 public:
  static constexpr int64_t kProbeWindowNs = 20'000'000;
  static constexpr long kContendedSwitches = 3;
  // Returns true when the window that this call closed found the thread contended. A window that ran long (the
  // thread slept, or ran serial code between loops) counts at the same rate: 3 per 20 ms.
  bool poll(int64_t now) {
    const int64_t elapsed = now - window_start_;
    if (elapsed < kProbeWindowNs) return false;
    window_start_ = now;
    rusage u{};
    if (getrusage(RUSAGE_THREAD, &u) != 0) return false;
    const long switches = u.ru_nivcsw, last = last_;
    last_ = switches;
    if (last < 0) return false;
    const int64_t delta = switches - last;
    return delta >= kContendedSwitches && delta * kProbeWindowNs >= kContendedSwitches * elapsed;
  }

 private:
  int64_t window_start_ = 0;
  long last_ = -1;
};

struct alignas(64) ClaimWord {
  std::atomic<uint64_t> word{0};
};

uint64_t claim_word(uint32_t seq, uint32_t count, uint32_t next) {
  return uint64_t{seq} << 32 | uint64_t{count} << 16 | next;
}

class Pool {
 public:
  explicit Pool(int spin_us) : spin_us_(spin_us), claims_(new ClaimWord[kMaxThreads]) {}

  int spin_us() const { return spin_us_; }

  bool run(int64_t n, int threads, Schedule schedule, RangeFn range, void* ctx) {
    if (forked_child.load(std::memory_order_relaxed)) return false;
    threads = std::min(threads, kMaxThreads);
    if (threads < 2 || n < 2) return false;
    std::unique_lock<std::mutex> lock(submit_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    start_workers(threads - 1);
    const int64_t now = now_ns();
    if (caller_probe_.poll(now)) passive_until_ns_.store(now + kPassiveNs, std::memory_order_relaxed);
    const int spin = spin_now(now);

    // The job. Written before the claim words (release) that every claim synchronizes with.
    range_ = range;
    ctx_ = ctx;
    n_ = n;
    queues_ = schedule == Schedule::Static ? static_cast<int>(std::min<int64_t>(threads, n)) : 1;
    split_ = schedule == Schedule::Static ? kStaticSplits : static_cast<int>(std::min<int64_t>(n, kMaxSubRanges));
    abort_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    uint32_t total = 0;
    const uint32_t seq = ++seq_;
    for (int q = 0; q < queues_; ++q) {
      const uint32_t count = sub_ranges(q);
      total += count;
      claims_[q].word.store(claim_word(seq, count, 0), std::memory_order_release);
    }
    job_.store(uint64_t{seq} << 32 | uint64_t(queues_) << 16 | uint64_t(threads), std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&wake_);

    {
      const OneThreadScope one;  // inside the job every thread runs nested loops (and Eigen) by itself
      work(seq, queues_, 0);
    }
    // Wait for the sub-ranges that workers have claimed and not finished.
    if (spin_while(spin, [&] { return done_.load(std::memory_order_acquire) != total; })) {
      for (;;) {
        const uint32_t d = done_.load(std::memory_order_seq_cst);
        if (d == total) break;
        caller_sleeping_.store(true, std::memory_order_seq_cst);
        if (done_.load(std::memory_order_seq_cst) != total) futex_wait(&done_, d);
        caller_sleeping_.store(false, std::memory_order_relaxed);
      }
    }
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
    return true;
  }

  static inline std::atomic<bool> forked_child{false};

 private:
  // Sub-ranges of queue q of the current job.
  uint32_t sub_ranges(int q) const {
    const int64_t b0 = block_begin(q), len = block_begin(q + 1) - b0;
    return static_cast<uint32_t>(std::min<int64_t>(len, split_));
  }
  int64_t block_begin(int q) const { return split_begin(n_, queues_, q); }
  // Start of part i of [0, len) cut in `parts` contiguous parts whose sizes differ by at most 1 (larger ones first),
  // as OpenMP's static schedule cuts a loop.
  static int64_t split_begin(int64_t len, int64_t parts, int64_t i) {
    return i * (len / parts) + std::min(i, len % parts);
  }

  // Claims and runs sub-ranges of job `seq` (with `queues` queues): queue `first`, then the others in turn.
  void work(uint32_t seq, int queues, int first) {
    for (int i = 0; i < queues; ++i) {
      auto& w = claims_[(first + i) % queues].word;
      uint64_t v = w.load(std::memory_order_acquire);
      for (;;) {
        if (static_cast<uint32_t>(v >> 32) != seq) return;  // the job is over
        const uint32_t count = static_cast<uint32_t>(v >> 16) & 0xFFFF, next = static_cast<uint32_t>(v) & 0xFFFF;
        if (next >= count) break;  // this queue is taken: the next one
        if (!w.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
        run_sub_range((first + i) % queues, next, count);  // the job's fields are safe to read from here
        v = w.load(std::memory_order_acquire);
      }
    }
  }

  void run_sub_range(int q, uint32_t j, uint32_t count) {
    const int64_t b0 = block_begin(q), len = block_begin(q + 1) - b0;
    const int64_t i0 = b0 + split_begin(len, count, j), i1 = b0 + split_begin(len, count, j + 1);
    if (!abort_.load(std::memory_order_relaxed)) {
      try {
        range_(ctx_, i0, i1);
      } catch (...) {
        std::lock_guard<std::mutex> g(error_mu_);
        if (!error_) error_ = std::current_exception();
        abort_.store(true, std::memory_order_relaxed);
      }
    }
    done_.fetch_add(1, std::memory_order_seq_cst);
    if (caller_sleeping_.load(std::memory_order_seq_cst)) futex_wake_all(&done_);
  }

  // Grows the pool to `want` workers. If the system refuses a thread, the pool goes on with those it has (a piece
  // no worker claims is run by the caller) and tries again on a later job.
  void start_workers(int want) {
    std::lock_guard<std::mutex> g(grow_);
    try {
      for (; workers_ < want; ++workers_) std::thread([this, idx = workers_ + 1] { worker(idx); }).detach();
    } catch (const std::system_error&) {
    }
  }

  void worker(int idx) {
    char name[16];
    std::snprintf(name, sizeof(name), "graft-cpu-%d", idx);
    pthread_setname_np(pthread_self(), name);
    omp_set_num_threads(1);  // nested loops and Eigen inside a job stay on this thread
    uint32_t seen = wake_.load(std::memory_order_acquire);
    ContentionProbe probe;
    for (;;) {
      const int64_t now = now_ns();
      if (probe.poll(now)) passive_until_ns_.store(now + kPassiveNs, std::memory_order_relaxed);
      if (spin_while(spin_now(now), [&] { return wake_.load(std::memory_order_acquire) == seen; })) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        while (wake_.load(std::memory_order_seq_cst) == seen) futex_wait(&wake_, seen);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
      seen = wake_.load(std::memory_order_acquire);
      const uint64_t job = job_.load(std::memory_order_acquire);
      const int participants = static_cast<int>(job & 0xFFFF), queues = static_cast<int>(job >> 16 & 0xFFFF);
      if (idx < participants) work(static_cast<uint32_t>(job >> 32), queues, idx % queues);
    }
  }

  // How long to spin now: spin_us_, or 0 (sleep at once) while a thread of the pool was found sharing its core in the
  // last kPassiveNs. A spinning worker on a shared core uses up its share of that core and is then preempted in the
  // middle of a sub-range, which the caller must wait for; a worker that sleeps is woken ahead of the other process.
  int spin_now(int64_t now) const {
    return now < passive_until_ns_.load(std::memory_order_relaxed) ? 0 : spin_us_;
  }
  static constexpr int64_t kPassiveNs = 100'000'000;

  const int spin_us_;
  std::unique_ptr<ClaimWord[]> claims_;
  ContentionProbe caller_probe_;  // guarded by submit_
  std::atomic<int64_t> passive_until_ns_{0};
  std::mutex submit_, grow_, error_mu_;
  int workers_ = 0;
  uint32_t seq_ = 0;

  // The job (see the file comment for who may read what when).
  RangeFn range_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int queues_ = 1;
  int split_ = 1;
  std::exception_ptr error_;
  std::atomic<bool> abort_{false};

  alignas(64) std::atomic<uint64_t> job_{0};      // seq << 32 | queues << 16 | participants
  alignas(64) std::atomic<uint32_t> wake_{0};     // futex: bumped once per job
  alignas(64) std::atomic<int> sleepers_{0};      // workers asleep on wake_
  alignas(64) std::atomic<uint32_t> done_{0};     // futex: sub-ranges finished
  std::atomic<bool> caller_sleeping_{false};
};

// Eigen's own GEMM threading stays off in programs that link the CPU kernels: large products go through the pool
// (parallel_gemm.hpp) and small ones are cheaper on one thread than a fork of an OpenMP team. Left on, Eigen started
// an OpenMP team for every rank-8 LoRA product of a training step, between the pool's loops, and the two sets of
// threads handed the cores back and forth (2 threads, small Qwen3-MoE training step T = 128: 134-158 vs 119-125 ms).
[[maybe_unused]] const bool eigen_single_threaded = [] {
  Eigen::setNbThreads(1);
  return true;
}();

Pool& pool() {
  // Never destroyed: detached workers may still be waiting on it while the process exits.
  static Pool* p = [] {
    auto* made = new Pool(read_spin_us());
    pthread_atfork(nullptr, nullptr, [] { Pool::forked_child.store(true, std::memory_order_relaxed); });
    return made;
  }();
  return *p;
}

}  // namespace

bool pool_run(int64_t n, int threads, Schedule schedule, RangeFn range, void* ctx) {
  return pool().run(n, threads, schedule, range, ctx);
}

int pool_spin_us() { return pool().spin_us(); }

}  // namespace graft::cpu
