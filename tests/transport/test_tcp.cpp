#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "resbm/transport/any_link.hpp"
#include "resbm/transport/tcp.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::transport;
using namespace std::chrono_literals;
namespace asio = boost::asio;
using asio::ip::tcp;

using resbm::test::error_of;
using resbm::test::has;

namespace {

std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte((i * 131 + seed * 7 + (i >> 8)) & 0xFF);
  return v;
}

FrameHeader header(Kind k, uint64_t step, uint32_t mb) {
  FrameHeader h;
  h.kind = k;
  h.step = step;
  h.micro_batch = mb;
  return h;
}

Handshake hs(int stage, int expect, uint64_t config = 0xC0FFEE, std::string run = "run-1") {
  Handshake h;
  h.run_id = std::move(run);
  h.stage = stage;
  h.n_stages = 4;
  h.config_hash = config;
  h.expect_peer = expect;
  return h;
}

// Short timeouts: every failure these tests provoke must surface in well under a second.
TcpOptions quick() {
  TcpOptions o;
  o.connect_timeout = 3s;
  o.accept_timeout = 5s;
  o.handshake_timeout = 3s;
  o.stall_timeout = 3s;
  return o;
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A socket that speaks the protocol by hand, to send what a TcpLink never would.
struct RawPeer {
  asio::io_context io;
  tcp::socket sock{io};
  explicit RawPeer(uint16_t port) { sock.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port)); }
  void write(const void* p, size_t n) { asio::write(sock, asio::buffer(p, n)); }
  void write(std::span<const std::byte> b) { write(b.data(), b.size()); }
  std::vector<std::byte> frame(FrameHeader h, std::span<const std::byte> payload) {
    h = seal(h, payload);
    HeaderBytes hb = encode_header(h);
    std::vector<std::byte> out(kHeaderSize + payload.size());
    std::memcpy(out.data(), hb.data(), kHeaderSize);
    if (!payload.empty()) std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
    return out;
  }
  // The connecting side of the handshake, done by hand.
  void handshake(const Handshake& mine) {
    std::string j = encode_handshake(mine);
    write(frame(header(Kind::handshake, 0, 0), std::as_bytes(std::span(j.data(), j.size()))));
    HeaderBytes hb;
    asio::read(sock, asio::buffer(hb.data(), hb.size()));
    FrameHeader h = decode_header(hb.data(), hb.size(), Limits{});
    std::vector<std::byte> p(h.payload_len);
    asio::read(sock, asio::buffer(p.data(), p.size()));
  }
};

// The server's view of a raw client: runs accept() and returns its Error text.
std::string accept_error(TcpListener& l, const TcpOptions& o = quick()) {
  return error_of([&] { l.accept(hs(1, 0), o); });
}

}  // namespace

TEST_CASE("TCP: handshake, then many frames both directions at once, stats, clean shutdown") {
  TcpListener listener("127.0.0.1", 0);
  REQUIRE(listener.port() != 0);
  std::printf("TCP test listener bound to 127.0.0.1:%u\n", unsigned(listener.port()));
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TcpLink a = TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick());
  TcpLink b = server.get();
  REQUIRE(a.peer() == "127.0.0.1:" + std::to_string(listener.port()) + " (stage 1)");
  REQUIRE(has(b.peer(), " (stage 0)"));
  REQUIRE(a.peer_handshake().config_hash == 0xC0FFEE);
  REQUIRE(b.peer_handshake().run_id == "run-1");

  constexpr int kFrames = 300;
  auto size_of = [](int i) { return size_t(i % 7 == 0 ? 300000 : i * 97); };  // some exceed socket buffers
  int bad_b = 0, bad_a = 0;
  std::thread tb([&] {
    std::thread tbs([&] {
      for (int i = 0; i < kFrames; ++i) b.send(header(Kind::gradient, 1, uint32_t(i)), pattern(size_of(i) / 2, uint32_t(i) + 9));
    });
    for (int i = 0; i < kFrames; ++i) {
      Message m = b.recv(Kind::activation, 10s);
      bad_b += m.header.micro_batch != uint32_t(i) || m.payload != pattern(size_of(i), uint32_t(i));
    }
    tbs.join();
  });
  std::thread ta([&] {
    for (int i = 0; i < kFrames; ++i) {
      Message m = a.recv(Kind::gradient, 10s);
      bad_a += m.header.micro_batch != uint32_t(i) || m.payload != pattern(size_of(i) / 2, uint32_t(i) + 9);
    }
  });
  for (int i = 0; i < kFrames; ++i) a.send(header(Kind::activation, 1, uint32_t(i)), pattern(size_of(i), uint32_t(i)));
  ta.join();
  tb.join();
  REQUIRE(bad_a == 0);
  REQUIRE(bad_b == 0);

  LinkStats sa = a.stats(), sb = b.stats();
  REQUIRE(sa.frames_sent == kFrames + 1);  // + the handshake
  REQUIRE(sb.frames_received == kFrames + 1);
  REQUIRE(sa.bytes_sent == sb.bytes_received);
  REQUIRE(sb.bytes_sent == sa.bytes_received);
  uint64_t payload = 0;
  for (int i = 0; i < kFrames; ++i) payload += size_of(i);
  REQUIRE(sa.bytes_sent > payload + 48 * kFrames);

  a.close();
  for (int twice = 0; twice < 2; ++twice) {
    bool closed = false;
    try {
      b.recv(Kind::activation, 3s);
    } catch (const LinkClosed& e) {
      closed = true;
      if (twice == 0) REQUIRE(has(e.what(), "shut the link down while this stage waited for activation frame"));
    } catch (const Error& e) {
      if (twice == 1) closed = has(e.what(), "already shut the link down");
    }
    REQUIRE(closed);
  }
  b.close();
}

TEST_CASE("TCP: recv timeout names the peer, the kind and the time; the link stays usable") {
  TcpListener listener("127.0.0.1", 0);
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TcpLink a = TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick());
  TcpLink b = server.get();
  bool timed_out = false;
  try {
    a.recv(Kind::gradient, 100ms);
  } catch (const LinkTimeout& e) {
    timed_out = true;
    REQUIRE(has(e.what(), "no gradient frame from 127.0.0.1:" + std::to_string(listener.port()) +
                              " (stage 1) within 100 ms"));
  }
  REQUIRE(timed_out);
  b.send(header(Kind::gradient, 2, 0), pattern(1000, 1));
  REQUIRE(a.recv(Kind::gradient, 3s).payload == pattern(1000, 1));
}

TEST_CASE("TCP: recv_into reuses the caller's buffer; a shorter frame shows nothing of an earlier one") {
  TcpListener listener("127.0.0.1", 0);
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TcpLink a = TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick());
  TcpLink b = server.get();
  const size_t sizes[] = {70000, 10, 0, 70000, 69999, 5000, 300000, 3};
  std::thread sender([&] {  // more than the socket buffers hold: sent while b reads
    for (size_t i = 0; i < std::size(sizes); ++i) a.send(header(Kind::activation, 1, uint32_t(i)), pattern(sizes[i], uint32_t(i)));
    a.send(header(Kind::heartbeat, 1, 99), pattern(40000, 99));  // skipped, into the same buffer
    a.send(header(Kind::activation, 1, 100), pattern(1, 100));
  });

  std::vector<std::byte> buf;
  const std::byte* first = nullptr;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    FrameHeader h = b.recv_into(Kind::activation, 3s, buf);
    INFO("frame " << i << " of " << sizes[i] << " bytes");
    REQUIRE(h.micro_batch == uint32_t(i));
    REQUIRE(h.payload_len == sizes[i]);
    REQUIRE(buf == pattern(sizes[i], uint32_t(i)));  // exactly this frame: size and every byte
    if (i == 0) first = buf.data();
    // No reallocation until a frame outgrows the first one.
    if (i > 0 && i < 6) REQUIRE(buf.data() == first);
  }
  REQUIRE(b.recv_into(Kind::activation, 3s, buf).micro_batch == 100);
  sender.join();
  REQUIRE(buf == pattern(1, 100));
  // The generic form and AnyLink reach the same path; frames count as recv() counts them.
  a.send(header(Kind::activation, 2, 0), pattern(20, 7));
  AnyLink any(std::move(b));
  REQUIRE(recv_into(any, Kind::activation, 3s, buf).step == 2);
  REQUIRE(buf == pattern(20, 7));
  REQUIRE(any.stats().frames_received == 1 + std::size(sizes) + 2 + 1);  // + handshake, heartbeat

  // A frame of the wrong kind is an Error, and leaves the buffer empty.
  a.send(header(Kind::gradient, 3, 0), pattern(50, 1));
  REQUIRE(has(error_of([&] { any.recv_into(Kind::activation, 3s, buf); }), "expected activation frame"));
  REQUIRE(buf.empty());
}

TEST_CASE("TCP: recv_into checks the header before it sizes the buffer, and a corrupt payload empties it") {
  TcpListener listener("127.0.0.1", 0);
  for (int variant = 0; variant < 2; ++variant) {
    std::thread client([&] {
      RawPeer raw(listener.port());
      raw.handshake(hs(0, 1));
      FrameHeader h = header(Kind::activation, 4, 2);
      if (variant == 0) {
        h.payload_len = uint64_t(1) << 40;  // 1 TiB, declared by a valid header
        raw.write(encode_header(h));
      } else {
        auto f = raw.frame(h, pattern(5000, 3));
        f[48 + 4321] ^= std::byte{0x01};
        raw.write(f);
      }
      std::this_thread::sleep_for(300ms);
    });
    TcpOptions o = quick();
    o.limits.max_payload = 1 << 20;
    TcpLink b = listener.accept(hs(1, 0), o);
    std::vector<std::byte> buf(64, std::byte{0x77});
    const size_t capacity = buf.capacity();
    std::string e = error_of([&] { b.recv_into(Kind::activation, 3s, buf); });
    client.join();
    INFO(e);
    if (variant == 0) {
      REQUIRE(has(e, "payload of 1099511627776 bytes exceeds the configured maximum 1048576"));
      REQUIRE(buf.capacity() == capacity);  // nothing was allocated from the declared length
    } else {
      REQUIRE(has(e, "payload corrupted in transit (activation frame, step 4, micro-batch 2"));
    }
    REQUIRE(buf.empty());
    REQUIRE(has(error_of([&] { b.recv_into(Kind::activation, 1s, buf); }), "failed earlier"));
  }
}

TEST_CASE("TCP: recv timeouts shorter and longer than the stall timeout, one after the other") {
  // The socket's receive timeout is set only when it would overshoot the time left, or
  // wake far too often: each wait must still end on time, and a long one must not end early.
  TcpListener listener("127.0.0.1", 0);
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TcpLink a = TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick());  // stall 3 s
  TcpLink b = server.get();
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(a.recv(Kind::gradient, 150ms), LinkTimeout);
  // The upper bounds are loose on purpose (a loaded CI machine): a wait left to the socket's
  // 3 s stall timeout would take 3 s.
  REQUIRE(since(t0) >= 0.14);
  REQUIRE(since(t0) < 2.0);
  t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(a.recv(Kind::gradient, 20ms), LinkTimeout);
  REQUIRE(since(t0) < 2.0);
  std::thread late([&] {
    std::this_thread::sleep_for(600ms);
    b.send(header(Kind::gradient, 1, 0), pattern(100000, 5));
  });
  t0 = std::chrono::steady_clock::now();
  Message m = a.recv(Kind::gradient, 5s);  // outlasts the 20 ms the socket was last given
  late.join();
  REQUIRE(since(t0) >= 0.55);
  REQUIRE(m.payload == pattern(100000, 5));
  REQUIRE_THROWS_AS(a.recv(Kind::gradient, 0ms), LinkTimeout);  // 0: look, do not wait
}

TEST_CASE("TCP: close() wakes a recv blocked on another thread") {
  TcpListener listener("127.0.0.1", 0);
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TcpLink a = TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick());
  TcpLink b = server.get();
  std::string seen;
  std::thread t([&] { seen = error_of([&] { a.recv(Kind::gradient, 30s); }); });
  std::this_thread::sleep_for(100ms);
  auto t0 = std::chrono::steady_clock::now();
  a.close();
  t.join();
  REQUIRE(since(t0) < 5);
  REQUIRE(has(seen, "was closed by this stage"));
}

TEST_CASE("TCP: handshake mismatches are refused with a clear message on both sides") {
  struct Case {
    Handshake client, server;
    std::string client_says, server_says;
  };
  std::vector<Case> cases = {
      {hs(0, 1, 0x1111), hs(1, 0, 0x2222),
       "(stage 1) runs config hash 0000000000002222 but this stage has 0000000000001111 (fix: start "
       "every stage with the same model and codec flags)",
       "(stage 0) runs config hash 0000000000001111 but this stage has 0000000000002222 (fix: start "
       "every stage with the same model and codec flags)"},
      {hs(0, 1, 7, "run-A"), hs(1, 0, 7, "run-B"),
       "(stage 1) belongs to run 'run-B' but this stage belongs to run 'run-A'",
       "(stage 0) belongs to run 'run-A' but this stage belongs to run 'run-B'"},
      // The server expects stage 0 but stage 2 connects: the server refuses, the client
      // reports the refusal with the server's reason.
      {hs(2, 1), hs(1, 0), "refused the handshake: peer 127.0.0.1:",
       "(stage 2) answered, but this stage (1) expects stage 0 there"},
  };
  for (const Case& c : cases) {
    TcpListener listener("127.0.0.1", 0);
    auto server = std::async(std::launch::async,
                             [&] { return error_of([&] { listener.accept(c.server, quick()); }); });
    std::string client = error_of([&] { TcpLink::connect("127.0.0.1", listener.port(), c.client, quick()); });
    std::string srv = server.get();
    INFO("client: " << client << "\nserver: " << srv);
    REQUIRE(has(client, "peer 127.0.0.1:" + std::to_string(listener.port())));
    REQUIRE(has(client, c.client_says));
    REQUIRE(has(srv, "peer 127.0.0.1:"));
    REQUIRE(has(srv, c.server_says));
  }
}

TEST_CASE("TCP: connect retries until the listener appears") {
  uint16_t port;
  { port = TcpListener("127.0.0.1", 0).port(); }  // a port that was free a moment ago
  auto server = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(300ms);
    TcpListener late("127.0.0.1", port);
    return late.accept(hs(1, 0), quick());
  });
  TcpLink a = TcpLink::connect("127.0.0.1", port, hs(0, 1), quick());
  TcpLink b = server.get();
  a.send(header(Kind::activation, 1, 1), pattern(10, 1));
  REQUIRE(b.recv(Kind::activation, 3s).payload == pattern(10, 1));
}

TEST_CASE("TCP: connecting to nothing fails after bounded retries") {
  uint16_t port;
  { port = TcpListener("127.0.0.1", 0).port(); }
  TcpOptions o = quick();
  o.connect_timeout = 600ms;
  o.retry_initial = 20ms;
  o.retry_max = 100ms;
  auto t0 = std::chrono::steady_clock::now();
  std::string e = error_of([&] { TcpLink::connect("127.0.0.1", port, hs(0, 1), o); });
  INFO(e);
  REQUIRE(since(t0) < 3);
  REQUIRE(has(e, "could not connect to 127.0.0.1:" + std::to_string(port) + " after "));
  REQUIRE(has(e, "attempts in "));
  REQUIRE(has(e, "(fix: start the stage that listens on 127.0.0.1:" + std::to_string(port)));
  int attempts = std::stoi(e.substr(e.find(" after ") + 7));
  REQUIRE(attempts >= 4);
}

TEST_CASE("TCP: hostile or broken peers give clear Errors, never a crash or a hang") {
  TcpListener listener("127.0.0.1", 0);
  const std::string handshake_json = encode_handshake(hs(0, 1));
  auto json = std::as_bytes(std::span(handshake_json.data(), handshake_json.size()));

  SECTION("garbage bytes") {
    RawPeer raw(listener.port());
    raw.write("GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n", 47);
    REQUIRE(has(accept_error(listener), "not a resbm peer or wrong port"));
  }
  SECTION("oversized declared payload") {
    RawPeer raw(listener.port());
    FrameHeader h = header(Kind::handshake, 0, 0);
    h.payload_len = uint64_t(1) << 40;  // 1 TiB
    raw.write(encode_header(h));
    TcpOptions o = quick();
    o.limits.max_payload = 1 << 20;
    REQUIRE(has(accept_error(listener, o),
                "payload of 1099511627776 bytes exceeds the configured maximum 1048576 (fix: raise "
                "--max-frame or check the peer's config)"));
  }
  SECTION("half a header, then the connection closes") {
    {
      RawPeer raw(listener.port());
      auto f = raw.frame(header(Kind::handshake, 0, 0), json);
      raw.write(f.data(), 20);
    }
    REQUIRE(has(accept_error(listener), "closed mid-frame after 20 of 48 bytes"));
  }
  SECTION("half a payload, then the connection closes") {
    {
      RawPeer raw(listener.port());
      auto f = raw.frame(header(Kind::handshake, 0, 0), json);
      raw.write(f.data(), 48 + json.size() / 2);
    }
    REQUIRE(has(accept_error(listener), cat("closed mid-frame after ", 48 + json.size() / 2, " of ",
                                            48 + json.size(), " bytes")));
  }
  SECTION("half a frame, then silence: a timeout within the stall timeout") {
    RawPeer raw(listener.port());
    auto f = raw.frame(header(Kind::handshake, 0, 0), json);
    raw.write(f.data(), 30);
    TcpOptions o = quick();
    o.stall_timeout = 300ms;
    auto t0 = std::chrono::steady_clock::now();
    std::string e = accept_error(listener, o);
    double took = since(t0);
    INFO(e);
    REQUIRE(has(e, "stopped sending mid-frame: timed out after 300 ms without data, 30 of 48 bytes received"));
    REQUIRE(took >= 0.25);  // one-sided: the message above already says the stall timer fired
  }
  SECTION("after the handshake: a stall mid-payload, a corrupt payload, a vanished peer") {
    for (int variant = 0; variant < 3; ++variant) {
      std::thread client([&] {
        RawPeer raw(listener.port());
        raw.handshake(hs(0, 1));
        auto body = pattern(5000, 3);
        auto f = raw.frame(header(Kind::activation, 4, 2), body);
        if (variant == 0) {
          raw.write(f.data(), 48 + 2000);
          std::this_thread::sleep_for(1500ms);  // longer than the server's stall timeout
        } else if (variant == 1) {
          f[48 + 1234] ^= std::byte{0x10};
          raw.write(f);
          std::this_thread::sleep_for(200ms);
        }
      });
      TcpOptions o = quick();
      o.stall_timeout = 300ms;
      TcpLink b = listener.accept(hs(1, 0), o);
      auto t0 = std::chrono::steady_clock::now();
      std::string e = error_of([&] { b.recv(Kind::activation, 5s); });
      double took = since(t0);
      client.join();
      INFO(e);
      if (variant == 0) {
        // The client still holds the connection open here: only the stall timer ends this.
        REQUIRE(has(e, "stopped sending mid-frame: timed out after 300 ms without data, 2048 of 5048 bytes"));
        REQUIRE(took >= 0.25);
      } else if (variant == 1) {
        REQUIRE(has(e, "payload corrupted in transit (activation frame, step 4, micro-batch 2"));
      } else {
        REQUIRE(has(e, "closed by the peer without a shutdown frame"));
      }
      // The stream is out of step now: the link stays failed, with the first reason.
      REQUIRE(has(error_of([&] { b.recv(Kind::activation, 1s); }), "failed earlier"));
    }
  }
}
