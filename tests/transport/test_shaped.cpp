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

// The only timed assertions of the transport tests: rate and latency are the feature.
TEST_CASE("shaped: the delivered rate is the configured bandwidth (within 10%)") {
  auto [a, b] = make_in_process_pair();
  ShapeOptions o;
  o.bytes_per_second = 50e6;
  Shaped<InProcessLink> s(std::move(a), o);
  constexpr int kFrames = 20;
  std::vector<std::byte> frame(1 << 20, std::byte{7});  // 20 MiB: ~0.42 s at 50 MB/s
  Clock::time_point last;
  int bad = 0;
  std::thread rx([&] {
    for (int i = 0; i < kFrames; ++i) bad += b.recv(Kind::activation, 10s).header.micro_batch != uint32_t(i);
    last = Clock::now();
  });
  auto t0 = Clock::now();
  for (int i = 0; i < kFrames; ++i) s.send(header(uint32_t(i)), frame);
  rx.join();
  REQUIRE(bad == 0);
  double bytes = double(kFrames) * double(frame.size() + kHeaderSize);
  double rate = bytes / seconds(last - t0);
  INFO("delivered " << rate / 1e6 << " MB/s, configured 50 MB/s");
  REQUIRE(rate > 0.9 * 50e6);
  REQUIRE(rate < 1.1 * 50e6);
  REQUIRE(s.stats().send_seconds > 0.3);  // send() blocked on the bandwidth, as on a wire
  REQUIRE(b.stats().bytes_received == uint64_t(bytes));
  s.close();  // the inner link's counters are final once the delivery thread is done
  REQUIRE(s.stats().bytes_sent == uint64_t(bytes));
}

TEST_CASE("shaped: the added one-way latency is the configured one (within 20%)") {
  auto [a, b] = make_in_process_pair();
  ShapeOptions o;
  o.latency = 80ms;
  Shaped<InProcessLink> s(std::move(a), o);
  for (int i = 0; i < 4; ++i) {
    auto t0 = Clock::now();
    s.send(header(uint32_t(i)), std::vector<std::byte>(100));
    REQUIRE(seconds(Clock::now() - t0) < 0.02);  // send() does not wait out the latency
    b.recv(Kind::activation, 5s);
    double took = seconds(Clock::now() - t0);
    INFO("one-way " << took * 1e3 << " ms, configured 80 ms");
    REQUIRE(took > 0.8 * 0.080);
    REQUIRE(took < 1.2 * 0.080);
  }
}

TEST_CASE("shaped: latency overlaps the next frames' transmission") {
  auto [a, b] = make_in_process_pair();
  ShapeOptions o;
  o.bytes_per_second = 10e6;  // a 200 kB frame takes 20 ms on the wire
  o.burst_bytes = 0;
  o.latency = 100ms;
  Shaped<InProcessLink> s(std::move(a), o);
  std::vector<std::byte> frame(200000 - kHeaderSize);
  auto t0 = Clock::now();
  std::thread rx([&] {
    for (int i = 0; i < 10; ++i) b.recv(Kind::activation, 5s);
  });
  for (int i = 0; i < 10; ++i) s.send(header(uint32_t(i)), frame);
  rx.join();
  double took = seconds(Clock::now() - t0);
  INFO("10 frames took " << took * 1e3 << " ms; pipelined 300 ms, serialised 1200 ms");
  REQUIRE(took > 0.8 * 0.300);
  REQUIRE(took < 1.2 * 0.300);
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
