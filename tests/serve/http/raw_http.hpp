// A minimal blocking HTTP/1.1 client over loopback sockets for the server tests: exact bytes on the
// wire (SSE framing, chunked encoding), slow readers and clients that vanish mid-stream.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace graft::testing {

struct HttpResponse {
  int status = 0;                              // 0: no (complete) response
  std::map<std::string, std::string> headers;  // lower-case names
  std::string raw_body;                        // as on the wire
  std::string body;                            // de-chunked
};

// A loopback connection, optionally from a chosen source address (127.0.0.2 is another client of this machine).
inline int connect_loopback(int port, const char* source = nullptr) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (source) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &src.sin_addr);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0) {
      ::close(fd);
      return -1;
    }
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

inline bool send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads up to `max` bytes (waits at most timeout_ms for the first); "" on EOF/timeout.
inline std::string recv_some(int fd, int timeout_ms, size_t max = 65536) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return {};
  std::string buf(max, '\0');
  ssize_t n = ::recv(fd, buf.data(), max, 0);
  if (n <= 0) return {};
  buf.resize(static_cast<size_t>(n));
  return buf;
}

inline std::string build_request(const std::string& method, const std::string& path, const std::string& body,
                                 const std::vector<std::string>& headers = {}, bool with_length = true) {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST") r += "Content-Type: application/json\r\n";
  if (with_length && (!body.empty() || method == "POST")) r += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  for (const auto& h : headers) r += h + "\r\n";
  r += "\r\n" + body;
  return r;
}

inline std::string dechunk(const std::string& raw, bool* ok = nullptr) {
  std::string out;
  size_t pos = 0;
  if (ok) *ok = false;
  while (pos < raw.size()) {
    size_t eol = raw.find("\r\n", pos);
    if (eol == std::string::npos) return out;
    size_t len = std::stoul(raw.substr(pos, eol - pos), nullptr, 16);
    pos = eol + 2;
    if (len == 0) {
      if (ok) *ok = true;
      return out;
    }
    if (pos + len > raw.size()) return out;
    out += raw.substr(pos, len);
    pos += len + 2;
  }
  return out;
}

inline HttpResponse parse_response(const std::string& all) {
  HttpResponse r;
  size_t he = all.find("\r\n\r\n");
  if (he == std::string::npos || all.compare(0, 9, "HTTP/1.1 ") != 0) return r;
  size_t eol = all.find("\r\n");
  size_t pos = eol + 2;
  while (pos < he) {
    size_t e = all.find("\r\n", pos);
    std::string line = all.substr(pos, e - pos);
    size_t c = line.find(':');
    if (c != std::string::npos) {
      std::string k = line.substr(0, c), v = line.substr(c + 1);
      for (auto& ch : k) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      while (!v.empty() && v.front() == ' ') v.erase(0, 1);
      r.headers[k] = v;
    }
    pos = e + 2;
  }
  r.raw_body = all.substr(he + 4);
  auto te = r.headers.find("transfer-encoding");
  r.body = te != r.headers.end() && te->second == "chunked" ? dechunk(r.raw_body) : r.raw_body;
  r.status = std::stoi(all.substr(9, 3));
  return r;
}

// Whether `all` holds a complete response (by Content-Length or the last chunk).
inline bool response_complete(const std::string& all) {
  size_t he = all.find("\r\n\r\n");
  if (he == std::string::npos) return false;
  HttpResponse r = parse_response(all);
  auto cl = r.headers.find("content-length");
  if (cl != r.headers.end()) return r.raw_body.size() >= std::stoul(cl->second);
  auto te = r.headers.find("transfer-encoding");
  if (te != r.headers.end() && te->second == "chunked") {
    bool ok = false;
    dechunk(r.raw_body, &ok);
    return ok;
  }
  return false;  // until the server closes
}

// Reads one response from an open socket (until complete, EOF, or the timeout).
inline HttpResponse read_response(int fd, int timeout_ms) {
  std::string all;
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const int left = timeout_ms - static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - t0).count());
    if (left <= 0) break;
    std::string s = recv_some(fd, left);
    if (s.empty()) break;
    all += s;
    if (response_complete(all)) break;
  }
  return parse_response(all);
}

// Sends raw bytes and reads one whole response (until complete, closed, or the timeout).
inline HttpResponse raw_exchange(int port, const std::string& request, int timeout_ms = 20000, bool half_close = false) {
  int fd = connect_loopback(port);
  if (fd < 0) return {};
  send_all(fd, request);
  if (half_close) ::shutdown(fd, SHUT_WR);  // end of request: the server sees EOF after it
  HttpResponse r = read_response(fd, timeout_ms);
  ::close(fd);
  return r;
}

inline HttpResponse http_call(int port, const std::string& method, const std::string& path, const std::string& body = {},
                              const std::vector<std::string>& headers = {}, int timeout_ms = 20000) {
  return raw_exchange(port, build_request(method, path, body, headers), timeout_ms);
}

// The payloads of "data: ..." events of an SSE body, in order (checks the "\n\n" framing).
inline std::vector<std::string> sse_data(const std::string& body, bool* well_framed = nullptr) {
  std::vector<std::string> out;
  bool ok = true;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) {
      ok = false;
      break;
    }
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (!ev.empty() && ev[0] == ':') continue;  // comment (keep-alive)
    if (ev.compare(0, 6, "data: ") != 0 || ev.find('\n') != std::string::npos) ok = false;
    out.push_back(ev.size() >= 6 ? ev.substr(6) : ev);
  }
  if (well_framed) *well_framed = ok;
  return out;
}

}  // namespace graft::testing
