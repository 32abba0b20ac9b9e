#pragma once
// A decorator that makes any Link behave like an internet path on one host: a bandwidth
// (token bucket), a one-way latency and optional, seeded jitter, all on the send side.
// Shape both directions by wrapping both endpoints.
//
// How. send() pays for bandwidth: it blocks until the token bucket has the frame's bytes,
// which is when the last byte would have left a real NIC. The frame is then due at the
// far end `latency + jitter` later; a delivery thread hands it to the inner link at that
// time. Latency therefore overlaps the next frames' transmission, as on a real path (ten
// 20 ms frames over a 100 ms link take ~300 ms, not 1.2 s).
//
// Why a sender thread rather than timestamps read by the receiver: the receiver may be a
// plain, unshaped link in another process, and the frame header has no room for a
// delivery time (nor should it: it is the wire format). Holding the frame on the sending
// side until it is due works over any inner Link and leaves the bytes on the wire intact.
//
// Frames keep their order: a frame is never delivered before the one sent ahead of it,
// even when its own jitter is smaller (TCP does not reorder either).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "resbm/core/rng.hpp"
#include "resbm/transport/concepts.hpp"
#include "resbm/transport/in_process.hpp"

namespace resbm::transport {

struct ShapeOptions {
  double bytes_per_second = 0;                 // 0: no bandwidth limit
  uint64_t burst_bytes = uint64_t(64) << 10;   // bucket depth: bytes that may leave at once
  std::chrono::microseconds latency{0};        // one-way delay added to every frame
  std::chrono::microseconds jitter{0};         // delay += uniform(-jitter, +jitter), never below 0
  uint64_t seed = 0;                           // the jitter sequence is a function of the seed
};

// When each frame leaves and when it is due at the far end: a token bucket for the
// bandwidth, then latency + jitter, never earlier than the frame ahead. A plain value
// with the clock passed in, so that the pacing is tested exactly on made-up times, and
// Shaped only sleeps until the times it returns.
class ShapeSchedule {
 public:
  using Clock = std::chrono::steady_clock;
  struct Slot {
    Clock::time_point sent;  // the last byte has left the sender's NIC
    Clock::time_point due;   // the frame is handed to the far end
  };

  ShapeSchedule(const ShapeOptions& opt, Clock::time_point start)
      : opt_(opt), tokens_(double(opt.burst_bytes)), last_refill_(start) {
    RESBM_CHECK(opt_.bytes_per_second >= 0,
                cat("shaped link bandwidth ", opt_.bytes_per_second, " bytes/s is negative"),
                "pass a positive rate, or 0 for no limit");
    RESBM_CHECK(opt_.latency.count() >= 0 && opt_.jitter.count() >= 0,
                "shaped link latency and jitter must not be negative", "pass durations >= 0");
  }

  const ShapeOptions& options() const { return opt_; }

  // Admits a frame of `bytes` (header included) offered at `now`; frames are admitted in
  // the order they are sent, with non-decreasing `now`.
  Slot admit(Clock::time_point now, uint64_t bytes) {
    Slot s{now, now};
    if (opt_.bytes_per_second > 0) {
      // Tokens may go negative: a frame larger than the bucket waits for its own debt, so
      // the long-run rate is exactly bytes_per_second whatever the frame sizes.
      tokens_ = std::min(double(opt_.burst_bytes),
                         tokens_ + opt_.bytes_per_second * std::chrono::duration<double>(now - last_refill_).count());
      last_refill_ = now;
      tokens_ -= double(bytes);
      if (tokens_ < 0)
        s.sent += std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(-tokens_ / opt_.bytes_per_second));
    }
    s.due = std::max(s.sent + delay_of(admitted_), last_due_);
    last_due_ = s.due;
    ++admitted_;
    return s;
  }

  // The one-way delay drawn for the i-th frame (0-based): latency plus jitter from
  // Philox(seed, i), so two runs with one seed see the same delays.
  std::chrono::microseconds delay_of(uint64_t i) const {
    if (opt_.jitter.count() == 0) return opt_.latency;
    double u = Philox::uniform(opt_.seed, kJitterStream, i);  // (0, 1)
    auto d = opt_.latency.count() + int64_t(std::llround((2.0 * u - 1.0) * double(opt_.jitter.count())));
    return std::chrono::microseconds(std::max<int64_t>(d, 0));
  }

 private:
  static constexpr uint64_t kJitterStream = 0x4A4954544552ull;  // "JITTER"

  ShapeOptions opt_;
  double tokens_;
  Clock::time_point last_refill_;
  Clock::time_point last_due_{};
  uint64_t admitted_ = 0;
};

template <Link L>
class Shaped {
 public:
  using Clock = std::chrono::steady_clock;

  Shaped(L inner, const ShapeOptions& opt) : inner_(std::move(inner)), schedule_(opt, Clock::now()) {
    worker_ = std::thread([this] { deliver_loop(); });
  }
  Shaped(const Shaped&) = delete;
  Shaped& operator=(const Shaped&) = delete;
  ~Shaped() { close(); }

  void send(const FrameHeader& h, std::span<const std::byte> payload) {
    auto t0 = Clock::now();
    std::unique_lock lk(send_mu_);
    rethrow_delivery_error();
    RESBM_CHECK(!closed_, cat("cannot send ", kind_name(h.kind), " frame: shaped link to ", peer(), " is closed"),
                "do not send after close()");
    auto slot = schedule_.admit(Clock::now(), kHeaderSize + payload.size());
    // Holding send_mu_ while waiting is the point: concurrent senders share one wire.
    std::this_thread::sleep_until(slot.sent);
    Pending p;
    p.due = slot.due;
    p.header = h;
    p.payload.assign(payload.begin(), payload.end());
    {
      std::lock_guard ql(queue_mu_);
      queue_.push_back(std::move(p));
    }
    queue_cv_.notify_one();
    blocked_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  Message recv(Kind expected, std::chrono::milliseconds timeout) { return inner_.recv(expected, timeout); }
  FrameHeader recv_into(Kind expected, std::chrono::milliseconds timeout, std::vector<std::byte>& payload) {
    return transport::recv_into(inner_, expected, timeout, payload);
  }

  // Delivers every frame already sent, each at its due time, then closes the inner link
  // (which sends its shutdown frame behind them). Never throws; a delivery failure was
  // already reported by send().
  void close() {
    {
      std::lock_guard lk(send_mu_);
      if (closed_) return;
      closed_ = true;
    }
    {
      std::lock_guard ql(queue_mu_);
      stop_ = true;
    }
    queue_cv_.notify_one();
    if (worker_.joinable()) worker_.join();
    try {
      inner_.close();
    } catch (const Error&) {
      // The inner link reports its own failures on use; closing is best effort.
    }
  }

  std::string peer() const { return inner_.peer(); }

  // The inner link's counters, except send_seconds: the time send() blocked on the
  // bandwidth limit. Frames still waiting out their latency are not yet counted as sent.
  LinkStats stats() const {
    LinkStats s = inner_.stats();
    std::lock_guard lk(send_mu_);
    s.send_seconds = blocked_seconds_;
    return s;
  }

  // The one-way delay drawn for the i-th frame sent (0-based); see ShapeSchedule.
  std::chrono::microseconds delay_of(uint64_t i) const { return schedule_.delay_of(i); }

  const ShapeOptions& options() const { return schedule_.options(); }
  L& inner() { return inner_; }

 private:
  struct Pending {
    Clock::time_point due;
    FrameHeader header;
    std::vector<std::byte> payload;
  };

  void deliver_loop() {
    std::unique_lock lk(queue_mu_);
    for (;;) {
      queue_cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      auto due = queue_.front().due;
      // Frames are due in order, so only the front can be next; a new frame never
      // preempts it. Waiting is not cut short by close(): close() delivers on schedule.
      while (Clock::now() < due) queue_cv_.wait_until(lk, due);
      Pending p = std::move(queue_.front());
      queue_.pop_front();
      if (failed_) continue;  // drop: the link is dead and send() already reports why
      lk.unlock();
      try {
        inner_.send(p.header, p.payload);
      } catch (...) {
        std::lock_guard el(error_mu_);
        error_ = std::current_exception();
        failed_ = true;
      }
      lk.lock();
    }
  }

  void rethrow_delivery_error() {
    std::lock_guard el(error_mu_);
    if (error_) std::rethrow_exception(error_);
  }

  L inner_;

  mutable std::mutex send_mu_;  // the schedule, blocked time
  ShapeSchedule schedule_;
  double blocked_seconds_ = 0;
  bool closed_ = false;

  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  std::atomic<bool> failed_{false};

  std::mutex error_mu_;
  std::exception_ptr error_;

  std::thread worker_;  // last: started once every member above exists
};
static_assert(Link<Shaped<InProcessLink>>);

}  // namespace resbm::transport
