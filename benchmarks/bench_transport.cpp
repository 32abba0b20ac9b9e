// Framed TCP loopback throughput against a raw Asio socket moving the same bytes (48 + n
// per frame): the ratio of the two is the framing cost (header encode/validate, crc32c on
// both ends, the receiver's buffer). Each iteration sends 32 MiB of frames and waits for
// the receiver's acknowledgement, so what is timed is delivered, not merely buffered.
//
// Three receivers: `framed` is TcpLink::recv() (a fresh vector per frame, as the Link
// concept returns it), `framed_reuse` is TcpLink::recv_into() with one buffer for the whole
// run, `raw` reads header and payload with blocking asio::read. The machine this runs on is
// shared and noisy, so the three run in rounds, interleaved (framed, framed_reuse, raw for
// 64 KiB, then for 1 MiB, then the next round), and the summary at the end gives, per frame
// size, the ratio of each framed run to the raw run of its round (median, min and max over
// the rounds), the best throughput of each, and best framed / best raw (noise here only
// ever slows a run down, so the best of several rounds is the least disturbed).
//
//   bench_transport [--rounds=N] [--benchmark_min_time=S] [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
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

void finish(benchmark::State& state, size_t frames, size_t n) {
  double bytes = double(state.iterations()) * double(frames) * double(n + kHeaderSize);
  state.counters["bytes_per_second"] = benchmark::Counter(bytes, benchmark::Counter::kIsRate);
}

void framed(benchmark::State& state, bool reuse) {
  const size_t n = size_t(state.range(0));
  const size_t frames = kBytesPerIteration / n;
  TcpListener listener("127.0.0.1", 0);
  std::optional<TcpLink> rx_link;
  std::thread accept_thread([&] { rx_link.emplace(listener.accept(hs(1))); });
  TcpLink tx = TcpLink::connect("127.0.0.1", listener.port(), hs(0));
  accept_thread.join();
  std::thread rx([&] {
    try {
      std::vector<std::byte> buffer;
      for (;;) {
        for (size_t i = 0; i < frames; ++i) {
          if (reuse) {
            rx_link->recv_into(Kind::activation, std::chrono::seconds(60), buffer);
            benchmark::DoNotOptimize(buffer.data());
          } else {
            benchmark::DoNotOptimize(rx_link->recv(Kind::activation, std::chrono::seconds(60)));
          }
        }
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
  finish(state, frames, n);
}

void raw(benchmark::State& state) {
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
  finish(state, frames, n);
}

const char* const kKinds[] = {"framed", "framed_reuse", "raw"};

struct Key {
  int round;
  size_t size;
  int kind;  // index into kKinds
};

// Prints every run as the console reporter does, and keeps its throughput for the summary.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(std::map<std::string, Key> keys) : keys_(std::move(keys)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      auto k = keys_.find(r.run_name.function_name + "/" + r.run_name.args);
      auto c = r.counters.find("bytes_per_second");
      if (k != keys_.end() && c != r.counters.end() && !r.error_occurred)
        rate_[{k->second.size, k->second.round}][k->second.kind] = c->second.value;
    }
  }

  void summary() const {
    std::map<size_t, std::array<std::vector<double>, 2>> ratios;  // size -> framed, framed_reuse
    std::map<size_t, std::array<double, 3>> best;
    for (const auto& [sr, rates] : rate_) {
      for (int k = 0; k < 3; ++k)
        if (rates[k] > 0) best[sr.first][k] = std::max(best[sr.first][k], rates[k]);
      if (rates[2] <= 0) continue;
      for (int k = 0; k < 2; ++k)
        if (rates[k] > 0) ratios[sr.first][k].push_back(rates[k] / rates[2]);
    }
    std::printf("\nframed / raw, each framed run against the raw run of its round:\n");
    std::printf("%-8s  %-13s  %6s  %6s  %6s  %6s  %9s  %9s  %9s\n", "frame", "receiver", "rounds", "median", "min",
                "max", "best GB/s", "raw best", "best/best");
    for (auto& [size, per_kind] : ratios)
      for (int k = 0; k < 2; ++k) {
        std::vector<double> v = per_kind[k];
        if (v.empty()) continue;
        std::sort(v.begin(), v.end());
        double median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
        std::string frame = size >= (1u << 20) ? std::to_string(size >> 20) + " MiB" : std::to_string(size >> 10) + " KiB";
        std::printf("%-8s  %-13s  %6zu  %6.2f  %6.2f  %6.2f  %9.2f  %9.2f  %9.2f\n", frame.c_str(), kKinds[k], v.size(),
                    median, v.front(), v.back(), best[size][k] / 1e9, best[size][2] / 1e9, best[size][k] / best[size][2]);
      }
  }

 private:
  std::map<std::string, Key> keys_;
  std::map<std::pair<size_t, int>, std::array<double, 3>> rate_;
};

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--rounds=", 9) == 0)
      rounds = std::max(1, std::atoi(argv[i] + 9));
    else
      args.push_back(argv[i]);
  }
  std::map<std::string, Key> keys;
  for (int r = 0; r < rounds; ++r)
    for (size_t size : {size_t(64) << 10, size_t(1) << 20})
      for (int k = 0; k < 3; ++k) {
        std::string name = std::string(kKinds[k]) + "/round:" + std::to_string(r);
        auto* b = k == 2 ? benchmark::RegisterBenchmark(name.c_str(), raw)
                         : benchmark::RegisterBenchmark(name.c_str(), framed, k == 1);
        b->Arg(int64_t(size))->UseRealTime()->MinTime(0.5);
        keys[name + "/" + std::to_string(size)] = Key{r, size, k};
      }
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  RatioReporter reporter(std::move(keys));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.summary();
  benchmark::Shutdown();
  return 0;
}
