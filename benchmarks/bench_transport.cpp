// Framed TCP loopback throughput against a raw Asio socket moving the same bytes (48 + n
// per frame): the ratio of the two bytes_per_second counters is the framing cost (header
// encode/validate, crc32c on both ends, the receiver's allocation). Each iteration sends
// 32 MiB of frames and waits for the receiver's acknowledgement, so what is timed is
// delivered, not merely buffered.
#include <benchmark/benchmark.h>

#include <array>
#include <optional>
#include <thread>
#include <vector>

#include "resbm/transport/tcp.hpp"

namespace {

using namespace resbm::transport;
namespace asio = boost::asio;
using asio::ip::tcp;

constexpr size_t kBytesPerIteration = size_t(32) << 20;

Handshake hs(int stage) {
  Handshake h;
  h.run_id = "bench";
  h.stage = stage;
  h.n_stages = 2;
  h.expect_peer = 1 - stage;
  return h;
}

void BM_FramedTcp(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  const size_t frames = kBytesPerIteration / n;
  TcpListener listener("127.0.0.1", 0);
  std::optional<TcpLink> rx_link;
  std::thread accept_thread([&] { rx_link.emplace(listener.accept(hs(1))); });
  TcpLink tx = TcpLink::connect("127.0.0.1", listener.port(), hs(0));
  accept_thread.join();
  std::thread rx([&] {
    try {
      for (;;) {
        for (size_t i = 0; i < frames; ++i) benchmark::DoNotOptimize(rx_link->recv(Kind::activation, std::chrono::seconds(60)));
        FrameHeader ack;
        ack.kind = Kind::gradient;
        rx_link->send(ack, {});
      }
    } catch (const LinkClosed&) {
    }
  });
  std::vector<std::byte> payload(n, std::byte{0x5A});
  FrameHeader h;
  h.kind = Kind::activation;
  for (auto _ : state) {
    for (size_t i = 0; i < frames; ++i) {
      h.micro_batch = uint32_t(i);
      tx.send(h, payload);
    }
    tx.recv(Kind::gradient, std::chrono::seconds(60));
  }
  tx.close();
  rx.join();
  double bytes = double(state.iterations()) * double(frames) * double(n + kHeaderSize);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsRate);
}

void BM_RawAsioTcp(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  const size_t frames = kBytesPerIteration / n;
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket tx(io), rx_sock(io);
  tx.connect(acceptor.local_endpoint());
  acceptor.accept(rx_sock);
  tx.set_option(tcp::no_delay(true));
  rx_sock.set_option(tcp::no_delay(true));
  std::thread rx([&] {
    std::vector<std::byte> head(kHeaderSize), body(n);
    boost::system::error_code ec;
    for (;;) {
      for (size_t i = 0; i < frames; ++i) {
        asio::read(rx_sock, asio::buffer(head), ec);
        if (ec) return;
        asio::read(rx_sock, asio::buffer(body), ec);
        if (ec) return;
        benchmark::DoNotOptimize(body.data());
      }
      char ack = 1;
      asio::write(rx_sock, asio::buffer(&ack, 1), ec);
      if (ec) return;
    }
  });
  std::vector<std::byte> head(kHeaderSize, std::byte{1}), payload(n, std::byte{0x5A});
  for (auto _ : state) {
    for (size_t i = 0; i < frames; ++i) {
      std::array<asio::const_buffer, 2> bufs{asio::buffer(head), asio::buffer(payload)};
      asio::write(tx, bufs);
    }
    char ack;
    asio::read(tx, asio::buffer(&ack, 1));
  }
  tx.shutdown(tcp::socket::shutdown_both);
  rx.join();
  double bytes = double(state.iterations()) * double(frames) * double(n + kHeaderSize);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsRate);
}

}  // namespace

// Interleaved so that each framed result sits next to its raw counterpart.
BENCHMARK(BM_FramedTcp)->Arg(64 << 10)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_RawAsioTcp)->Arg(64 << 10)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_FramedTcp)->Arg(1 << 20)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_RawAsioTcp)->Arg(1 << 20)->UseRealTime()->MinTime(1.0);

BENCHMARK_MAIN();
