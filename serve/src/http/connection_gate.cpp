// ConnectionGate: bounded, timed HTTP transport in front of httplib's request handling (see
// connection_gate.hpp).
#include "connection_gate.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace graft::serve::http {
namespace {
using Clock = std::chrono::steady_clock;

Clock::time_point after(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
int ms_until(Clock::time_point t) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return d <= 0 ? 0 : static_cast<int>(std::min<int64_t>(d, 1 << 30));
}

std::string peer_address(int fd) {
  sockaddr_storage a{};
  socklen_t n = sizeof(a);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &n) != 0) return "?";
  char host[NI_MAXHOST];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&a), n, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) return "?";
  return host;
}

void ip_and_port(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t n = sizeof(a);
  const int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &n) : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  if (rc != 0) return;
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&a), n, host, sizeof(host), serv, sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(serv);
  }
}

const char* reason(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}
}  // namespace

// One client connection. Owned by exactly one of: the event loop, the ready queue, a worker.
struct Conn {
  enum State { kIdle, kHead, kClosing } state = kHead;
  int fd = -1;
  std::string peer;
  bool counted = false;        // holds a slot of the connection limits
  std::string buf;             // bytes received and not yet consumed
  size_t pos = 0;              // consumed prefix of buf
  Clock::time_point deadline;
  // The parsed head (valid while a worker runs it).
  size_t head_len = 0;
  bool chunked = false;
  uint64_t content_length = 0;
  bool close_after = false;     // set by the response (Connection: close)
  bool body_timed_out = false;
  // Closing: what is left to write (a response the gate generated), then drain input until EOF.
  std::string out;
  size_t out_pos = 0;
  bool wr_shut = false;
  bool closing_counted = false;  // holds a slot of the closing-connections cap
  size_t available() const { return buf.size() - pos; }
  void consume(size_t n) {
    pos += n;
    if (pos == buf.size()) buf.clear(), pos = 0;
    else if (pos > 65536 && pos * 2 > buf.size()) buf.erase(0, pos), pos = 0;
  }
};

namespace {
thread_local Conn* t_conn = nullptr;

// httplib's view of a connection while a worker runs one request: the buffered head first, then the
// socket, with the gate's body deadline and write timeout.
class GatedStream final : public httplib::Stream {
 public:
  GatedStream(Conn& c, const GateLimits& lim) : c_(c), lim_(lim), start_(Clock::now()) {}
  bool is_readable() const override {
    if (c_.available() > 0) return true;
    pollfd p{c_.fd, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(lim_.read_timeout_s * 1000)) > 0;
  }
  bool is_writable() const override {
    pollfd p{c_.fd, POLLOUT, 0};
    return ::poll(&p, 1, static_cast<int>(lim_.write_timeout_s * 1000)) > 0 && !ConnectionGate::current_client_gone();
  }
  ssize_t read(char* ptr, size_t size) override {
    if (c_.available() == 0 && !fill()) return c_.available() == 0 && eof_ ? 0 : -1;
    const size_t n = std::min(size, c_.available());
    std::memcpy(ptr, c_.buf.data() + c_.pos, n);
    c_.consume(n);
    consumed_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    size_t off = 0;
    while (off < size) {
      const ssize_t n = ::send(c_.fd, ptr + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        off += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        pollfd p{c_.fd, POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(lim_.write_timeout_s * 1000)) > 0) continue;
      }
      return -1;
    }
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { ip_and_port(c_.fd, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { ip_and_port(c_.fd, false, ip, port); }
  socket_t socket() const override { return c_.fd; }
  // Bytes of this request httplib read past its head.
  uint64_t body_read() const { return consumed_ > c_.head_len ? consumed_ - c_.head_len : 0; }

 private:
  // Waits for more input (body deadline: read_timeout_s grace, then >= min rate); false on timeout/EOF/error.
  bool fill() {
    for (;;) {
      const double allowed = lim_.read_timeout_s + static_cast<double>(body_read()) / lim_.min_body_bytes_per_s;
      const auto deadline = start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(allowed));
      const int wait = std::min(ms_until(deadline), static_cast<int>(lim_.read_timeout_s * 1000));
      pollfd p{c_.fd, POLLIN, 0};
      const int r = ::poll(&p, 1, wait);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        c_.body_timed_out = true;
        return false;
      }
      char tmp[16384];
      const ssize_t n = ::recv(c_.fd, tmp, sizeof(tmp), MSG_DONTWAIT);
      if (n > 0) {
        c_.buf.append(tmp, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        eof_ = true;
        return false;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    }
  }
  Conn& c_;
  const GateLimits& lim_;
  Clock::time_point start_;
  uint64_t consumed_ = 0;
  bool eof_ = false;
};

// The outcome of looking for a complete request head in a connection's buffer.
struct HeadCheck {
  enum Kind { kNeedMore, kComplete, kReject } kind = kNeedMore;
  int status = 0;
  std::string code, message;
};
}  // namespace

struct ConnectionGate::Impl {
  Impl(GateLimits l, Process p, ErrorBody e, OnResponse o)
      : lim(l), process(std::move(p)), error_body(std::move(e)), on_response(std::move(o)) {}
  GateLimits lim;
  Process process;
  ErrorBody error_body;
  OnResponse on_response;

  std::atomic<bool> started{false}, stopping{false};
  int ep = -1, wake_fd = -1;
  std::thread loop_thread;
  std::vector<std::thread> workers;

  // Limits (admit runs on the accept thread, releases on any).
  mutable std::mutex count_mu;
  int open = 0, closing = 0;
  std::unordered_map<std::string, int> per_peer;

  // Connections handed to the event loop (new ones, and ones coming back from workers).
  std::mutex inbox_mu;
  std::vector<Conn*> inbox;
  // Connections with a complete head, waiting for a worker.
  std::mutex ready_mu;
  std::condition_variable ready_cv;
  std::deque<Conn*> ready;
  // Owned by the event loop thread only.
  std::unordered_map<int, Conn*> conns;

  void wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof(one));
  }
  void to_loop(Conn* c) {
    {
      std::lock_guard lk(inbox_mu);
      inbox.push_back(c);
    }
    wake();
  }
  void release(Conn* c) {
    if (c->counted) {
      std::lock_guard lk(count_mu);
      --open;
      if (--per_peer[c->peer] <= 0) per_peer.erase(c->peer);
      c->counted = false;
    }
  }
  void destroy(Conn* c) {
    release(c);
    if (c->closing_counted) {
      std::lock_guard lk(count_mu);
      --closing;
    }
    if (c->fd >= 0) ::close(c->fd);
    delete c;
  }
  // Graceful close: give the limits back, send what is queued, shut the write side, drain input for up
  // to linger_s (so the client reads the response instead of a reset). Under a flood of closing
  // connections (> 256) they are closed at the next scan without draining.
  void start_closing(Conn* c, std::string response = {}) {
    release(c);
    {
      std::lock_guard lk(count_mu);
      c->closing_counted = closing < 256;
      if (c->closing_counted) ++closing;
    }
    c->state = Conn::kClosing;
    c->out = std::move(response);
    c->out_pos = 0;
    c->buf.clear();
    c->pos = 0;
    c->deadline = c->closing_counted ? after(lim.linger_s) : Clock::now();
  }
  std::string error_response(int status, const std::string& code, const std::string& message) {
    if (on_response) on_response(status);
    const std::string body = error_body(status, code, message);
    std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) +
                    "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nConnection: close\r\n";
    if (status == 503) r += "Retry-After: 1\r\n";
    return r + "\r\n" + body;
  }

  // ---- event loop
  void watch(Conn* c) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (c->state == Conn::kClosing && c->out_pos < c->out.size() ? EPOLLOUT : 0u);
    ev.data.fd = c->fd;
    if (::epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) ::epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  }
  void unwatch(Conn* c) { ::epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, nullptr); }
  void forget(Conn* c) {
    unwatch(c);
    conns.erase(c->fd);
  }

  HeadCheck check_head(Conn& c) {
    HeadCheck h;
    // Empty lines before a request line are ignored (RFC 9112 §2.2).
    while (c.available() >= 2 && c.buf.compare(c.pos, 2, "\r\n") == 0) c.consume(2);
    while (c.available() >= 1 && c.buf[c.pos] == '\n') c.consume(1);
    const std::string_view s(c.buf.data() + c.pos, c.available());
    auto reject = [&](int status, const char* code, std::string msg) {
      h.kind = HeadCheck::kReject;
      h.status = status;
      h.code = code;
      h.message = std::move(msg);
      return h;
    };
    const size_t eol = s.find('\n');
    if (eol == std::string_view::npos) {
      if (s.size() > lim.max_request_line)
        return reject(414, "uri_too_long", "the request line is longer than " + std::to_string(lim.max_request_line) + " bytes");
      return h;
    }
    if (eol + 1 > lim.max_request_line)
      return reject(414, "uri_too_long", "the request line is longer than " + std::to_string(lim.max_request_line) + " bytes");
    const size_t end = s.find("\r\n\r\n");
    auto too_large = [&] {
      return reject(431, "header_too_large", "the request line and headers are larger than " +
                                                 std::to_string(lim.max_header_bytes) + " bytes (--max-header-bytes)");
    };
    if (end != std::string_view::npos ? end + 4 > lim.max_header_bytes : s.size() >= lim.max_header_bytes) return too_large();
    // The header lines received so far (up to the blank line) must each be within bounds.
    const std::string_view region = end == std::string_view::npos ? s.substr(eol + 1) : s.substr(eol + 1, end + 2 - (eol + 1));
    int lines = 0;
    for (size_t p = 0; p < region.size();) {
      const size_t e = region.find('\n', p);
      const size_t len = (e == std::string_view::npos ? region.size() : e + 1) - p;
      if (len > lim.max_header_line)
        return reject(431, "header_too_large", "a request header line is longer than " + std::to_string(lim.max_header_line) + " bytes");
      if (e != std::string_view::npos && ++lines > lim.max_header_lines)
        return reject(431, "header_too_large", "more than " + std::to_string(lim.max_header_lines) + " request header lines");
      if (e == std::string_view::npos) break;
      p = e + 1;
    }
    if (end == std::string_view::npos) return h;
    // Complete: note the body framing, and make an empty POST body explicit.
    const std::string_view head = s.substr(0, end + 4);
    const std::string_view request_line = trim(head.substr(0, eol));
    const std::string method(request_line.substr(0, request_line.find(' ')));
    bool has_length = false, has_te = false;
    c.chunked = false;
    c.content_length = 0;
    for (size_t p = eol + 1; p < end;) {
      const size_t e = head.find("\r\n", p);
      const std::string_view line = head.substr(p, e - p);
      p = e + 2;
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      const std::string_view name = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
      if (iequals(name, "Content-Length")) {
        uint64_t v = 0;
        bool ok = !value.empty();
        for (char ch : value) {
          if (ch < '0' || ch > '9') ok = false;
          else v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + static_cast<uint64_t>(ch - '0');
        }
        if (!ok) return reject(400, "bad_request", "invalid Content-Length header");
        if (has_length && v != c.content_length) return reject(400, "bad_request", "conflicting Content-Length headers");
        has_length = true;
        c.content_length = v;
      } else if (iequals(name, "Transfer-Encoding")) {
        has_te = true;
        c.chunked = value.size() >= 7 && iequals(value.substr(value.size() - 7), "chunked");
        if (!c.chunked) return reject(400, "bad_request", "unsupported Transfer-Encoding (only chunked)");
      }
    }
    if (has_length && has_te) return reject(400, "bad_request", "both Content-Length and Transfer-Encoding given");
    c.head_len = end + 4;
    if (!has_length && !has_te && (method == "POST" || method == "PUT" || method == "PATCH")) {
      static const std::string kZero = "Content-Length: 0\r\n";
      c.buf.insert(c.pos + end + 2, kZero);
      c.head_len += kZero.size();
    }
    h.kind = HeadCheck::kComplete;
    return h;
  }

  // After new bytes (or a connection coming back with pipelined bytes): dispatch, reject or wait.
  void advance(Conn* c) {
    if (c->state == Conn::kClosing) return;
    if (c->available() > 0 && c->state == Conn::kIdle) {
      c->state = Conn::kHead;
      c->deadline = after(lim.header_timeout_s);
    }
    if (c->available() == 0) return;
    HeadCheck h = check_head(*c);
    if (h.kind == HeadCheck::kNeedMore) return;
    if (h.kind == HeadCheck::kReject) {
      start_closing(c, error_response(h.status, h.code, h.message));
      flush_out(c);
      watch(c);
      return;
    }
    forget(c);
    {
      std::lock_guard lk(ready_mu);
      ready.push_back(c);
    }
    ready_cv.notify_one();
  }

  // Reads what is available; false when the connection is gone (EOF or error) and was destroyed.
  bool read_some(Conn* c) {
    char tmp[16384];
    for (;;) {
      if (c->state != Conn::kClosing && c->available() > lim.max_header_bytes + sizeof(tmp)) return true;  // check_head decides
      const ssize_t n = ::recv(c->fd, tmp, sizeof(tmp), MSG_DONTWAIT);
      if (n > 0) {
        if (c->state != Conn::kClosing) c->buf.append(tmp, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      // EOF or error: a partial head is abandoned, a complete one still answered.
      if (c->state != Conn::kClosing && c->available() > 0) {
        const HeadCheck h = check_head(*c);
        if (h.kind == HeadCheck::kComplete) {
          c->close_after = true;
          forget(c);
          {
            std::lock_guard lk(ready_mu);
            ready.push_back(c);
          }
          ready_cv.notify_one();
          return false;
        }
      }
      forget(c);
      destroy(c);
      return false;
    }
  }

  void flush_out(Conn* c) {
    while (c->out_pos < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_pos, c->out.size() - c->out_pos, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) c->out_pos += static_cast<size_t>(n);
      else if (n < 0 && errno == EINTR) continue;
      else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      else {
        c->out_pos = c->out.size();  // the client is gone: nothing more to send
        break;
      }
    }
    if (c->out_pos >= c->out.size() && !c->wr_shut) {
      ::shutdown(c->fd, SHUT_WR);
      c->wr_shut = true;
    }
  }

  void take_inbox() {
    std::vector<Conn*> in;
    {
      std::lock_guard lk(inbox_mu);
      in.swap(inbox);
    }
    for (Conn* c : in) {
      conns[c->fd] = c;
      if (c->state == Conn::kClosing) flush_out(c);
      watch(c);
      advance(c);  // pipelined bytes of a returning connection
    }
  }

  void expire() {
    const auto now = Clock::now();
    std::vector<Conn*> due;
    for (auto& [fd, c] : conns)
      if (c->deadline <= now) due.push_back(c);
    for (Conn* c : due) {
      if (c->state == Conn::kHead) {
        start_closing(c, error_response(408, "request_timeout",
                                        "the request line and headers did not arrive within " +
                                            std::to_string(static_cast<int>(lim.header_timeout_s)) + " s (--http-header-timeout)"));
        flush_out(c);
        watch(c);
      } else {
        forget(c);
        destroy(c);
      }
    }
  }

  void loop() {
    std::vector<epoll_event> evs(256);
    auto last_scan = Clock::now();
    while (!stopping) {
      const int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 50);
      for (int i = 0; i < n; ++i) {
        const int fd = evs[static_cast<size_t>(i)].data.fd;
        if (fd == wake_fd) {
          uint64_t v;
          [[maybe_unused]] ssize_t r = ::read(wake_fd, &v, sizeof(v));
          continue;
        }
        auto it = conns.find(fd);
        if (it == conns.end()) continue;
        Conn* c = it->second;
        if (c->state == Conn::kClosing) {
          if (evs[static_cast<size_t>(i)].events & EPOLLOUT) flush_out(c);
          if (!read_some(c)) continue;
          if (c->wr_shut) watch(c);
          continue;
        }
        if (!read_some(c)) continue;
        advance(c);
      }
      take_inbox();
      if (Clock::now() - last_scan > std::chrono::milliseconds(50)) {
        expire();
        last_scan = Clock::now();
      }
    }
    take_inbox();
    for (auto& [fd, c] : conns) {
      unwatch(c);
      destroy(c);
    }
    conns.clear();
  }

  // ---- workers
  void work() {
    for (;;) {
      Conn* c = nullptr;
      {
        std::unique_lock lk(ready_mu);
        ready_cv.wait(lk, [&] { return stopping || !ready.empty(); });
        if (ready.empty()) return;
        c = ready.front();
        ready.pop_front();
      }
      serve_one(c);
    }
  }

  void serve_one(Conn* c) {
    GatedStream strm(*c, lim);
    const bool close_now = stopping || c->close_after || c->chunked;
    bool closed = false;
    c->body_timed_out = false;
    t_conn = c;
    bool ok = false;
    try {
      ok = process(strm, close_now, closed);
    } catch (...) {
      ok = false;
    }
    t_conn = nullptr;
    const bool body_left = strm.body_read() < c->content_length;
    if (!ok || closed || close_now || c->close_after || body_left || c->body_timed_out || stopping) {
      c->close_after = false;
      start_closing(c);
      if (stopping) return destroy(c);
      to_loop(c);
      return;
    }
    c->state = Conn::kIdle;
    c->head_len = 0;
    c->content_length = 0;
    c->chunked = false;
    c->deadline = after(lim.keep_alive_timeout_s);
    to_loop(c);
  }
};

ConnectionGate::ConnectionGate(GateLimits limits, Process process, ErrorBody error_body, OnResponse on_response)
    : impl_(std::make_unique<Impl>(limits, std::move(process), std::move(error_body), std::move(on_response))) {}

ConnectionGate::~ConnectionGate() { stop(); }

void ConnectionGate::start() {
  Impl& I = *impl_;
  if (I.started.exchange(true)) return;
  I.ep = ::epoll_create1(EPOLL_CLOEXEC);
  I.wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = I.wake_fd;
  ::epoll_ctl(I.ep, EPOLL_CTL_ADD, I.wake_fd, &ev);
  I.loop_thread = std::thread([&I] { I.loop(); });
  for (int i = 0; i < I.lim.threads; ++i) I.workers.emplace_back([&I] { I.work(); });
}

void ConnectionGate::admit(int fd) {
  Impl& I = *impl_;
  if (I.stopping || !I.started) {
    ::close(fd);
    return;
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  auto* c = new Conn;
  c->fd = fd;
  c->peer = peer_address(fd);
  std::string refuse;
  {
    std::lock_guard lk(I.count_mu);
    int& mine = I.per_peer[c->peer];
    if (I.open >= I.lim.max_connections)
      refuse = "the server has " + std::to_string(I.open) + " open connections, its limit (--max-connections); retry later";
    else if (mine >= I.lim.max_connections_per_client)
      refuse = "too many open connections from " + c->peer + " (limit " + std::to_string(I.lim.max_connections_per_client) +
               ", --max-connections-per-client); reuse connections or retry later";
    if (refuse.empty()) {
      ++I.open;
      ++mine;
      c->counted = true;
    } else if (mine == 0) {
      I.per_peer.erase(c->peer);
    }
  }
  if (!refuse.empty()) {
    I.start_closing(c, I.error_response(503, "too_many_connections", refuse));
  } else {
    c->state = Conn::kHead;
    c->deadline = after(I.lim.header_timeout_s);
  }
  I.to_loop(c);
}

void ConnectionGate::stop() {
  Impl& I = *impl_;
  if (!I.started || I.stopping.exchange(true)) return;
  I.wake();
  I.ready_cv.notify_all();
  if (I.loop_thread.joinable()) I.loop_thread.join();
  for (auto& w : I.workers)
    if (w.joinable()) w.join();
  {
    std::lock_guard lk(I.inbox_mu);
    for (Conn* c : I.inbox) I.destroy(c);
    I.inbox.clear();
  }
  for (Conn* c : I.ready) I.destroy(c);
  I.ready.clear();
  ::close(I.ep);
  ::close(I.wake_fd);
}

int ConnectionGate::open_connections() const {
  std::lock_guard lk(impl_->count_mu);
  return impl_->open;
}

bool ConnectionGate::current_client_gone() {
  Conn* c = t_conn;
  if (!c) return false;
  pollfd p{c->fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
  char b;
  const ssize_t n = ::recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

bool ConnectionGate::current_body_timed_out() { return t_conn && t_conn->body_timed_out; }

void ConnectionGate::current_close_after_response() {
  if (t_conn) t_conn->close_after = true;
}

// ---- GatedServer
namespace {
// httplib runs process_and_close_socket through the task queue; the gate needs it on the accept thread.
class InlineQueue final : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};
}  // namespace

GatedServer::GatedServer() { new_task_queue = [] { return new InlineQueue; }; }

void GatedServer::configure(const GateLimits& limits, ConnectionGate::ErrorBody error_body, ConnectionGate::OnResponse on_response) {
  gate_ = std::make_unique<ConnectionGate>(
      limits, [this](httplib::Stream& s, bool close, bool& closed) { return process_request(s, close, closed, nullptr); },
      std::move(error_body), std::move(on_response));
}

bool GatedServer::listen_gated() {
  // cpp-httplib 0.11 listens with a backlog of 5: under a burst of connections the kernel drops the
  // rest of the handshakes and clients stall in retransmits. Listening again only raises the backlog.
  if (svr_sock_ != INVALID_SOCKET) ::listen(svr_sock_, SOMAXCONN);
  gate_->start();
  const bool ok = listen_after_bind();
  gate_->stop();
  return ok;
}

bool GatedServer::process_and_close_socket(socket_t sock) {
  gate_->admit(sock);
  return true;
}

}  // namespace graft::serve::http
