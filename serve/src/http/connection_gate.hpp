// ConnectionGate: the transport in front of cpp-httplib's request handling (docs/serving.md, "Security").
//
// cpp-httplib 0.11 gives every accepted connection a worker thread for as long as it is open and
// reads request lines and headers without a size bound, so a client that trickles bytes (or just
// opens sockets) holds workers indefinitely. The gate replaces that connection loop:
//
//   accept ──▶ admit: over --max-connections or --max-connections-per-client → 503, closed
//      │
//      ▼
//   event loop (one thread, epoll, no worker): reads request lines + headers of every connection,
//      bounded (request line ≤ 8 KiB → 414, head ≤ max_header_bytes / header line ≤ 8 KiB /
//      ≤ 128 header lines → 431, malformed framing → 400) and timed (head within header_timeout_s
//      → else 408; idle keep-alive connections closed after keep_alive_timeout_s)
//      │ complete head
//      ▼
//   worker pool (`threads`): httplib's process_request on a GatedStream that replays the buffered
//      head and then reads the body from the socket (each wait ≤ read_timeout_s, the whole body at
//      ≥ 64 KiB/s after that grace; else the handler sees a failed read → 408), writes with
//      write_timeout_s; after the response the connection goes back to the event loop (keep-alive,
//      pipelined bytes kept) or is closed gracefully (write side shut, input drained for ≤ 2 s, so
//      the client reads the response instead of a reset).
//
// A POST/PUT/PATCH without Content-Length or Transfer-Encoding has an empty body (RFC 9112 §6.3):
// the gate says so with "Content-Length: 0" instead of letting httplib wait for EOF.
// Handlers on a worker ask current_client_gone() whether their client has disconnected (EOF or
// reset; half-closing the sending side counts as leaving, as in nginx and uvicorn).
#pragma once

#include <httplib.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace graft::serve::http {

struct GateLimits {
  int threads = 64;
  int max_connections = 512;            // open connections in all (fd numbers must stay below 1024: httplib 0.11)
  int max_connections_per_client = 128;  // per peer address
  size_t max_header_bytes = size_t(64) << 10;
  size_t max_request_line = 8192;       // cpp-httplib's URI limit (414)
  size_t max_header_line = 8192;
  int max_header_lines = 128;
  double header_timeout_s = 10, read_timeout_s = 10, write_timeout_s = 30, keep_alive_timeout_s = 5;
  double linger_s = 2;                  // how long a closing connection's input is drained
  double min_body_bytes_per_s = 65536;
};

class ConnectionGate {
 public:
  // Runs one request of a connection (httplib's Server::process_request).
  using Process = std::function<bool(httplib::Stream& strm, bool close_connection, bool& connection_closed)>;
  // The JSON body of a response the gate writes itself (408, 414, 431, 400, 503).
  using ErrorBody = std::function<std::string(int status, const std::string& code, const std::string& message)>;
  // Called for every response the gate writes itself (metrics).
  using OnResponse = std::function<void(int status)>;

  ConnectionGate(GateLimits limits, Process process, ErrorBody error_body, OnResponse on_response);
  ~ConnectionGate();
  ConnectionGate(const ConnectionGate&) = delete;
  ConnectionGate& operator=(const ConnectionGate&) = delete;

  void start();         // starts the event loop and the workers (idempotent)
  void admit(int fd);   // takes ownership of an accepted socket (any thread)
  // Stops accepting work: queued requests are still processed, idle connections closed; joins.
  void stop();
  int open_connections() const;

  // On a worker thread inside a handler: whether its client has disconnected.
  static bool current_client_gone();
  // On a worker thread: whether the request body could not be read in time (the read failed on a timeout).
  static bool current_body_timed_out();
  // On a worker thread: close the connection after this response (e.g. unread body on the wire).
  static void current_close_after_response();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// An httplib::Server whose accepted connections go through a ConnectionGate.
class GatedServer : public httplib::Server {
 public:
  GatedServer();
  // Call before listening.
  void configure(const GateLimits& limits, ConnectionGate::ErrorBody error_body, ConnectionGate::OnResponse on_response);
  // Starts the gate, listens until stop(), then stops the gate (in-flight requests finish).
  bool listen_gated();
  ConnectionGate* gate() { return gate_.get(); }

 private:
  bool process_and_close_socket(socket_t sock) override;
  std::unique_ptr<ConnectionGate> gate_;
};

}  // namespace graft::serve::http
