#pragma once
// Frames over TCP (Boost.Asio), for one process per stage on one host or across the
// internet.
//
// Deadlines. Asio's blocking calls have no timeout, and SO_RCVTIMEO does not help: on
// EAGAIN Asio's synchronous read falls back to poll() with no timeout. Async operations
// with io_context::run_for would make the sending and the receiving thread run one
// io_context, and each run_for returns only when *both* operations are done. So the
// socket is put in non-blocking mode, Asio does the reads and (gather) writes, and a
// poll() on the descriptor with the remaining time does the waiting. Connect and accept,
// which happen before the link is shared between threads, use async ops + run_for.
//
// Two clocks. recv(kind, timeout) waits `timeout` for the *start* of a frame; once a frame
// has started, only a stall (no byte for Options::stall_timeout) is an Error. A large frame
// over a slow link then takes as long as it needs, while a peer that dies mid-frame is
// still caught. A timeout before the first byte consumes nothing and leaves the link
// usable; any failure inside a frame leaves the stream out of step, so the link is marked
// broken and every later call repeats that Error.
#include <poll.h>
#include <sys/socket.h>

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

struct TcpOptions {
  Limits limits;                                       // largest payload accepted (--max-frame)
  std::chrono::milliseconds connect_timeout{30000};    // connect: total over all attempts
  std::chrono::milliseconds retry_initial{50};         // first back-off, doubled each attempt
  std::chrono::milliseconds retry_max{2000};           // back-off ceiling
  std::chrono::milliseconds accept_timeout{300000};    // accept: wait for a peer to connect
  std::chrono::milliseconds handshake_timeout{30000};  // wait for the peer's handshake frame
  std::chrono::milliseconds stall_timeout{60000};      // mid-frame: no progress for this long
};

namespace detail {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

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

inline double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Waits until fd is ready for `events` or the deadline passes; false on timeout.
inline bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() < 0) left = std::chrono::milliseconds(0);
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, int(std::min<int64_t>(left.count(), 1 << 30)));
    if (r > 0) return true;  // ready, or an error/hangup the next read/write reports
    if (r < 0 && errno != EINTR)
      fail(cat("poll() on a socket failed: ", std::strerror(errno)), "report this as a bug");
    if (r == 0 && Clock::now() >= deadline) return false;
  }
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

class TcpListener;

class TcpLink {
 public:
  using Options = TcpOptions;

  // Connects to host:port, retrying with exponential back-off (retry_initial doubling up
  // to retry_max) until connect_timeout has passed in total, then handshakes. A refused
  // handshake is not retried: a wrong config does not fix itself.
  static TcpLink connect(const std::string& host, uint16_t port, const Handshake& hs,
                         const Options& opt = {}) {
    namespace asio = detail::asio;
    auto st = std::make_unique<State>(opt);
    auto t0 = detail::Clock::now();
    auto deadline = t0 + opt.connect_timeout;
    auto backoff = opt.retry_initial;
    int attempts = 0;
    std::string last_error;
    for (;;) {
      ++attempts;
      boost::system::error_code ec;
      detail::tcp::resolver resolver(st->io);
      auto endpoints = resolver.resolve(host, std::to_string(port), ec);
      if (!ec) {
        bool done = false;
        asio::async_connect(st->sock, endpoints,
                            [&](const boost::system::error_code& e, const detail::tcp::endpoint&) {
                              ec = e;
                              done = true;
                            });
        st->io.restart();
        st->io.run_for(std::max(deadline - detail::Clock::now(), detail::Clock::duration(0)));
        if (!done) {
          boost::system::error_code ignore;
          st->sock.close(ignore);  // cancels the pending connect
          st->io.restart();
          st->io.run();
          ec = asio::error::timed_out;
        }
        if (!ec) break;
        boost::system::error_code ignore;
        st->sock.close(ignore);
      }
      last_error = ec.message();
      auto now = detail::Clock::now();
      if (now >= deadline)
        fail(cat("could not connect to ", host, ":", port, " after ", attempts, " attempts in ",
                 std::chrono::duration_cast<std::chrono::milliseconds>(now - t0).count(),
                 " ms (last error: ", last_error, ")"),
             cat("start the stage that listens on ", host, ":", port,
                 " first, check the host, port and firewall, or raise the connect timeout"));
      std::this_thread::sleep_for(std::min<detail::Clock::duration>(backoff, deadline - now));
      backoff = std::min(backoff * 2, opt.retry_max);
    }
    TcpLink link(std::move(st));
    link.start(hs, /*initiator=*/true);
    return link;
  }

  TcpLink(TcpLink&&) noexcept = default;
  TcpLink& operator=(TcpLink&& o) noexcept {
    if (this != &o) {
      close_quietly();
      st_ = std::move(o.st_);
    }
    return *this;
  }
  ~TcpLink() { close_quietly(); }

  void send(const FrameHeader& h, std::span<const std::byte> payload) {
    auto t0 = detail::Clock::now();
    State& s = state();
    RESBM_CHECK(payload.size() <= s.opt.limits.max_payload,
                cat("payload of ", payload.size(), " bytes exceeds the configured maximum ",
                    s.opt.limits.max_payload),
                "raise --max-frame or check the peer's config");
    std::lock_guard lk(s.send_mu);
    check_usable(cat("send ", kind_name(h.kind), " frame"));
    write_frame(seal(h, payload), payload);
    std::lock_guard sl(s.stats_mu);
    s.stats.bytes_sent += kHeaderSize + payload.size();
    s.stats.frames_sent += 1;
    s.stats.send_seconds += detail::seconds(detail::Clock::now() - t0);
  }

  Message recv(Kind expected, std::chrono::milliseconds timeout) {
    State& s = state();
    std::lock_guard lk(s.recv_mu);
    for (;;) {
      auto t0 = detail::Clock::now();
      check_usable(cat("receive ", kind_name(expected), " frame"));
      RESBM_CHECK(!s.peer_shut.load(),
                  cat("peer ", s.peer_name, " already shut the link down"),
                  "stop receiving once recv() reported LinkClosed");
      Message m;
      uint64_t bytes = 0;
      try {
        bytes = read_frame(m, expected, timeout);
      } catch (...) {
        account_recv(0, t0);
        throw;
      }
      account_recv(bytes, t0);
      if (m.header.kind == Kind::shutdown) s.peer_shut = true;
      if (detail::deliverable(m.header, expected, s.peer_name)) return m;
    }
  }

  // Sends a shutdown frame (bounded by one second: the peer may be gone), then shuts the
  // socket down in both directions, which also wakes a recv() blocked on another thread.
  // Linux delivers data queued before a reset, so the peer still reads the shutdown frame.
  void close() {
    if (!st_ || st_->closed.exchange(true)) return;
    State& s = *st_;
    if (!s.broken.load() && !s.peer_shut.load()) {
      try {
        std::lock_guard lk(s.send_mu);
        FrameHeader h;
        h.kind = Kind::shutdown;
        write_frame(seal(h, {}), {}, std::chrono::milliseconds(1000));
      } catch (const Error&) {
        // The peer is gone already; there is nobody left to tell.
      }
    }
    boost::system::error_code ignore;
    s.sock.shutdown(detail::tcp::socket::shutdown_both, ignore);
  }

  std::string peer() const { return st_ ? st_->peer_name : "<moved-from link>"; }
  // The peer's handshake: its run id, stage index, stage count and config hash.
  const Handshake& peer_handshake() const { return state().peer_hs; }
  uint16_t local_port() const { return state().sock.local_endpoint().port(); }

  LinkStats stats() const {
    if (!st_) return {};
    std::lock_guard lk(st_->stats_mu);
    return st_->stats;
  }

 private:
  friend class TcpListener;

  struct State {
    explicit State(const Options& o) : opt(o) {}
    Options opt;
    detail::asio::io_context io;
    detail::tcp::socket sock{io};
    std::string peer_addr, peer_name;
    Handshake peer_hs;
    std::mutex send_mu, recv_mu;
    mutable std::mutex stats_mu;
    LinkStats stats;
    std::atomic<bool> closed{false}, broken{false}, peer_shut{false};
    std::string broken_reason;  // under stats_mu
  };

  explicit TcpLink(std::unique_ptr<State> st) : st_(std::move(st)) {}

  State& state() const {
    RESBM_CHECK(st_, "use of a moved-from TcpLink", "keep using the link it was moved to");
    return *st_;
  }

  // After the TCP connection is up: socket options, then the handshake in the direction
  // given (the connecting side speaks first).
  void start(const Handshake& mine, bool initiator) {
    State& s = *st_;
    boost::system::error_code ec;
    s.sock.set_option(detail::tcp::no_delay(true), ec);  // frames are whole messages: no Nagle delay
    s.sock.non_blocking(true, ec);
    RESBM_CHECK(!ec, cat("cannot make the socket non-blocking: ", ec.message()), "report this as a bug");
    auto ep = s.sock.remote_endpoint(ec);
    s.peer_addr = ec ? std::string("<unknown peer>") : detail::endpoint_text(ep);
    s.peer_name = s.peer_addr;
    auto payload_of = [](const std::string& t) {
      return std::span(reinterpret_cast<const std::byte*>(t.data()), t.size());
    };
    FrameHeader h;
    if (initiator) {
      h.kind = Kind::handshake;
      send(h, payload_of(encode_handshake(mine)));
      Message m = recv(Kind::handshake_ack, s.opt.handshake_timeout);
      HandshakeReply r = decode_handshake(m.payload, s.peer_addr);
      verify_handshake(mine, r.peer, s.peer_addr);
      RESBM_CHECK(r.ok, cat("peer ", s.peer_addr, " (stage ", r.peer.stage, ") refused the handshake: ", r.error),
                  "see the peer's log; start every stage with the same flags");
      s.peer_hs = r.peer;
    } else {
      Message m = recv(Kind::handshake, s.opt.handshake_timeout);
      HandshakeReply r = decode_handshake(m.payload, s.peer_addr);
      h.kind = Kind::handshake_ack;
      try {
        verify_handshake(mine, r.peer, s.peer_addr);
      } catch (const Error& e) {
        // Tell the peer why before giving up, so that both logs carry the reason.
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

  void check_usable(const std::string& what) const {
    State& s = *st_;
    if (s.closed.load())
      throw LinkClosed(cat("cannot ", what, ": link to ", s.peer_name, " was closed by this stage"),
                       "do not use a link after close()");
    if (s.broken.load()) {
      std::lock_guard lk(s.stats_mu);
      fail(cat("cannot ", what, ": link to ", s.peer_name, " failed earlier: ", s.broken_reason),
           "reconnect, or restart the stage");
    }
  }

  [[noreturn]] void break_link(const std::string& what, const std::string& fix) {
    State& s = *st_;
    {
      std::lock_guard lk(s.stats_mu);
      if (!s.broken.load()) s.broken_reason = what;
      s.broken = true;
    }
    fail(what, fix);
  }

  void account_recv(uint64_t bytes, detail::Clock::time_point t0) {
    std::lock_guard lk(st_->stats_mu);
    st_->stats.bytes_received += bytes;
    st_->stats.frames_received += bytes ? 1 : 0;
    st_->stats.recv_seconds += detail::seconds(detail::Clock::now() - t0);
  }

  // Gather-writes header and payload: one syscall for small frames, no copy for large.
  void write_frame(const FrameHeader& h, std::span<const std::byte> payload,
                   std::chrono::milliseconds stall = std::chrono::milliseconds(0)) {
    namespace asio = detail::asio;
    State& s = *st_;
    if (stall.count() == 0) stall = s.opt.stall_timeout;
    HeaderBytes hb = encode_header(h);
    const size_t total = kHeaderSize + payload.size();
    size_t done = 0;
    auto deadline = detail::Clock::now() + stall;
    while (done < total) {
      std::array<asio::const_buffer, 2> bufs;
      size_t nb = 0;
      if (done < kHeaderSize) bufs[nb++] = asio::buffer(hb.data() + done, kHeaderSize - done);
      size_t pdone = done > kHeaderSize ? done - kHeaderSize : 0;
      if (pdone < payload.size())
        bufs[nb++] = asio::buffer(payload.data() + pdone, payload.size() - pdone);
      boost::system::error_code ec;
      size_t n = s.sock.write_some(std::span(bufs.data(), nb), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) {
        if (!detail::wait_fd(s.sock.native_handle(), POLLOUT, deadline))
          break_link(cat("sending ", kind_name(h.kind), " frame to ", s.peer_name, " timed out: the peer read nothing for ",
                         detail::timeout_text(stall), " (", done, " of ", total, " bytes sent)"),
                     "check that the peer is alive and not stuck; raise the stall timeout for very slow links");
        continue;
      }
      if (ec) {
        break_link(cat("connection to ", s.peer_name, " lost while sending ", kind_name(h.kind), " frame after ",
                       done, " of ", total, " bytes: ", ec.message()),
                   "check the peer's log: it probably exited or crashed");
      }
      done += n;
      deadline = detail::Clock::now() + stall;
    }
  }

  // Reads one whole frame into m; returns the bytes it took from the wire.
  uint64_t read_frame(Message& m, Kind expected, std::chrono::milliseconds timeout) {
    State& s = *st_;
    HeaderBytes hb;
    auto first_deadline = detail::Clock::now() + timeout;
    size_t got = 0;
    // Reads into [dst, dst + n), counting `got` against a frame of `total` bytes so far.
    auto fill = [&](std::byte* dst, size_t n, size_t total, Crc32c* crc) {
      size_t have = 0;
      auto deadline = got == 0 ? first_deadline : detail::Clock::now() + s.opt.stall_timeout;
      while (have < n) {
        boost::system::error_code ec;
        size_t k = s.sock.read_some(detail::asio::buffer(dst + have, n - have), ec);
        if (ec == detail::asio::error::would_block || ec == detail::asio::error::try_again) {
          if (detail::wait_fd(s.sock.native_handle(), POLLIN, deadline)) continue;
          if (got == 0) detail::throw_timeout(s.peer_name, expected, timeout);
          break_link(cat("peer ", s.peer_name, " stopped sending mid-frame: timed out after ",
                         detail::timeout_text(s.opt.stall_timeout), " without data, ", got, " of ",
                         total, " bytes received"),
                     "check that the peer is alive; raise the stall timeout for very slow links");
        }
        if (ec) {
          if (s.closed.load())
            throw LinkClosed(cat("link to ", s.peer_name, " was closed by this stage"), "");
          if (ec == detail::asio::error::eof && got == 0)
            break_link(cat("connection to ", s.peer_name, " closed by the peer without a shutdown frame"),
                       "check the peer's log: it probably exited or crashed");
          if (ec == detail::asio::error::eof)
            break_link(cat("connection to ", s.peer_name, " closed mid-frame after ", got, " of ", total,
                           " bytes"),
                       "check the peer's log: it probably exited or crashed while sending");
          break_link(cat("connection to ", s.peer_name, " failed after ", got, " of ", total,
                         " bytes of a frame: ", ec.message()),
                     "check the peer's log and the network");
        }
        if (crc) crc->update(dst + have, k);
        // The magic is checked as soon as it is in: a client of another protocol that
        // sends a short request and waits is told "wrong port" at once, not after a stall.
        if (got < 4 && got + k >= 4) {
          try {
            detail::with_peer(s.peer_name, [&] { check_magic(hb.data()); });
          } catch (const Error& e) {
            break_link(e.problem(), e.fix());
          }
        }
        have += k;
        got += k;
        deadline = detail::Clock::now() + s.opt.stall_timeout;
      }
    };
    fill(hb.data(), kHeaderSize, kHeaderSize, nullptr);
    try {
      m.header = detail::with_peer(s.peer_name, [&] { return decode_header(hb.data(), hb.size(), s.opt.limits); });
    } catch (const Error& e) {
      break_link(e.problem(), e.fix());
    }
    const size_t total = kHeaderSize + m.header.payload_len;
    m.payload.resize(m.header.payload_len);  // bounded by limits.max_payload above
    Crc32c crc;
    fill(m.payload.data(), m.payload.size(), total, &crc);
    if (crc.value() != m.header.crc)
      break_link(cat("from ", s.peer_name, ": payload corrupted in transit (", kind_name(m.header.kind),
                     " frame, step ", m.header.step, ", micro-batch ", m.header.micro_batch,
                     ": crc32c ", detail::hex32(crc.value()), ", header says ", detail::hex32(m.header.crc), ")"),
                 "check the network path (NIC, proxy, cable); the frame was rejected");
    return total;
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
static_assert(Link<TcpLink>);

// Listens on host:port (port 0: any free port, see port()). Each accept() yields one link.
class TcpListener {
 public:
  TcpListener(const std::string& host, uint16_t port) : acceptor_(io_) {
    boost::system::error_code ec;
    detail::tcp::resolver resolver(io_);
    auto eps = resolver.resolve(host, std::to_string(port), detail::tcp::resolver::passive, ec);
    RESBM_CHECK(!ec && !eps.empty(), cat("cannot resolve listen address ", host, ":", port, ": ", ec.message()),
                "pass an address of this machine, e.g. 0.0.0.0 or 127.0.0.1");
    auto ep = eps.begin()->endpoint();
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(detail::tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(detail::asio::socket_base::max_listen_connections, ec);
    RESBM_CHECK(!ec, cat("cannot listen on ", host, ":", port, ": ", ec.message()),
                "pick a free port (0 lets the OS choose) or stop the process that holds it");
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::string address() const { return detail::endpoint_text(acceptor_.local_endpoint()); }

  // Waits up to opt.accept_timeout for a stage to connect, then handshakes. A failed
  // handshake is an Error; the listener stays open for the next accept().
  TcpLink accept(const Handshake& hs, const TcpOptions& opt = {}) {
    auto st = std::make_unique<TcpLink::State>(opt);
    boost::system::error_code ec;
    bool done = false;
    acceptor_.async_accept(st->sock, [&](const boost::system::error_code& e) {
      ec = e;
      done = true;
    });
    io_.restart();
    io_.run_for(opt.accept_timeout);
    if (!done) {
      boost::system::error_code ignore;
      acceptor_.cancel(ignore);
      io_.restart();
      io_.run();
      if (!done || ec == detail::asio::error::operation_aborted)
        fail(cat("no stage connected to ", address(), " within ", detail::timeout_text(opt.accept_timeout)),
             "start the neighbouring stage, check that it points at this address, or raise the accept timeout");
    }
    RESBM_CHECK(!ec, cat("accepting a connection on ", address(), " failed: ", ec.message()),
                "check the system's socket limits");
    TcpLink link(std::move(st));
    link.start(hs, /*initiator=*/false);
    return link;
  }

 private:
  detail::asio::io_context io_;
  detail::tcp::acceptor acceptor_;
};

}  // namespace resbm::transport
