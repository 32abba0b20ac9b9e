#pragma once
// Frames over TCP (Boost.Asio for resolving, connecting and accepting), for one process per
// stage on one host or across the internet. The framing loop, its two clocks and its error
// rules are shared with TlsLink: stream_core.hpp.
//
// Deadlines. Asio's blocking calls have no timeout, and SO_RCVTIMEO does not help them: on
// EAGAIN Asio's synchronous read falls back to poll() with no timeout. Async operations
// with io_context::run_for would make the sending and the receiving thread run one
// io_context, and each run_for returns only when *both* operations are done. So once
// connected the link does its own I/O on the blocking descriptor: recv() bounded by
// SO_RCVTIMEO (one syscall that sleeps in the kernel, as a raw blocking read does, instead
// of EAGAIN + poll() + read), and sendmsg() gathering header and payload, bounded by
// SO_SNDTIMEO. Each timeout belongs to the one thread that reads (or writes) at a time and
// is set only when it must change (TcpStream::bound). Connect and accept, which happen
// before the link is shared between threads, use async ops + run_for.
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "resbm/io/json.hpp"
#include "resbm/transport/concepts.hpp"
#include "resbm/transport/stream_core.hpp"

namespace resbm::transport {

// Who is at each end, checked by both sides before any training frame: catching a
// mismatched run or config at connect time rather than as garbage gradients.
struct Handshake {
  std::string run_id;
  int stage = 0;             // this stage's index
  int n_stages = 1;
  uint64_t config_hash = 0;  // hash of the model and codec flags; must match exactly
  int expect_peer = -1;      // the stage required at the other end; -1: any other stage
};

namespace detail {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

inline std::string endpoint_text(const tcp::endpoint& ep) {
  auto a = ep.address();
  return a.is_v6() ? cat("[", a.to_string(), "]:", ep.port()) : cat(a.to_string(), ":", ep.port());
}

inline std::string hex64(uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[size_t(i)] = digits[v & 15];
  return s;
}

// The clear byte stream of TcpLink over a blocking descriptor (see the top of this file).
class TcpStream {
 public:
  static constexpr bool kAuthenticated = false;
  static constexpr const char* kEofFix = "check the peer's log: it probably exited or crashed";

  void attach(int fd) { fd_ = fd; }

  IoStep read(std::byte* p, size_t n, Clock::time_point deadline) {
    for (;;) {
      const int flags = bound(SO_RCVTIMEO, rcv_ms_, deadline);
      ssize_t r = ::recv(fd_, p, n, flags);
      if (r > 0) return {IoStep::done, size_t(r), {}, {}, {}};
      if (r == 0) return {IoStep::eof, 0, {}, {}, {}};
      if (IoStep st; again(deadline, st)) continue;
      else return st;
    }
  }

  IoStep write(const HeaderBytes& h, std::span<const std::byte> payload, size_t done, Clock::time_point deadline) {
    std::array<iovec, 2> iov;
    size_t k = 0;
    if (done < kHeaderSize) iov[k++] = {const_cast<std::byte*>(h.data() + done), kHeaderSize - done};
    const size_t pdone = done > kHeaderSize ? done - kHeaderSize : 0;
    if (pdone < payload.size())
      iov[k++] = {const_cast<std::byte*>(payload.data() + pdone), payload.size() - pdone};
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = k;
    for (;;) {
      const int flags = bound(SO_SNDTIMEO, snd_ms_, deadline) | MSG_NOSIGNAL;
      ssize_t r = ::sendmsg(fd_, &msg, flags);
      if (r > 0) return {IoStep::done, size_t(r), {}, {}, {}};
      if (r == 0) errno = EAGAIN;
      if (IoStep st; again(deadline, st)) continue;
      else return st;
    }
  }

 private:
  // Bounds the next call's sleep by the time left and returns the flags for it:
  // MSG_DONTWAIT once the deadline has passed (SO_*TIMEO 0 would mean "forever"). The
  // socket's timeout only ever has to be <= the time left: a shorter one wakes the call
  // early and again() retries. So it is set only when it would overshoot, or when it is
  // under a second and under half the time left (too many wake-ups); a link whose recv
  // timeout and stall timeout differ then settles on one value instead of two setsockopt
  // calls a frame.
  int bound(int option, int64_t& current_ms, Clock::time_point deadline) {
    const int64_t left = ms_left(deadline);
    if (left == 0) return MSG_DONTWAIT;
    if (current_ms <= 0 || current_ms > left || (current_ms < 1000 && current_ms < left / 2)) {
      timeval tv{time_t(left / 1000), suseconds_t((left % 1000) * 1000)};
      if (::setsockopt(fd_, SOL_SOCKET, option, &tv, sizeof tv) != 0)
        fail(cat("cannot set a socket timeout: ", std::strerror(errno)), "report this as a bug");
      current_ms = left;
    }
    return 0;
  }

  // After a failed call: true to try again (interrupted, or woken before the deadline);
  // otherwise `st` says why it stopped.
  static bool again(Clock::time_point deadline, IoStep& st) {
    if (errno == EINTR) return true;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (Clock::now() < deadline) return true;
      st.result = IoStep::timed_out;
      return false;
    }
    st.result = IoStep::failed;
    st.reason = std::strerror(errno);
    return false;
  }

  int fd_ = -1;
  int64_t rcv_ms_ = -1;  // SO_RCVTIMEO as last set; the receiving thread's (under recv_mu)
  int64_t snd_ms_ = -1;  // SO_SNDTIMEO as last set; the sending thread's (under send_mu)
};

// Connects `sock` to host:port, retrying with exponential back-off (retry_initial doubling
// up to retry_max) until opt.connect_timeout has passed in total.
inline void connect_with_retry(asio::io_context& io, tcp::socket& sock, const std::string& host, uint16_t port,
                               const TcpOptions& opt) {
  const auto t0 = Clock::now();
  const auto deadline = t0 + opt.connect_timeout;
  auto backoff = opt.retry_initial;
  int attempts = 0;
  for (;;) {
    ++attempts;
    boost::system::error_code ec;
    tcp::resolver resolver(io);
    auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (!ec) {
      bool done = false;
      asio::async_connect(sock, endpoints, [&](const boost::system::error_code& e, const tcp::endpoint&) {
        ec = e;
        done = true;
      });
      io.restart();
      io.run_for(std::max(deadline - Clock::now(), Clock::duration(0)));
      if (!done) {
        boost::system::error_code ignore;
        sock.close(ignore);  // cancels the pending connect
        io.restart();
        io.run();
        ec = asio::error::timed_out;
      }
      if (!ec) return;
      boost::system::error_code ignore;
      sock.close(ignore);
    }
    const auto now = Clock::now();
    if (now >= deadline)
      fail(cat("could not connect to ", host, ":", port, " after ", attempts, " attempts in ",
               std::chrono::duration_cast<std::chrono::milliseconds>(now - t0).count(),
               " ms (last error: ", ec.message(), ")"),
           cat("start the stage that listens on ", host, ":", port,
               " first, check the host, port and firewall, or raise the connect timeout"));
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, deadline - now));
    backoff = std::min(backoff * 2, opt.retry_max);
  }
}

// A listening socket on host:port (port 0: any free port).
inline void listen_on(tcp::acceptor& acceptor, asio::io_context& io, const std::string& host, uint16_t port) {
  boost::system::error_code ec;
  tcp::resolver resolver(io);
  auto eps = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  RESBM_CHECK(!ec && !eps.empty(), cat("cannot resolve listen address ", host, ":", port, ": ", ec.message()),
              "pass an address of this machine, e.g. 0.0.0.0 or 127.0.0.1");
  auto ep = eps.begin()->endpoint();
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  RESBM_CHECK(!ec, cat("cannot listen on ", host, ":", port, ": ", ec.message()),
              "pick a free port (0 lets the OS choose) or stop the process that holds it");
}

// Waits up to `timeout` for a connection on `acceptor` into `sock`.
inline void accept_within(tcp::acceptor& acceptor, asio::io_context& io, tcp::socket& sock,
                          std::chrono::milliseconds timeout) {
  boost::system::error_code ec;
  bool done = false;
  acceptor.async_accept(sock, [&](const boost::system::error_code& e) {
    ec = e;
    done = true;
  });
  io.restart();
  io.run_for(timeout);
  const std::string address = endpoint_text(acceptor.local_endpoint());
  if (!done) {
    boost::system::error_code ignore;
    acceptor.cancel(ignore);
    io.restart();
    io.run();
    if (!done || ec == asio::error::operation_aborted)
      fail(cat("no stage connected to ", address, " within ", timeout_text(timeout)),
           "start the neighbouring stage, check that it points at this address, or raise the accept timeout");
  }
  RESBM_CHECK(!ec, cat("accepting a connection on ", address, " failed: ", ec.message()),
              "check the system's socket limits");
}

// The socket options of every stream link, then the peer's address for messages.
inline std::string prepare_socket(tcp::socket& sock, bool non_blocking) {
  boost::system::error_code ec;
  sock.set_option(tcp::no_delay(true), ec);  // frames are whole messages: no Nagle delay
  sock.non_blocking(non_blocking, ec);
  RESBM_CHECK(!ec, cat("cannot set the socket's blocking mode: ", ec.message()), "report this as a bug");
  auto ep = sock.remote_endpoint(ec);
  return ec ? std::string("<unknown peer>") : endpoint_text(ep);
}
}  // namespace detail

// The handshake payload: JSON, so that a mismatch can be reported field by field and a
// future field does not need a new frame version. The config hash travels as 16 hex
// digits because JSON numbers are exact only to 2^53.
inline std::string encode_handshake(const Handshake& h, bool ok = true, const std::string& error = {}) {
  io::Json j = io::Json::object();
  j.set("run_id", h.run_id);
  j.set("stage", h.stage);
  j.set("n_stages", h.n_stages);
  j.set("config_hash", detail::hex64(h.config_hash));
  j.set("ok", ok);
  if (!error.empty()) j.set("error", error);
  return j.dump();
}

struct HandshakeReply {
  Handshake peer;
  bool ok = true;
  std::string error;  // the peer's reason when it refused
};

inline HandshakeReply decode_handshake(std::span<const std::byte> payload, const std::string& from) {
  try {
    io::Json j = io::Json::parse(
        std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size()));
    HandshakeReply r;
    r.peer.run_id = j.at("run_id").as_string();
    // Range-checked before narrowing: a peer claiming stage 2^32 + 2 is not stage 2.
    auto index = [&](const char* key, int64_t lo) {
      const int64_t v = j.at(key).as_int64();
      RESBM_CHECK(v >= lo && v < (int64_t(1) << 31), cat(key, " ", v, " is out of range"),
                  "run the same resbm version on every stage");
      return int(v);
    };
    r.peer.stage = index("stage", 0);
    r.peer.n_stages = index("n_stages", 1);
    const std::string& hx = j.at("config_hash").as_string();
    RESBM_CHECK(hx.size() == 16 && hx.find_first_not_of("0123456789abcdef") == std::string::npos,
                cat("config_hash \"", hx, "\" is not 16 lowercase hex digits"),
                "run the same resbm version on every stage");
    r.peer.config_hash = std::stoull(hx, nullptr, 16);
    r.ok = j.at("ok").as_bool();
    if (const io::Json* e = j.find("error")) r.error = e->as_string();
    return r;
  } catch (const Error& e) {
    fail(cat("malformed handshake from ", from, ": ", e.problem()),
         "run the same resbm version on every stage");
  }
}

// Error unless `theirs` (who answered at `addr`) belongs with `mine`. Both ends run it, each
// naming the other, so each log says what is wrong from its own side.
inline void verify_handshake(const Handshake& mine, const Handshake& theirs, const std::string& addr) {
  std::string who = cat("peer ", addr, " (stage ", theirs.stage, ")");
  RESBM_CHECK(theirs.run_id == mine.run_id,
              cat(who, " belongs to run '", theirs.run_id, "' but this stage belongs to run '",
                  mine.run_id, "'"),
              "start every stage with the same run id, and check the peer address");
  RESBM_CHECK(theirs.n_stages == mine.n_stages,
              cat(who, " runs a pipeline of ", theirs.n_stages, " stages but this stage runs one of ",
                  mine.n_stages),
              "start every stage with the same stage count");
  RESBM_CHECK(theirs.config_hash == mine.config_hash,
              cat(who, " runs config hash ", detail::hex64(theirs.config_hash),
                  " but this stage has ", detail::hex64(mine.config_hash)),
              "start every stage with the same model and codec flags");
  if (mine.expect_peer >= 0)
    RESBM_CHECK(theirs.stage == mine.expect_peer,
                cat(who, " answered, but this stage (", mine.stage, ") expects stage ",
                    mine.expect_peer, " there"),
                "check the peer addresses: each stage connects to its neighbours");
  else
    RESBM_CHECK(theirs.stage >= 0 && theirs.stage < mine.n_stages && theirs.stage != mine.stage,
                cat(who, " is not another stage of this ", mine.n_stages,
                    "-stage pipeline (this stage is ", mine.stage, ")"),
                "give every stage a distinct index in [0, n_stages)");
}

namespace detail {
// What TcpLink and TlsLink share above the framing loop: a State on the heap (the framing
// loop's mutexes and the socket never move; the link is a movable handle), the Link
// operations, close(), and the resbm handshake. State derives from FrameChannel<Stream>
// and has `sock`, `peer_addr`, `peer_hs`, `end_session()` (what to do before the socket is
// shut down) and `kName`.
template <class State>
class StreamLink {
 public:
  StreamLink(StreamLink&&) noexcept = default;
  StreamLink& operator=(StreamLink&& o) noexcept {
    if (this != &o) {
      close_quietly();
      st_ = std::move(o.st_);
    }
    return *this;
  }
  ~StreamLink() { close_quietly(); }

  void send(const FrameHeader& h, std::span<const std::byte> payload) { state().send(h, payload); }

  Message recv(Kind expected, std::chrono::milliseconds timeout) {
    Message m;
    m.header = state().recv(expected, timeout, m.payload);
    return m;
  }

  // recv() into the caller's buffer, which keeps its capacity from call to call: once it
  // has grown to the frame size, a frame costs no allocation and no zero-fill. On return
  // payload.size() is the frame's payload length, and no byte of an earlier (longer) frame
  // is left in it; on an Error it is empty.
  FrameHeader recv_into(Kind expected, std::chrono::milliseconds timeout, std::vector<std::byte>& payload) {
    return state().recv(expected, timeout, payload);
  }

  // Sends a shutdown frame (bounded by one second: the peer may be gone), ends the session
  // (TLS: close_notify), then shuts the socket down in both directions, which also wakes a
  // recv() blocked on another thread. Linux delivers data queued before a reset, so the
  // peer still reads the shutdown frame.
  void close() {
    if (!st_ || st_->closed.exchange(true)) return;
    st_->send_shutdown_frame();
    st_->end_session();
    boost::system::error_code ignore;
    st_->sock.shutdown(tcp::socket::shutdown_both, ignore);
  }

  std::string peer() const { return st_ ? st_->peer_name : "<moved-from link>"; }
  // The peer's handshake: its run id, stage index, stage count and config hash.
  const Handshake& peer_handshake() const { return state().peer_hs; }
  uint16_t local_port() const { return state().sock.local_endpoint().port(); }

  LinkStats stats() const { return st_ ? st_->stats_now() : LinkStats{}; }

 protected:
  explicit StreamLink(std::unique_ptr<State> st) : st_(std::move(st)) {}

  State& state() const {
    RESBM_CHECK(st_, cat("use of a moved-from ", State::kName), "keep using the link it was moved to");
    return *st_;
  }

  // The resbm handshake over the established stream, the connecting side first; `check`
  // throws when the peer's handshake does not belong with this stage's. A refusal is sent
  // to the peer before it is thrown here, so that both logs carry the reason.
  template <class Check>
  void exchange_handshakes(const Handshake& mine, bool initiator, Check&& check) {
    State& s = *st_;
    auto payload_of = [](const std::string& t) {
      return std::span(reinterpret_cast<const std::byte*>(t.data()), t.size());
    };
    FrameHeader h;
    if (initiator) {
      h.kind = Kind::handshake;
      send(h, payload_of(encode_handshake(mine)));
      Message m = recv(Kind::handshake_ack, s.opt.handshake_timeout);
      HandshakeReply r = decode_handshake(m.payload, s.peer_addr);
      check(r.peer);
      RESBM_CHECK(r.ok, cat("peer ", s.peer_addr, " (stage ", r.peer.stage, ") refused the handshake: ", r.error),
                  "see the peer's log; start every stage with the same flags");
      s.peer_hs = r.peer;
    } else {
      Message m = recv(Kind::handshake, s.opt.handshake_timeout);
      HandshakeReply r = decode_handshake(m.payload, s.peer_addr);
      h.kind = Kind::handshake_ack;
      try {
        check(r.peer);
      } catch (const Error& e) {
        try {
          send(h, payload_of(encode_handshake(mine, false, e.what())));
        } catch (const Error&) {
        }
        throw;
      }
      send(h, payload_of(encode_handshake(mine)));
      s.peer_hs = r.peer;
    }
    s.peer_name = cat(s.peer_addr, " (stage ", s.peer_hs.stage, ")");
  }

  void close_quietly() noexcept {
    try {
      close();
    } catch (...) {
      // Destructors must not throw; failing to say goodbye is harmless.
    }
  }

  std::unique_ptr<State> st_;
};

struct TcpState : FrameChannel<TcpStream> {
  static constexpr const char* kName = "TcpLink";
  explicit TcpState(const TcpOptions& o) : FrameChannel(o) {}
  void end_session() {}
  asio::io_context io;
  tcp::socket sock{io};
  std::string peer_addr;
  Handshake peer_hs;
};
}  // namespace detail

class TcpListener;

class TcpLink : public detail::StreamLink<detail::TcpState> {
 public:
  using Options = TcpOptions;

  // Connects to host:port, retrying with exponential back-off (retry_initial doubling up
  // to retry_max) until connect_timeout has passed in total, then handshakes. A refused
  // handshake is not retried: a wrong config does not fix itself.
  static TcpLink connect(const std::string& host, uint16_t port, const Handshake& hs,
                         const Options& opt = {}) {
    auto st = std::make_unique<detail::TcpState>(opt);
    detail::connect_with_retry(st->io, st->sock, host, port, opt);
    TcpLink link(std::move(st));
    link.start(hs, /*initiator=*/true);
    return link;
  }

 private:
  friend class TcpListener;

  explicit TcpLink(std::unique_ptr<detail::TcpState> st) : StreamLink(std::move(st)) {}

  // After the TCP connection is up: socket options (blocking: see the top of this file),
  // then the handshake in the direction given (the connecting side speaks first).
  void start(const Handshake& mine, bool initiator) {
    detail::TcpState& s = *st_;
    s.peer_addr = detail::prepare_socket(s.sock, /*non_blocking=*/false);
    s.peer_name = s.peer_addr;
    s.stream.attach(s.sock.native_handle());
    exchange_handshakes(mine, initiator, [&](const Handshake& theirs) { verify_handshake(mine, theirs, s.peer_addr); });
  }
};
static_assert(Link<TcpLink>);

// Listens on host:port (port 0: any free port, see port()). Each accept() yields one link.
class TcpListener {
 public:
  TcpListener(const std::string& host, uint16_t port) : acceptor_(io_) {
    detail::listen_on(acceptor_, io_, host, port);
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::string address() const { return detail::endpoint_text(acceptor_.local_endpoint()); }

  // Waits up to opt.accept_timeout for a stage to connect, then handshakes. A failed
  // handshake is an Error; the listener stays open for the next accept().
  TcpLink accept(const Handshake& hs, const TcpOptions& opt = {}) {
    auto st = std::make_unique<detail::TcpState>(opt);
    detail::accept_within(acceptor_, io_, st->sock, opt.accept_timeout);
    TcpLink link(std::move(st));
    link.start(hs, /*initiator=*/false);
    return link;
  }

 private:
  detail::asio::io_context io_;
  detail::tcp::acceptor acceptor_;
};

}  // namespace resbm::transport
