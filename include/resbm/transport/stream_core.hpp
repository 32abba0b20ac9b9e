#pragma once
// The framing loop shared by the links over a byte stream (TcpLink in the clear, TlsLink
// inside TLS): one place that turns frames into bytes and back, with the validation, the
// two clocks, the error messages, "broken links stay broken" and the stats. A link's State
// derives from FrameChannel<Stream>; the Stream does only the bounded I/O steps:
//
//   IoStep read(std::byte* p, size_t n, Clock::time_point deadline)
//       at least one byte into [p, p + n), or why not (timed_out once `deadline` passed,
//       eof, failed); never consumes more than n bytes.
//   IoStep write(const HeaderBytes& h, std::span<const std::byte> payload, size_t done,
//                Clock::time_point deadline)
//       some bytes of the frame h + payload from offset `done` on (gathered as the stream
//       can), or why not.
//   static constexpr bool kAuthenticated   bytes cannot change in transit (TLS): a crc
//                                          mismatch is then the peer's bug, not the wire's
//   static constexpr const char* kEofFix   the fix for "closed without a shutdown frame"
//
// Two clocks. recv(kind, timeout) waits `timeout` for the *start* of a frame; once a frame
// has started, only a stall (no byte for TcpOptions::stall_timeout) is an Error. A large
// frame over a slow link then takes as long as it needs, while a peer that dies mid-frame
// is still caught. A timeout before the first byte consumes nothing and leaves the link
// usable; any failure inside a frame leaves the stream out of step, so the link is marked
// broken and every later call repeats that Error.
//
// Cost per frame, beyond the bytes the kernel copies: one crc32c pass on each side (the
// receiver's runs on each piece as it lands, while it is in cache), no allocation and no
// string formatting on the success path, and, with recv_into(), no allocation or zero-fill
// of the payload either once the caller's buffer has grown to the frame size.
#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "resbm/transport/concepts.hpp"

namespace resbm::transport {

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
using Clock = std::chrono::steady_clock;

inline double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Milliseconds left until `deadline`, rounded up, clamped to [0, 2^30].
inline int64_t ms_left(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return std::clamp<int64_t>(left, 0, int64_t(1) << 30);
}

// Waits until fd is ready for `events` or the deadline passes; false on timeout.
inline bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, int(ms_left(deadline)));
    if (r > 0) return true;  // ready, or an error/hangup the next read/write reports
    if (r < 0 && errno != EINTR)
      fail(cat("poll() on a socket failed: ", std::strerror(errno)), "report this as a bug");
    if (r == 0 && Clock::now() >= deadline) return false;
  }
}

// What one bounded step on a byte stream did.
struct IoStep {
  enum Result : uint8_t { done, timed_out, eof, failed, refused } result = done;
  size_t bytes = 0;
  std::string reason;        // failed: the system's or the library's words
  std::string problem, fix;  // refused: the stream's own complete message (TLS alerts)
};

template <class Stream>
class FrameChannel {
 public:
  explicit FrameChannel(const TcpOptions& o) : opt(o) {}

  TcpOptions opt;
  Stream stream;
  std::string peer_name;
  std::mutex send_mu, recv_mu;
  mutable std::mutex stats_mu;
  LinkStats stats;
  std::atomic<bool> closed{false}, broken{false}, peer_shut{false};
  std::string broken_reason;  // under stats_mu

  void send(const FrameHeader& h, std::span<const std::byte> payload) {
    const auto t0 = Clock::now();
    RESBM_CHECK(payload.size() <= opt.limits.max_payload,
                cat("payload of ", payload.size(), " bytes exceeds the configured maximum ",
                    opt.limits.max_payload),
                "raise --max-frame or check the peer's config");
    std::lock_guard lk(send_mu);
    check_usable("send", h.kind);
    write_frame(seal(h, payload), payload, opt.stall_timeout);
    std::lock_guard sl(stats_mu);
    stats.bytes_sent += kHeaderSize + payload.size();
    stats.frames_sent += 1;
    stats.send_seconds += seconds(Clock::now() - t0);
  }

  // The next frame of kind `expected` (heartbeats skipped); its payload lands in `payload`.
  // A buffer passed again keeps its capacity: it is zero-filled only where it grows, and
  // shrunk to the frame's length afterwards, so no byte of an earlier, longer frame stays
  // visible. On any Error `payload` is left empty.
  FrameHeader recv(Kind expected, std::chrono::milliseconds timeout, std::vector<std::byte>& payload) {
    std::lock_guard lk(recv_mu);
    try {
      for (;;) {
        const auto t0 = Clock::now();
        check_usable("receive", expected);
        RESBM_CHECK(!peer_shut.load(), cat("peer ", peer_name, " already shut the link down"),
                    "stop receiving once recv() reported LinkClosed");
        FrameHeader h;
        uint64_t bytes = 0;
        try {
          bytes = read_frame(h, payload, expected, timeout);
        } catch (...) {
          account_recv(0, t0);
          throw;
        }
        account_recv(bytes, t0);
        if (h.kind == Kind::shutdown) peer_shut = true;
        if (deliverable(h, expected, peer_name)) return h;
      }
    } catch (...) {
      payload.clear();
      throw;
    }
  }

  // The shutdown frame of close(), bounded by one second (the peer may be gone). The
  // caller has set `closed`.
  void send_shutdown_frame() noexcept {
    if (broken.load() || peer_shut.load()) return;
    try {
      std::lock_guard lk(send_mu);
      FrameHeader h;
      h.kind = Kind::shutdown;
      write_frame(seal(h, {}), {}, std::chrono::milliseconds(1000));
    } catch (...) {
      // The peer is gone already; there is nobody left to tell.
    }
  }

  void check_usable(const char* verb, Kind k) const {
    if (closed.load())
      throw LinkClosed(cat("cannot ", verb, " ", kind_name(k), " frame: link to ", peer_name,
                           " was closed by this stage"),
                       "do not use a link after close()");
    if (broken.load()) {
      std::lock_guard lk(stats_mu);
      fail(cat("cannot ", verb, " ", kind_name(k), " frame: link to ", peer_name, " failed earlier: ",
               broken_reason),
           "reconnect, or restart the stage");
    }
  }

  [[noreturn]] void break_link(const std::string& what, const std::string& fix) {
    {
      std::lock_guard lk(stats_mu);
      if (!broken.load()) broken_reason = what;
      broken = true;
    }
    fail(what, fix);
  }

  LinkStats stats_now() const {
    std::lock_guard lk(stats_mu);
    return stats;
  }

 private:
  void account_recv(uint64_t bytes, Clock::time_point t0) {
    std::lock_guard lk(stats_mu);
    stats.bytes_received += bytes;
    stats.frames_received += bytes ? 1 : 0;
    stats.recv_seconds += seconds(Clock::now() - t0);
  }

  void write_frame(const FrameHeader& h, std::span<const std::byte> payload, std::chrono::milliseconds stall) {
    const HeaderBytes hb = encode_header(h);
    const size_t total = kHeaderSize + payload.size();
    size_t done = 0;
    while (done < total) {
      IoStep st = stream.write(hb, payload, done, Clock::now() + stall);
      if (st.result == IoStep::done) {
        done += st.bytes;
        continue;
      }
      if (st.result == IoStep::timed_out)
        break_link(cat("sending ", kind_name(h.kind), " frame to ", peer_name, " timed out: the peer read nothing for ",
                       timeout_text(stall), " (", done, " of ", total, " bytes sent)"),
                   "check that the peer is alive and not stuck; raise the stall timeout for very slow links");
      if (st.result == IoStep::refused) break_link(st.problem, st.fix);
      break_link(cat("connection to ", peer_name, " lost while sending ", kind_name(h.kind), " frame after ", done,
                     " of ", total, " bytes: ", st.reason.empty() ? std::string("connection closed") : st.reason),
                 "check the peer's log: it probably exited or crashed");
    }
  }

  [[noreturn]] void read_failed(const IoStep& st, size_t got, size_t total, Kind expected,
                                std::chrono::milliseconds timeout) {
    if (st.result == IoStep::timed_out) {
      if (got == 0) throw_timeout(peer_name, expected, timeout);
      break_link(cat("peer ", peer_name, " stopped sending mid-frame: timed out after ",
                     timeout_text(opt.stall_timeout), " without data, ", got, " of ", total, " bytes received"),
                 "check that the peer is alive; raise the stall timeout for very slow links");
    }
    if (closed.load())
      throw LinkClosed(cat("link to ", peer_name, " was closed by this stage while receiving"),
                       "expected while this stage shuts down (close() wakes a blocked receive); "
                       "otherwise do not close a link that is still in use");
    if (st.result == IoStep::eof && got == 0)
      break_link(cat("connection to ", peer_name, " closed by the peer without a shutdown frame"), Stream::kEofFix);
    if (st.result == IoStep::eof)
      break_link(cat("connection to ", peer_name, " closed mid-frame after ", got, " of ", total, " bytes"),
                 "check the peer's log: it probably exited or crashed while sending");
    if (st.result == IoStep::refused) break_link(st.problem, st.fix);
    break_link(cat("connection to ", peer_name, " failed after ", got, " of ", total, " bytes of a frame: ", st.reason),
               "check the peer's log and the network");
  }

  // Reads one whole frame: the header, validated before anything is sized from it, then
  // the payload into `payload`, checksummed piece by piece. Returns the bytes it took.
  uint64_t read_frame(FrameHeader& h, std::vector<std::byte>& payload, Kind expected,
                      std::chrono::milliseconds timeout) {
    HeaderBytes hb;
    const auto first_deadline = Clock::now() + timeout;
    size_t got = 0;
    // Reads into [dst, dst + n), counting `got` against a frame of `total` bytes so far.
    auto fill = [&](std::byte* dst, size_t n, size_t total, Crc32c* crc) {
      size_t have = 0;
      while (have < n) {
        IoStep st = stream.read(dst + have, n - have, got == 0 ? first_deadline : Clock::now() + opt.stall_timeout);
        if (st.result != IoStep::done) read_failed(st, got, total, expected, timeout);
        const size_t k = st.bytes;
        if (crc) crc->update(dst + have, k);
        // The magic is checked as soon as it is in: a client of another protocol that
        // sends a short request and waits is told "wrong port" at once, not after a stall.
        if (got < 4 && got + k >= 4) {
          try {
            with_peer(peer_name, [&] { check_magic(hb.data()); });
          } catch (const Error& e) {
            break_link(e.problem(), e.fix());
          }
        }
        have += k;
        got += k;
      }
    };
    fill(hb.data(), kHeaderSize, kHeaderSize, nullptr);
    try {
      h = with_peer(peer_name, [&] { return decode_header(hb.data(), hb.size(), opt.limits); });
    } catch (const Error& e) {
      break_link(e.problem(), e.fix());
    }
    const size_t n = size_t(h.payload_len);     // bounded by limits.max_payload above
    if (payload.size() < n) payload.resize(n);  // a reused buffer: only the growth is zero-filled
    Crc32c crc;
    fill(payload.data(), n, kHeaderSize + n, &crc);
    payload.resize(n);  // never grows here: drops what an earlier, longer frame left behind
    if (crc.value() != h.crc) {
      const std::string what = cat(kind_name(h.kind), " frame, step ", h.step, ", micro-batch ", h.micro_batch,
                                   ": crc32c ", hex32(crc.value()), ", header says ", hex32(h.crc));
      if constexpr (Stream::kAuthenticated)
        break_link(cat("from ", peer_name, ": payload corrupted (", what,
                       "); TLS authenticated the bytes, so the peer sent them this way"),
                   "run the same resbm version on every stage and report this as a bug");
      else
        break_link(cat("from ", peer_name, ": payload corrupted in transit (", what, ")"),
                   "check the network path (NIC, proxy, cable); the frame was rejected");
    }
    return kHeaderSize + n;
  }
};

}  // namespace detail
}  // namespace resbm::transport
