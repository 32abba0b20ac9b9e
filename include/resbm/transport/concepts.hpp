#pragma once
// What a pipeline stage needs from the connection to a neighbouring stage. Links move
// frames (frame.hpp) and know nothing of codecs: the payload is opaque bytes.
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/error.hpp"
#include "resbm/transport/frame.hpp"

namespace resbm::transport {

// One received frame: its validated header and its payload (crc already checked).
struct Message {
  FrameHeader header;
  std::vector<std::byte> payload;
};

// Counters of one link endpoint. Bytes include the 48-byte headers, so
// bytes / payload bytes is the framing overhead and the compression ratio is measured on
// the wire. The seconds are wall time spent blocked inside send() and recv(). The shutdown
// frame that close() sends is not counted: stats describe the run, not its teardown.
struct LinkStats {
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t frames_sent = 0;
  uint64_t frames_received = 0;
  double send_seconds = 0;
  double recv_seconds = 0;
};

// recv() saw the peer's shutdown frame (or the link was closed here): the end of a run,
// not a fault. Catch it apart from other Errors to stop a stage cleanly.
class LinkClosed : public Error {
 public:
  using Error::Error;
};

// recv() waited `timeout` without the start of a frame. Nothing was consumed: the link
// stays usable, and a caller may wait again (e.g. after checking a heartbeat).
class LinkTimeout : public Error {
 public:
  using Error::Error;
};

// Link: one endpoint of a bidirectional, ordered, reliable frame channel.
//   send(h, payload)      sends one frame: kind, step, micro_batch and stream from h,
//                         payload_len and crc computed from payload. Blocks until the
//                         bytes are handed to the OS (or the peer's queue). Safe to call
//                         while another thread is inside recv(); concurrent senders are
//                         serialised, frames never interleave.
//   recv(expected, t)     the next frame, which must be of kind `expected`. Heartbeats are
//                         skipped unless expected. A shutdown frame is LinkClosed; a frame of
//                         another kind is an Error (the two stages disagree on the schedule).
//                         Waiting t without a frame is LinkTimeout naming the peer, the kind
//                         and t. Corrupt, oversized or truncated frames are Errors.
//   close()               sends a shutdown frame (best effort) and releases the channel.
//                         Idempotent.
//   peer()                who is on the other end, for messages ("10.0.0.2:5001 (stage 2)")
//   stats()               LinkStats so far; callable from any thread.
template <class L>
concept Link = requires(L& link, const L& clink, const FrameHeader& h,
                        std::span<const std::byte> payload, Kind kind,
                        std::chrono::milliseconds timeout) {
  link.send(h, payload);
  { link.recv(kind, timeout) } -> std::same_as<Message>;
  link.close();
  { clink.peer() } -> std::convertible_to<std::string>;
  { clink.stats() } -> std::same_as<LinkStats>;
};

// recv() into a buffer the caller keeps from frame to frame: the link's own recv_into()
// where it has one (TcpLink, TlsLink: the buffer's capacity is reused, so a frame costs no
// allocation and no zero-fill once it has grown), else recv() and a move. On return
// payload.size() is the frame's payload length, and nothing of an earlier frame remains
// in it; on an Error it is empty.
template <Link L>
FrameHeader recv_into(L& link, Kind expected, std::chrono::milliseconds timeout, std::vector<std::byte>& payload) {
  if constexpr (requires { { link.recv_into(expected, timeout, payload) } -> std::same_as<FrameHeader>; }) {
    return link.recv_into(expected, timeout, payload);
  } else {
    payload.clear();
    Message m = link.recv(expected, timeout);
    payload = std::move(m.payload);
    return m.header;
  }
}

namespace detail {
// The part of recv() common to every link, once a valid frame is in hand: true to
// deliver it, false to skip it (a heartbeat nobody waits for); throws otherwise.
inline bool deliverable(const FrameHeader& h, Kind expected, const std::string& peer) {
  if (h.kind == expected) return true;
  if (h.kind == Kind::heartbeat) return false;
  if (h.kind == Kind::shutdown)
    throw LinkClosed(cat("peer ", peer, " shut the link down while this stage waited for ",
                         kind_name(expected), " frame"),
                     "");
  fail(cat("expected ", kind_name(expected), " frame from ", peer, " but received ",
           kind_name(h.kind), " frame (step ", h.step, ", micro-batch ", h.micro_batch,
           ", stream ", h.stream, ")"),
       "run the same schedule and stage layout on every stage");
}

inline std::string timeout_text(std::chrono::milliseconds t) {
  return t.count() % 1000 == 0 ? cat(t.count() / 1000, " s") : cat(t.count(), " ms");
}

[[noreturn]] inline void throw_timeout(const std::string& peer, Kind expected,
                                       std::chrono::milliseconds t) {
  throw LinkTimeout(cat("no ", kind_name(expected), " frame from ", peer, " within ",
                        timeout_text(t)),
                    "check that the peer is alive and on the same step, or raise --timeout");
}

// Runs f and prefixes its Error with the peer's name, keeping the fix and the type.
template <class F>
auto with_peer(const std::string& peer, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const LinkClosed&) {
    throw;
  } catch (const LinkTimeout&) {
    throw;
  } catch (const Error& e) {
    throw Error(cat("from ", peer, ": ", e.problem()), e.fix());
  }
}
}  // namespace detail

}  // namespace resbm::transport
