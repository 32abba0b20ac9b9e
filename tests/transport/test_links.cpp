#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "resbm/transport/in_process.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::transport;
using namespace std::chrono_literals;

using resbm::test::error_of;
using resbm::test::has;

namespace {

std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7) & 0xFF);
  return v;
}

FrameHeader header(Kind k, uint64_t step, uint32_t mb, uint32_t stream = 0) {
  FrameHeader h;
  h.kind = k;
  h.step = step;
  h.micro_batch = mb;
  h.stream = stream;
  return h;
}

}  // namespace

TEST_CASE("in-process pair: frames cross threads in order, both directions at once") {
  auto [a, b] = make_in_process_pair();
  constexpr int kFrames = 200;
  // Catch2 assertions are not thread-safe: the threads count mismatches, the test checks.
  int peer_bad = 0, recv_bad = 0;
  std::thread peer([&b, &peer_bad] {
    for (int i = 0; i < kFrames; ++i) {
      Message m = b.recv(Kind::activation, 10s);
      peer_bad += m.header.micro_batch != uint32_t(i);
      peer_bad += m.payload != pattern(size_t(i) * 10, uint32_t(i));
      b.send(header(Kind::gradient, 5, uint32_t(i), 2), pattern(size_t(i) * 3, uint32_t(i) + 1));
    }
  });
  std::thread receiver([&a, &recv_bad] {
    for (int i = 0; i < kFrames; ++i) {
      Message m = a.recv(Kind::gradient, 10s);
      recv_bad += m.header.step != 5 || m.header.micro_batch != uint32_t(i) || m.header.stream != 2;
      recv_bad += m.payload != pattern(size_t(i) * 3, uint32_t(i) + 1);
    }
  });
  for (int i = 0; i < kFrames; ++i)
    a.send(header(Kind::activation, 5, uint32_t(i)), pattern(size_t(i) * 10, uint32_t(i)));
  peer.join();
  receiver.join();
  REQUIRE(peer_bad == 0);
  REQUIRE(recv_bad == 0);

  uint64_t fwd = 0, bwd = 0;
  for (int i = 0; i < kFrames; ++i) {
    fwd += 48 + uint64_t(i) * 10;
    bwd += 48 + uint64_t(i) * 3;
  }
  LinkStats sa = a.stats(), sb = b.stats();
  REQUIRE(sa.frames_sent == kFrames);
  REQUIRE(sa.frames_received == kFrames);
  REQUIRE(sa.bytes_sent == fwd);
  REQUIRE(sb.bytes_received == fwd);
  REQUIRE(sb.bytes_sent == bwd);
  REQUIRE(sa.bytes_received == bwd);
  REQUIRE(sa.recv_seconds >= 0);
  REQUIRE(a.peer() == "in-process:b");
  REQUIRE(b.peer() == "in-process:a");
}

TEST_CASE("in-process recv times out with the peer, the kind and the time") {
  auto [a, b] = make_in_process_pair(Limits{}, "stage 0", "stage 1");
  bool timeout_type = false;
  try {
    a.recv(Kind::gradient, 50ms);
  } catch (const LinkTimeout& e) {
    timeout_type = true;
    REQUIRE(std::string(e.what()).starts_with("no gradient frame from stage 1 within 50 ms"));
  }
  REQUIRE(timeout_type);
  // Nothing was consumed: the link still works.
  b.send(header(Kind::gradient, 1, 0), pattern(8, 0));
  REQUIRE(a.recv(Kind::gradient, 1s).payload == pattern(8, 0));
}

TEST_CASE("in-process: heartbeats are skipped, a wrong kind is an Error, limits hold") {
  auto [a, b] = make_in_process_pair(Limits{100});
  a.send(header(Kind::heartbeat, 0, 0), {});
  a.send(header(Kind::activation, 3, 1), pattern(100, 1));
  Message m = b.recv(Kind::activation, 1s);
  REQUIRE(m.header.step == 3);
  REQUIRE(b.stats().frames_received == 2);  // the heartbeat crossed the link too

  a.send(header(Kind::gradient, 3, 2), pattern(4, 1));
  REQUIRE(has(error_of([&] { b.recv(Kind::activation, 1s); }),
              "expected activation frame from in-process:a but received gradient frame (step 3, "
              "micro-batch 2, stream 0)"));
  REQUIRE(error_of([&] { a.send(header(Kind::activation, 0, 0), pattern(101, 0)); }) ==
          "payload of 101 bytes exceeds the configured maximum 100 (fix: raise --max-frame or "
          "check the peer's config)");
}

TEST_CASE("in-process close: the peer drains what was sent, then sees LinkClosed") {
  auto [a, b] = make_in_process_pair();
  a.send(header(Kind::activation, 0, 0), pattern(16, 3));
  a.close();
  a.close();  // idempotent
  REQUIRE(b.recv(Kind::activation, 1s).payload == pattern(16, 3));
  for (int twice = 0; twice < 2; ++twice) {
    bool closed = false;
    try {
      b.recv(Kind::activation, 1s);
    } catch (const LinkClosed& e) {
      closed = true;
      REQUIRE(has(e.what(), "peer in-process:a shut the link down"));
    }
    REQUIRE(closed);
  }
  REQUIRE(has(error_of([&] { b.send(header(Kind::gradient, 0, 0), {}); }),
              "in-process:a closed the link"));
  REQUIRE(has(error_of([&] { a.send(header(Kind::activation, 0, 0), {}); }),
              "was closed by this stage"));
}

TEST_CASE("in-process close wakes a recv blocked on another thread") {
  auto [a, b] = make_in_process_pair();
  std::string seen;
  std::thread t([&] { seen = error_of([&] { a.recv(Kind::gradient, 30s); }); });
  std::this_thread::sleep_for(50ms);
  a.close();
  t.join();
  REQUIRE(has(seen, "was closed by this stage"));
}

TEST_CASE("a moved in-process link keeps working") {
  auto pair = make_in_process_pair();
  InProcessLink a = std::move(pair.first);
  InProcessLink b(std::move(pair.second));
  a.send(header(Kind::activation, 9, 0), pattern(5, 5));
  REQUIRE(b.recv(Kind::activation, 1s).header.step == 9);
  REQUIRE(has(error_of([&] { pair.first.send(header(Kind::activation, 0, 0), {}); }), "moved-from"));
}

TEST_CASE("recv_into on a link without its own: recv() and a move; an Error empties the buffer") {
  auto [a, b] = make_in_process_pair();
  std::vector<std::byte> buf = pattern(500, 9);
  a.send(header(Kind::activation, 1, 4), pattern(30, 1));
  FrameHeader h = recv_into(b, Kind::activation, 1s, buf);
  REQUIRE(h.micro_batch == 4);
  REQUIRE(h.payload_len == 30);
  REQUIRE(buf == pattern(30, 1));  // nothing of what the buffer held before
  REQUIRE_THROWS_AS(recv_into(b, Kind::activation, 10ms, buf), LinkTimeout);
  REQUIRE(buf.empty());
}
