// The MPI communicator (communicator.hpp), used when mpirun started graft. Besides the collectives it
// watches the other ranks so that a lost rank is named: a watchdog thread checks every 200 ms that the
// ranks on this host are alive and, when one is gone, says which and exits 1; and when the launcher
// stops this rank (OpenMPI sends SIGTERM to every rank once one dies) the handler names the lost
// rank(s) before dying of the signal. Either way every rank exits non-zero within about a second.
#include <fmt/format.h>
#include <mpi.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "graft/dist/communicator.hpp"
#include "graft/error.hpp"

namespace graft::dist {
namespace {

struct Peer {
  int rank = 0;
  pid_t pid = 0;
  bool same_host = false;
  std::string lost_message;  // written as is when this peer is found dead
};

// The table the signal handler reads (set once before the handler is installed).
std::vector<Peer>* g_peers = nullptr;
std::string* g_stopped_message = nullptr;

// Async-signal-safe: kill() and /proc reads only. A zombie (exited, not yet reaped by the launcher)
// counts as dead.
bool alive(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  char path[64] = "/proc/";
  {  // "/proc/<pid>/stat" without snprintf
    char digits[24];
    int n = 0;
    for (long v = pid; v > 0 && n < 23; v /= 10) digits[n++] = static_cast<char>('0' + v % 10);
    size_t at = 6;
    while (n > 0) path[at++] = digits[--n];
    const char* tail = "/stat";
    for (size_t i = 0; tail[i]; ++i) path[at++] = tail[i];
    path[at] = '\0';
  }
  const int fd = ::open(path, O_RDONLY);
  if (fd < 0) return false;
  char buf[512];
  const ssize_t got = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (got <= 0) return false;
  buf[got] = '\0';
  const char* paren = nullptr;
  for (ssize_t i = 0; i < got; ++i)
    if (buf[i] == ')') paren = buf + i;
  if (!paren || paren + 2 >= buf + got) return true;
  return paren[2] != 'Z' && paren[2] != 'X';
}

void write_all(const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t w = ::write(2, s.data() + off, s.size() - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
}

// Names every dead peer on this host; returns how many.
int report_lost() {
  int lost = 0;
  if (!g_peers) return 0;
  for (const Peer& p : *g_peers)
    if (p.same_host && !alive(p.pid)) {
      write_all(p.lost_message);
      ++lost;
    }
  return lost;
}

extern "C" void on_launcher_stop(int sig) {
  if (report_lost() == 0 && g_stopped_message) write_all(*g_stopped_message);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void check(int rc, const char* what, int rank, int size) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  GRAFT_FAIL("check that every rank is alive and reachable (the launcher's message names a lost rank)",
             "{} failed on rank {} of {}: {}", what, rank, size, std::string(text, static_cast<size_t>(len)));
}

class MpiCommunicator final : public Communicator {
 public:
  // A sub-communicator (split): shares the process's MPI state; no watchdog of its own (the world's runs).
  MpiCommunicator(MPI_Comm c, bool) : comm_(c), sub_(true) {
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  MpiCommunicator() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    char host[HOST_NAME_MAX + 1] = {};
    ::gethostname(host, sizeof host - 1);
    // Peers whose pids this process can check: same host name and same pid namespace.
    char pidns[128] = {};
    const ssize_t ns_len = ::readlink("/proc/self/ns/pid", pidns, sizeof pidns - 1);
    const std::string here = fmt::format("{}\t{}", host, ns_len > 0 ? std::string(pidns, static_cast<size_t>(ns_len)) : "");
    const auto all = allgather(fmt::format("{}\t{}", here, static_cast<long>(::getpid())));
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      const auto& s = all[static_cast<size_t>(r)];
      const auto tab = s.rfind('\t');
      Peer p;
      p.rank = r;
      p.pid = static_cast<pid_t>(std::stol(s.substr(tab + 1)));
      p.same_host = s.substr(0, tab) == here;
      p.lost_message = fmt::format("graft: rank {} of {}: lost rank {} (pid {} on {}): it exited or was killed; stopping this rank too\n",
                                   rank_, size_, r, static_cast<long>(p.pid), s.substr(0, s.find('\t')));
      peers_.push_back(std::move(p));
    }
    stopped_ = fmt::format("graft: rank {} of {}: stopped by the MPI launcher: another rank failed (the launcher's message names it)\n",
                           rank_, size_);
    g_peers = &peers_;
    g_stopped_message = &stopped_;
    ::signal(SIGTERM, on_launcher_stop);
    watchdog_ = std::thread([this] {
      while (!stop_.load()) {
        if (report_lost() > 0) ::_exit(1);
        for (int i = 0; i < 20 && !stop_.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  ~MpiCommunicator() override {
    stop_watchdog();
    if (sub_ && comm_ != MPI_COMM_NULL) {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(&comm_);
    }
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport() const override { return "mpi"; }

  void start_allreduce_sum(double* data, int64_t n) override {
    for (int64_t off = 0; off < n; off += kChunk) {
      pending_.push_back(MPI_REQUEST_NULL);
      check(MPI_Iallreduce(MPI_IN_PLACE, data + off, static_cast<int>(std::min<int64_t>(kChunk, n - off)), MPI_DOUBLE, MPI_SUM,
                           comm_, &pending_.back()),
            "MPI_Iallreduce", rank_, size_);
    }
  }
  void progress() override {
    if (pending_.empty()) return;
    int done = 0;
    check(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall", rank_,
          size_);
  }
  void wait_all() override {
    for (MPI_Request& r : pending_) wait_idle(r, "MPI_Iallreduce");
    pending_.clear();
  }
  void allreduce_sum(float* data, int64_t n) override { allreduce(data, n, MPI_FLOAT, sizeof(float)); }
  void allreduce_sum(double* data, int64_t n) override { allreduce(data, n, MPI_DOUBLE, sizeof(double)); }

  void broadcast(void* data, int64_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (int64_t off = 0; off < bytes; off += kChunk) {
      const int c = static_cast<int>(std::min<int64_t>(kChunk, bytes - off));
      check(MPI_Bcast(p + off, c, MPI_BYTE, root, comm_), "MPI_Bcast", rank_, size_);
    }
  }
  void barrier() override { check(MPI_Barrier(comm_), "MPI_Barrier", rank_, size_); }

  std::vector<std::string> allgather(const std::string& mine) override {
    GRAFT_CHECK(mine.size() < static_cast<size_t>(INT_MAX / std::max(size_, 1)), "allgather of {} bytes is too large", mine.size());
    int len = static_cast<int>(mine.size());
    std::vector<int> lens(static_cast<size_t>(size_)), offs(static_cast<size_t>(size_));
    check(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm_), "MPI_Allgather", rank_, size_);
    int total = 0;
    for (int r = 0; r < size_; ++r) offs[static_cast<size_t>(r)] = total, total += lens[static_cast<size_t>(r)];
    std::string buf(static_cast<size_t>(total), '\0');
    check(MPI_Allgatherv(mine.data(), len, MPI_CHAR, buf.data(), lens.data(), offs.data(), MPI_CHAR, comm_), "MPI_Allgatherv",
          rank_, size_);
    std::vector<std::string> out;
    for (int r = 0; r < size_; ++r)
      out.push_back(buf.substr(static_cast<size_t>(offs[static_cast<size_t>(r)]), static_cast<size_t>(lens[static_cast<size_t>(r)])));
    return out;
  }

  std::vector<std::string> alltoall(const std::vector<std::string>& send) override {
    GRAFT_CHECK(send.size() == static_cast<size_t>(size_), "alltoall: {} blocks for {} ranks", send.size(), size_);
    std::vector<int> scount(static_cast<size_t>(size_)), sdisp(scount.size()), rcount(scount.size()), rdisp(scount.size());
    int64_t stotal = 0;
    for (int r = 0; r < size_; ++r) {
      const auto i = static_cast<size_t>(r);
      GRAFT_CHECK(stotal + static_cast<int64_t>(send[i].size()) < INT_MAX,
                  "alltoall: {} bytes from rank {} exceed MPI's 2 GiB count limit; use smaller micro-batches",
                  stotal + static_cast<int64_t>(send[i].size()), rank_);
      scount[i] = static_cast<int>(send[i].size());
      sdisp[i] = static_cast<int>(stotal);
      stotal += scount[i];
    }
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Ialltoall(scount.data(), 1, MPI_INT, rcount.data(), 1, MPI_INT, comm_, &req), "MPI_Ialltoall", rank_, size_);
    wait_idle(req, "MPI_Ialltoall");
    int64_t rtotal = 0;
    for (int r = 0; r < size_; ++r) {
      const auto i = static_cast<size_t>(r);
      GRAFT_CHECK(rtotal + rcount[i] < INT_MAX, "alltoall: {} bytes to rank {} exceed MPI's 2 GiB count limit; use smaller micro-batches",
                  rtotal + rcount[i], rank_);
      rdisp[i] = static_cast<int>(rtotal);
      rtotal += rcount[i];
    }
    std::string sbuf;
    sbuf.reserve(static_cast<size_t>(stotal));
    for (const auto& b : send) sbuf += b;
    std::string rbuf(static_cast<size_t>(rtotal), '\0');
    check(MPI_Ialltoallv(sbuf.data(), scount.data(), sdisp.data(), MPI_BYTE, rbuf.data(), rcount.data(), rdisp.data(),
                         MPI_BYTE, comm_, &req),
          "MPI_Ialltoallv", rank_, size_);
    wait_idle(req, "MPI_Ialltoallv");
    std::vector<std::string> out(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r)
      out[static_cast<size_t>(r)] = rbuf.substr(static_cast<size_t>(rdisp[static_cast<size_t>(r)]),
                                                static_cast<size_t>(rcount[static_cast<size_t>(r)]));
    return out;
  }

  std::unique_ptr<Communicator> split(int color, int key) override;

  void finalize() override {
    if (finalized_ || sub_) return;
    // Ranks leave MPI_Finalize at different times: the watchdog must not take that for a lost rank.
    // The second barrier: no rank exits before every rank has stopped its watchdog.
    barrier();
    stop_watchdog();
    barrier();
    ::signal(SIGTERM, SIG_DFL);
    MPI_Comm_free(&comm_);
    MPI_Finalize();
    finalized_ = true;
  }

 private:
  static constexpr int64_t kChunk = 1 << 30;
  void allreduce(void* data, int64_t n, MPI_Datatype t, size_t elem) {
    auto* p = static_cast<char*>(data);
    for (int64_t off = 0; off < n; off += kChunk) {
      const int c = static_cast<int>(std::min<int64_t>(kChunk, n - off));
      check(MPI_Allreduce(MPI_IN_PLACE, p + static_cast<size_t>(off) * elem, c, t, MPI_SUM, comm_), "MPI_Allreduce", rank_, size_);
    }
  }
  // Waits for a non-blocking collective without holding a core: polls for 2 ms, then sleeps between
  // polls, backing off to 1 ms. An expert-parallel worker waiting for the next batch thus idles instead
  // of spinning in MPI's progress loop (what a blocking MPI_Alltoallv does in OpenMPI).
  void wait_idle(MPI_Request& req, const char* what) {
    int done = 0;
    const auto t0 = std::chrono::steady_clock::now();
    auto nap = std::chrono::microseconds(20);
    for (;;) {
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what, rank_, size_);
      if (done) return;
      if (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(2)) continue;
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
  }
  void stop_watchdog() {
    stop_.store(true);
    if (watchdog_.joinable()) watchdog_.join();
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool finalized_ = false;
  bool sub_ = false;  // made by split(): finalize() belongs to the world communicator
  std::vector<MPI_Request> pending_;  // started by start_allreduce_sum, completed by wait_all
  std::vector<Peer> peers_;
  std::string stopped_;
  std::atomic<bool> stop_{false};
  std::thread watchdog_;
};

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm c = MPI_COMM_NULL;
  check(MPI_Comm_split(comm_, color, key, &c), "MPI_Comm_split", rank_, size_);
  return std::make_unique<MpiCommunicator>(c, true);
}

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace graft::dist
