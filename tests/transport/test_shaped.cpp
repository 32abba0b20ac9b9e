#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "resbm/transport/transport.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::transport;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

using resbm::test::error_of;
using resbm::test::has;

namespace {

FrameHeader header(uint32_t mb) {
  FrameHeader h;
  h.kind = Kind::activation;
  h.micro_batch = mb;
  return h;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

// The pacing itself is tested on made-up times (ShapeSchedule); the tests on the wall
// clock below only check that Shaped waits for those times. Their bounds are one-sided
// (never faster than configured), which a loaded machine cannot break.

namespace {

using Slot = ShapeSchedule::Slot;

// Frames offered back to back, each as soon as the one ahead has left (as Shaped's
// blocking send() offers them).
std::vector<Slot> back_to_back(ShapeSchedule& s, Clock::time_point t0, int frames, uint64_t bytes) {
  std::vector<Slot> out;
  auto now = t0;
  for (int i = 0; i < frames; ++i) {
    out.push_back(s.admit(now, bytes));
    now = out.back().sent;
  }
  return out;
}

double ms(Clock::duration d) { return seconds(d) * 1e3; }

}  // namespace

TEST_CASE("shape schedule: the long-run rate is the configured bandwidth, after one burst") {
  ShapeOptions o;
  o.bytes_per_second = 50e6;
  Clock::time_point t0{};
  ShapeSchedule s(o, t0);
  const uint64_t frame = (1u << 20) + kHeaderSize;
  auto slots = back_to_back(s, t0, 20, frame);
  // The bucket starts full, so the first burst_bytes leave at once.
  double expect = (20.0 * double(frame) - double(o.burst_bytes)) / 50e6;
  REQUIRE(seconds(slots.back().sent - t0) == Approx(expect).margin(1e-6));
  for (size_t i = 1; i < slots.size(); ++i)
    REQUIRE(seconds(slots[i].sent - slots[i - 1].sent) == Approx(double(frame) / 50e6).margin(1e-6));
  for (auto& sl : slots) REQUIRE(sl.due == sl.sent);  // no latency configured
}

TEST_CASE("shape schedule: an idle link refills its bucket up to the burst, no further") {
  ShapeOptions o;
  o.bytes_per_second = 1e6;
  o.burst_bytes = 10000;
  Clock::time_point t0{};
  ShapeSchedule s(o, t0);
  REQUIRE(s.admit(t0, 10000).sent == t0);                        // the full bucket
  auto second = s.admit(t0, 5000);                               // 5 ms of debt
  REQUIRE(ms(second.sent - t0) == Approx(5.0).margin(1e-3));
  auto later = t0 + std::chrono::seconds(10);                    // idle far past the burst
  REQUIRE(s.admit(later, 10000).sent == later);
  REQUIRE(ms(s.admit(later, 3000).sent - later) == Approx(3.0).margin(1e-3));
  ShapeOptions unlimited;
  ShapeSchedule u(unlimited, t0);
  REQUIRE(u.admit(t0, uint64_t(1) << 40).sent == t0);            // 0 bytes/s: no limit
}

TEST_CASE("shape schedule: negative options are refused, naming the fix") {
  ShapeOptions rate;
  rate.bytes_per_second = -1;
  CHECK(has(error_of([&] { (void)ShapeSchedule(rate, Clock::time_point{}); }),
            "shaped link bandwidth -1 bytes/s is negative"));
  ShapeOptions late;
  late.jitter = -1ms;
  const std::string e = error_of([&] { (void)ShapeSchedule(late, Clock::time_point{}); });
  CHECK(has(e, "latency and jitter must not be negative"));
  CHECK(has(e, "pass durations >= 0"));
  // Shaped refuses them too, before its delivery thread starts.
  auto [a, b] = make_in_process_pair();
  CHECK(has(error_of([&] { Shaped<InProcessLink> s(std::move(a), rate); }), "bytes/s is negative"));
}

TEST_CASE("shape schedule: latency is added after transmission and overlaps the next frames") {
  ShapeOptions o;
  o.bytes_per_second = 10e6;  // a 200 kB frame takes 20 ms on the wire
  o.burst_bytes = 0;
  o.latency = 100ms;
  Clock::time_point t0{};
  ShapeSchedule s(o, t0);
  auto slots = back_to_back(s, t0, 10, 200000);
  for (size_t i = 0; i < slots.size(); ++i) {
    REQUIRE(ms(slots[i].sent - t0) == Approx(20.0 * double(i + 1)).margin(1e-3));
    REQUIRE(slots[i].due - slots[i].sent == 100ms);
  }
  INFO("pipelined 300 ms, serialised 1200 ms");
  REQUIRE(ms(slots.back().due - t0) == Approx(300.0).margin(1e-3));
}

TEST_CASE("shape schedule: jitter never lets a frame overtake the one ahead") {
  ShapeOptions o;
  o.latency = 20ms;
  o.jitter = 15ms;
  o.seed = 7;
  Clock::time_point t0{};
  ShapeSchedule s(o, t0);
  Clock::time_point last{};
  int held = 0;
  for (int i = 0; i < 200; ++i) {
    auto now = t0 + std::chrono::milliseconds(i);
    auto sl = s.admit(now, 100);
    REQUIRE(sl.due >= last);
    REQUIRE(sl.due >= now + s.delay_of(uint64_t(i)));
    held += sl.due > now + s.delay_of(uint64_t(i));  // held back behind a slower frame
    last = sl.due;
  }
  REQUIRE(held > 0);  // the seed's jitter does reorder some frames' own delays
}

TEST_CASE("shaped: send() waits for the bandwidth, and delivers every frame in order") {
  auto [a, b] = make_in_process_pair();
  ShapeOptions o;
  o.bytes_per_second = 50e6;
  Shaped<InProcessLink> s(std::move(a), o);
  constexpr int kFrames = 20;
  std::vector<std::byte> frame(1 << 20, std::byte{7});  // 20 MiB: ~0.42 s at 50 MB/s
  Clock::time_point last;
  int bad = 0;
  std::thread rx([&] {
    for (int i = 0; i < kFrames; ++i) {
      auto m = b.recv(Kind::activation, 30s);
      bad += m.header.micro_batch != uint32_t(i) || m.payload != frame;
    }
    last = Clock::now();
  });
  auto t0 = Clock::now();
  for (int i = 0; i < kFrames; ++i) s.send(header(uint32_t(i)), frame);
  rx.join();
  REQUIRE(bad == 0);
  double bytes = double(kFrames) * double(frame.size() + kHeaderSize);
  double floor = (bytes - double(o.burst_bytes)) / 50e6;
  INFO("took " << seconds(last - t0) << " s; the schedule allows no less than " << floor << " s");
  REQUIRE(seconds(last - t0) >= 0.99 * floor);
  REQUIRE(s.stats().send_seconds >= 0.99 * floor);  // send() blocked on the bandwidth, as on a wire
  REQUIRE(b.stats().bytes_received == uint64_t(bytes));
  s.close();  // the inner link's counters are final once the delivery thread is done
  REQUIRE(s.stats().bytes_sent == uint64_t(bytes));
}

TEST_CASE("shaped: a frame arrives no sooner than the configured latency") {
  auto [a, b] = make_in_process_pair();
  ShapeOptions o;
  o.latency = 80ms;
  Shaped<InProcessLink> s(std::move(a), o);
  for (int i = 0; i < 4; ++i) {
    auto t0 = Clock::now();
    s.send(header(uint32_t(i)), std::vector<std::byte>(100));
    auto m = b.recv(Kind::activation, 30s);
    auto took = Clock::now() - t0;
    INFO("one-way " << ms(took) << " ms, configured 80 ms");
    REQUIRE(m.header.micro_batch == uint32_t(i));
    REQUIRE(took >= 80ms);
  }
}

TEST_CASE("shaped: jitter is deterministic for a seed, bounded, and keeps frame order") {
  ShapeOptions o;
  o.latency = 20ms;
  o.jitter = 15ms;
  o.seed = 42;
  auto p1 = make_in_process_pair();
  auto p2 = make_in_process_pair();
  auto p3 = make_in_process_pair();
  Shaped<InProcessLink> s1(std::move(p1.first), o), s2(std::move(p2.first), o);
  ShapeOptions other = o;
  other.seed = 43;
  Shaped<InProcessLink> s3(std::move(p3.first), other);
  int differ = 0;
  double sum = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    auto d = s1.delay_of(i);
    REQUIRE(d == s2.delay_of(i));
    differ += d != s3.delay_of(i);
    REQUIRE(d >= 5ms);
    REQUIRE(d <= 35ms);
    sum += double(d.count());
  }
  REQUIRE(differ > 900);
  REQUIRE(sum / 1000 == Approx(20000).epsilon(0.05));
  // Frames sent 1 ms apart with +-15 ms of jitter still arrive in order.
  for (uint32_t i = 0; i < 30; ++i) {
    s1.send(header(i), {});
    std::this_thread::sleep_for(1ms);
  }
  for (uint32_t i = 0; i < 30; ++i) REQUIRE(p1.second.recv(Kind::activation, 5s).header.micro_batch == i);
}

TEST_CASE("shaped: close delivers what was sent; a dead inner link surfaces on send") {
  {
    auto [a, b] = make_in_process_pair();
    ShapeOptions o;
    o.latency = 30ms;
    Shaped<InProcessLink> s(std::move(a), o);
    for (uint32_t i = 0; i < 3; ++i) s.send(header(i), std::vector<std::byte>(10));
    s.close();
    for (uint32_t i = 0; i < 3; ++i) REQUIRE(b.recv(Kind::activation, 1s).header.micro_batch == i);
    REQUIRE_THROWS_AS(b.recv(Kind::activation, 1s), LinkClosed);
    REQUIRE(error_of([&] { s.send(header(9), {}); }).find("is closed") != std::string::npos);
  }
  {
    auto [a, b] = make_in_process_pair();
    Shaped<InProcessLink> s(std::move(a), ShapeOptions{});
    b.close();
    s.send(header(0), {});  // accepted; its delivery fails on the worker thread
    std::string e = "<no error>";
    for (int i = 0; i < 100 && e == "<no error>"; ++i) {
      std::this_thread::sleep_for(10ms);
      e = error_of([&] { s.send(header(1), {}); });
    }
    REQUIRE(e.find("in-process:b closed the link") != std::string::npos);
  }
}
