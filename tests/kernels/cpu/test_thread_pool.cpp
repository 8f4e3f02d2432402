// graft's CPU thread pool (graft/cpu/thread_pool.hpp) and parallel_for over it: every index runs exactly once for
// every size, schedule and thread count (also more threads than cores); Static keeps each thread's contiguous block
// in at most kStaticSplits pieces; Dynamic hands out single indices; an exception reaches the caller and the pool
// goes on; nested loops and Eigen run on the thread inside a job; concurrent callers each get a whole loop; thousands
// of tiny jobs in a row never lose a wake-up; a malformed GRAFT_CPU_SPIN_US is reported by name; parallel_gemm
// (column blocks on the pool) equals one Eigen product up to rounding.
#include <Eigen/Core>
#include <gtest/gtest.h>
#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../../kernels/cpu/parallel_for.hpp"
#include "../../../kernels/cpu/parallel_gemm.hpp"
#include "../../common/run_graft.hpp"
#include "graft/cpu/thread_pool.hpp"

namespace {

using graft::cpu::parallel_for;
using graft::cpu::pool_run;
using graft::cpu::Schedule;

// Sub-ranges a pool job called, in any order.
struct Recorder {
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> ranges;
  static void call(void* ctx, int64_t i0, int64_t i1) {
    auto* r = static_cast<Recorder*>(ctx);
    std::lock_guard<std::mutex> g(r->mu);
    r->ranges.emplace_back(i0, i1);
  }
};

// Restores this thread's OpenMP thread count.
struct Threads {
  int saved = omp_get_max_threads();
  explicit Threads(int n) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved); }
};

bool on_pool_worker() {
  std::array<char, 16> name{};
  pthread_getname_np(pthread_self(), name.data(), name.size());
  return std::string(name.data()).rfind("graft-cpu-", 0) == 0;
}

}  // namespace

TEST(ThreadPool, EveryIndexExactlyOnce) {
  for (Schedule s : {Schedule::Static, Schedule::Dynamic})
    for (int threads : {2, 3, 4, 8})
      for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, int64_t{7}, int64_t{8},
                        int64_t{9}, int64_t{31}, int64_t{1000}, int64_t{100003}}) {
        SCOPED_TRACE("schedule " + std::to_string(int(s)) + " threads " + std::to_string(threads) + " n " +
                     std::to_string(n));
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        Threads t(threads);
        parallel_for(n, true, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); }, s);
        int64_t wrong = 0;
        for (auto& h : hits) wrong += h.load() != 1;
        EXPECT_EQ(wrong, 0);
      }
}

TEST(ThreadPool, StaticBlocksSplitInAtMostFourPieces) {
  for (int threads : {2, 3, 4})
    for (int64_t n : {int64_t{2}, int64_t{3}, int64_t{10}, int64_t{17}, int64_t{4096}}) {
      SCOPED_TRACE("threads " + std::to_string(threads) + " n " + std::to_string(n));
      Recorder rec;
      ASSERT_TRUE(pool_run(n, threads, Schedule::Static, &Recorder::call, &rec));
      const int64_t queues = std::min<int64_t>(threads, n);
      size_t expected_pieces = 0;
      for (int64_t q = 0; q < queues; ++q) {
        // OpenMP's static schedule: block q is [q * (n / queues) + min(q, n % queues), ...), sizes differ by <= 1.
        const int64_t b0 = q * (n / queues) + std::min(q, n % queues), b1 = b0 + n / queues + (q < n % queues);
        std::vector<std::pair<int64_t, int64_t>> mine;
        for (auto r : rec.ranges)
          if (r.first >= b0 && r.first < b1) {
            EXPECT_LE(r.second, b1) << "a piece crosses the end of block " << q;
            mine.push_back(r);
          }
        std::sort(mine.begin(), mine.end());
        int64_t at = b0;
        for (auto r : mine) {
          EXPECT_EQ(r.first, at);
          EXPECT_GT(r.second, r.first);
          at = r.second;
        }
        EXPECT_EQ(at, b1);
        expected_pieces += static_cast<size_t>(std::min<int64_t>(b1 - b0, graft::cpu::kStaticSplits));
      }
      EXPECT_EQ(rec.ranges.size(), expected_pieces);
    }
}

TEST(ThreadPool, DynamicHandsOutSingleIndices) {
  Recorder rec;
  ASSERT_TRUE(pool_run(777, 2, Schedule::Dynamic, &Recorder::call, &rec));
  ASSERT_EQ(rec.ranges.size(), 777u);
  for (auto r : rec.ranges) EXPECT_EQ(r.second, r.first + 1);
  Recorder big;  // beyond 65,535 sub-ranges: runs of ceil(n / 65,535) or floor, covering [0, n)
  ASSERT_TRUE(pool_run(200000, 2, Schedule::Dynamic, &Recorder::call, &big));
  EXPECT_EQ(big.ranges.size(), 65535u);
  int64_t total = 0;
  for (auto r : big.ranges) {
    EXPECT_TRUE(r.second - r.first == 3 || r.second - r.first == 4) << r.first << ".." << r.second;
    total += r.second - r.first;
  }
  EXPECT_EQ(total, 200000);
}

TEST(ThreadPool, DeclinesWhatItCannotTake) {
  Recorder rec;
  EXPECT_FALSE(pool_run(100, 1, Schedule::Static, &Recorder::call, &rec));  // one thread: the caller's own loop
  EXPECT_FALSE(pool_run(1, 4, Schedule::Static, &Recorder::call, &rec));    // one index
  EXPECT_FALSE(pool_run(0, 4, Schedule::Dynamic, &Recorder::call, &rec));
  EXPECT_TRUE(rec.ranges.empty());
}

TEST(ThreadPool, ExceptionReachesTheCallerAndThePoolGoesOn) {
  Threads t(2);
  for (Schedule s : {Schedule::Static, Schedule::Dynamic}) {
    std::atomic<int> ran{0};
    try {
      parallel_for(64, true, [&](int64_t i) {
        ran.fetch_add(1);
        if (i == 37) throw std::runtime_error("index 37 failed");
      }, s);
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "index 37 failed");
    }
    EXPECT_GE(ran.load(), 1);
    std::vector<std::atomic<int>> hits(100);
    parallel_for(100, true, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); }, s);
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
}

TEST(ThreadPool, NestedLoopsRunOnTheThreadInsideAJob) {
  Threads t(2);
  std::atomic<int> inner{0}, max_threads_seen{0};
  parallel_for(16, true, [&](int64_t) {
    max_threads_seen.store(std::max(max_threads_seen.load(), omp_get_max_threads()));
    parallel_for(8, true, [&](int64_t) { inner.fetch_add(1); });
  });
  EXPECT_EQ(inner.load(), 16 * 8);
  EXPECT_EQ(max_threads_seen.load(), 1) << "Eigen and nested loops must see one thread inside a job";
  EXPECT_EQ(omp_get_max_threads(), 2) << "the caller's thread count is restored after the job";
}

TEST(ThreadPool, WorkersTakePart) {
  // 64 indices of 200 us each: the caller alone would need 12.8 ms, time enough for a worker to wake.
  Threads t(2);
  std::atomic<int> on_worker{0};
  for (int job = 0; job < 10 && on_worker.load() == 0; ++job)
    parallel_for(64, true, [&](int64_t) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (on_pool_worker()) on_worker.fetch_add(1);
    });
  EXPECT_GT(on_worker.load(), 0) << "no index ran on a pool worker (graft-cpu-N)";
}

TEST(ThreadPool, ConcurrentCallersEachGetAWholeLoop) {
  std::vector<std::thread> callers;
  std::atomic<int64_t> wrong{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      omp_set_num_threads(2 + c % 2);
      for (int job = 0; job < 200; ++job) {
        const int64_t n = 1 + (job * 37 + c) % 300;
        std::vector<int> hits(static_cast<size_t>(n));  // each index written by one thread only
        parallel_for(n, true, [&](int64_t i) { hits[static_cast<size_t>(i)] += 1; },
                     job % 2 ? Schedule::Dynamic : Schedule::Static);
        for (int h : hits) wrong += h != 1;
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ThreadPool, ManyTinyJobsInARow) {
  // Lost wake-ups or a stale worker running a later job's piece would hang here or miscount.
  Threads t(3);
  std::vector<std::atomic<int>> hits(6);
  for (int job = 0; job < 20000; ++job) {
    const int64_t n = 2 + job % 5;
    parallel_for(n, true, [&](int64_t i) { hits[static_cast<size_t>(i)].fetch_add(1); },
                 job % 3 ? Schedule::Static : Schedule::Dynamic);
  }
  int64_t total = 0;
  for (auto& h : hits) total += h.load();
  EXPECT_EQ(total, 20000 * 2 + 4000 * (0 + 1 + 2 + 3 + 4));
}

TEST(ParallelGemm, MatchesOneEigenProduct) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  struct Case {
    int64_t M, K, N;
  };
  // Column counts below, at and above one block per thread, not multiples of 16; a product too small for the pool.
  for (const Case c : {Case{128, 512, 1536}, Case{65, 300, 17}, Case{200, 64, 1000}, Case{3, 5, 7}, Case{1, 1024, 33}})
    for (int threads : {1, 2, 3})
      for (bool acc : {false, true}) {
        SCOPED_TRACE(::testing::Message() << c.M << "x" << c.K << "x" << c.N << " threads " << threads << " acc " << acc);
        Threads t(threads);
        const Mat A = Mat::Random(c.M, c.K), Bt = Mat::Random(c.N, c.K), C0 = Mat::Random(c.M, c.N);
        Mat C = C0;
        graft::cpu::parallel_gemm(A, Bt.transpose(), C, 0.5f, acc);  // B given as a transposed row-major map
        Mat ref = (acc ? C0 : Mat::Zero(c.M, c.N)) + 0.5f * (A * Bt.transpose());
        // Each column block is its own Eigen GEMM, whose depth blocking may sum in another order: float rounding only.
        EXPECT_LE((C - ref).cwiseAbs().maxCoeff(), 1e-5f * float(c.K)) << "max |ref| " << ref.cwiseAbs().maxCoeff();
      }
}

// Run only as the child of the test below: reports the pool's spin time or the error it raised.
TEST(ThreadPool, DISABLED_ReportSpin) {
  try {
    std::printf("REPORT spin %d\n", graft::cpu::pool_spin_us());
  } catch (const std::exception& e) {
    std::printf("REPORT error %s\n", e.what());
  }
}

TEST(ThreadPool, SpinSettingIsValidated) {
  const auto report = [](const std::string& value) {
    return graft::testing::rerun_self_report("GRAFT_CPU_SPIN_US='" + value + "'", "ThreadPool.DISABLED_ReportSpin");
  };
  EXPECT_EQ(report("0"), "spin 0");
  EXPECT_EQ(report("250"), "spin 250");
  EXPECT_EQ(report(""), "spin " + std::to_string(graft::cpu::kDefaultSpinUs));
  for (const char* bad : {"abc", "-5", "12us", "2000000"}) {
    const std::string r = report(bad);
    EXPECT_EQ(r.rfind("error ", 0), 0u) << bad << ": " << r;
    EXPECT_NE(r.find("GRAFT_CPU_SPIN_US='" + std::string(bad) + "'"), std::string::npos) << r;
  }
}
