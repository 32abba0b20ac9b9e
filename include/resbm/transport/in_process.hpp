#pragma once
// Links between stages that are threads of one process (tests, the default demo). Frames
// are encoded, checksummed, decoded and validated exactly as on a socket, so byte counts,
// limits and corruption checks are the real ones; only the socket is replaced by a
// mutex-guarded queue per direction.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "resbm/transport/concepts.hpp"

namespace resbm::transport {

namespace detail {
struct InProcessQueue {
  struct Frame {
    HeaderBytes header;
    std::vector<std::byte> payload;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Frame> frames;
  bool reader_closed = false;  // the receiving endpoint closed: sends fail
  bool writer_closed = false;  // the sending endpoint closed: nothing more will come
};

struct InProcessShared {
  InProcessQueue queue[2];  // queue[i] carries frames sent by endpoint i
  Limits limits;
  std::string name[2];
};
}  // namespace detail

class InProcessLink {
 public:
  InProcessLink(InProcessLink&&) noexcept = default;
  InProcessLink& operator=(InProcessLink&& o) noexcept {
    if (this != &o) {
      close_quietly();
      shared_ = std::move(o.shared_);
      self_ = std::move(o.self_);
      side_ = o.side_;
    }
    return *this;
  }
  ~InProcessLink() { close_quietly(); }

  void send(const FrameHeader& h, std::span<const std::byte> payload) {
    auto t0 = std::chrono::steady_clock::now();
    RESBM_CHECK(self_, "send on a moved-from InProcessLink", "keep using the link it was moved to");
    RESBM_CHECK(payload.size() <= shared_->limits.max_payload,
                cat("payload of ", payload.size(), " bytes exceeds the configured maximum ",
                    shared_->limits.max_payload),
                "raise --max-frame or check the peer's config");
    detail::InProcessQueue::Frame f;
    f.header = encode_header(seal(h, payload));
    f.payload.assign(payload.begin(), payload.end());
    push(std::move(f), h.kind);
    std::lock_guard lk(self_->mu);
    self_->stats.bytes_sent += kHeaderSize + payload.size();
    self_->stats.frames_sent += 1;
    self_->stats.send_seconds += seconds_since(t0);
  }

  Message recv(Kind expected, std::chrono::milliseconds timeout) {
    auto t0 = std::chrono::steady_clock::now();
    RESBM_CHECK(self_, "recv on a moved-from InProcessLink", "keep using the link it was moved to");
    auto deadline = t0 + timeout;
    auto& q = shared_->queue[1 - side_];
    for (;;) {
      detail::InProcessQueue::Frame f;
      {
        std::unique_lock lk(q.mu);
        // This endpoint's close() flags its own queue and notifies this cv as well.
        bool ready = q.cv.wait_until(lk, deadline, [&] {
          return !q.frames.empty() || q.writer_closed || self_->closed.load();
        });
        if (self_->closed.load())
          throw LinkClosed(cat("link to ", peer(), " was closed by this stage"),
                           "do not receive after close()");
        if (q.frames.empty() && q.writer_closed)
          throw LinkClosed(cat("peer ", peer(), " shut the link down while this stage waited for ",
                               kind_name(expected), " frame"),
                           "");
        if (!ready) {
          account_recv(0, 0, t0);
          detail::throw_timeout(peer(), expected, timeout);
        }
        f = std::move(q.frames.front());
        q.frames.pop_front();
      }
      Message m;
      m.header = detail::with_peer(peer(), [&] {
        FrameHeader hh = decode_header(f.header.data(), f.header.size(), shared_->limits);
        verify_payload(hh, f.payload);
        return hh;
      });
      account_recv(kHeaderSize + f.payload.size(), 1, t0);
      if (!detail::deliverable(m.header, expected, peer())) {
        t0 = std::chrono::steady_clock::now();
        continue;
      }
      m.payload = std::move(f.payload);
      return m;
    }
  }

  // Queues a shutdown frame behind everything already sent, then refuses further use.
  void close() {
    if (!self_ || self_->closed) return;
    self_->closed = true;
    auto& out = shared_->queue[side_];
    {
      std::lock_guard lk(out.mu);
      if (!out.reader_closed) {
        detail::InProcessQueue::Frame f;
        FrameHeader h;
        h.kind = Kind::shutdown;
        f.header = encode_header(seal(h, {}));
        out.frames.push_back(std::move(f));
      }
      out.writer_closed = true;
    }
    out.cv.notify_all();
    auto& in = shared_->queue[1 - side_];
    {
      std::lock_guard lk(in.mu);
      in.reader_closed = true;
      in.frames.clear();
    }
    // Wakes a recv() of this endpoint blocked on the incoming queue.
    in.cv.notify_all();
  }

  std::string peer() const { return shared_ ? shared_->name[1 - side_] : "<moved-from link>"; }

  LinkStats stats() const {
    if (!self_) return {};
    std::lock_guard lk(self_->mu);
    return self_->stats;
  }

 private:
  struct Self {
    mutable std::mutex mu;
    LinkStats stats;
    std::atomic<bool> closed{false};
  };

  InProcessLink(std::shared_ptr<detail::InProcessShared> s, int side)
      : shared_(std::move(s)), self_(std::make_unique<Self>()), side_(side) {}
  friend std::pair<InProcessLink, InProcessLink> make_in_process_pair(Limits, std::string,
                                                                      std::string);

  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  void push(detail::InProcessQueue::Frame f, Kind kind) {
    auto& out = shared_->queue[side_];
    {
      std::lock_guard lk(out.mu);
      RESBM_CHECK(!self_->closed.load(),
                  cat("cannot send ", kind_name(kind), " frame: link to ", peer(),
                      " was closed by this stage"),
                  "do not send after close()");
      RESBM_CHECK(!out.reader_closed,
                  cat("cannot send ", kind_name(kind), " frame: ", peer(), " closed the link"),
                  "stop this stage too, or find out why the peer stopped");
      out.frames.push_back(std::move(f));
    }
    out.cv.notify_all();
  }

  void account_recv(uint64_t bytes, uint64_t frames, std::chrono::steady_clock::time_point t0) {
    std::lock_guard lk(self_->mu);
    self_->stats.bytes_received += bytes;
    self_->stats.frames_received += frames;
    self_->stats.recv_seconds += seconds_since(t0);
  }

  void close_quietly() noexcept {
    try {
      close();
    } catch (...) {
      // Destructors must not throw; a failed shutdown frame only means the peer is gone.
    }
  }

  std::shared_ptr<detail::InProcessShared> shared_;
  std::unique_ptr<Self> self_;
  int side_ = 0;
};
static_assert(Link<InProcessLink>);

// Two connected endpoints: what the first sends, the second receives, and back.
inline std::pair<InProcessLink, InProcessLink> make_in_process_pair(
    Limits limits = {}, std::string name_a = "in-process:a", std::string name_b = "in-process:b") {
  auto s = std::make_shared<detail::InProcessShared>();
  s->limits = limits;
  s->name[0] = std::move(name_a);
  s->name[1] = std::move(name_b);
  return {InProcessLink(s, 0), InProcessLink(s, 1)};
}

}  // namespace resbm::transport
