#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "resbm/transport/any_link.hpp"
#include "resbm/transport/tls.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace resbm;
using namespace resbm::transport;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

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

Handshake hs(int stage, int expect, uint64_t config = 0xC0FFEE) {
  Handshake h;
  h.run_id = "run-tls";
  h.stage = stage;
  h.n_stages = 4;
  h.config_hash = config;
  h.expect_peer = expect;
  return h;
}

// Refusals must surface within a second or two; nothing here waits on a healthy peer long.
TcpOptions quick() {
  TcpOptions o;
  o.connect_timeout = 3s;
  o.accept_timeout = 5s;
  o.handshake_timeout = 3s;
  o.stall_timeout = 3s;
  return o;
}

// ---- certificates, made with the OpenSSL C API (no openssl CLI needed) --------------------
using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using Cert = std::unique_ptr<X509, decltype(&X509_free)>;

Key p256_key() {
  EVP_PKEY_CTX* c = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr);
  EVP_PKEY* k = nullptr;
  bool ok = c && EVP_PKEY_keygen_init(c) == 1 &&
            EVP_PKEY_CTX_set_ec_paramgen_curve_nid(c, NID_X9_62_prime256v1) == 1 && EVP_PKEY_keygen(c, &k) == 1;
  EVP_PKEY_CTX_free(c);
  REQUIRE(ok);
  return Key(k, EVP_PKEY_free);
}

void add_ext(X509* x, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, x, nullptr, nullptr, 0);
  X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
  REQUIRE(e);
  REQUIRE(X509_add_ext(x, e, -1) == 1);
  X509_EXTENSION_free(e);
}

// A certificate for `key` named CN=cn, valid over [now + from_s, now + to_s], signed by
// (issuer, issuer_key), or self-signed CA when issuer is null.
Cert make_cert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key, long from_s, long to_s) {
  static long serial = 1;
  Cert x(X509_new(), X509_free);
  REQUIRE(X509_set_version(x.get(), 2) == 1);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), from_s);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), to_s);
  REQUIRE(X509_set_pubkey(x.get(), key) == 1);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  bool ca = issuer == nullptr;
  X509* signer = ca ? x.get() : issuer;
  REQUIRE(X509_set_issuer_name(x.get(), X509_get_subject_name(signer)) == 1);
  add_ext(x.get(), signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  add_ext(x.get(), signer, NID_key_usage, ca ? "critical,keyCertSign,cRLSign" : "critical,digitalSignature");
  add_ext(x.get(), signer, NID_subject_key_identifier, "hash");
  if (!ca) {
    add_ext(x.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(x.get(), signer, NID_authority_key_identifier, "keyid");
  }
  REQUIRE(X509_sign(x.get(), ca ? key : issuer_key, EVP_sha256()) > 0);
  return x;
}

void write_pem(const fs::path& p, X509* x) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(PEM_write_X509(f, x) == 1);
  std::fclose(f);
}
void write_pem(const fs::path& p, EVP_PKEY* k) {
  std::FILE* f = std::fopen(p.c_str(), "wb");
  REQUIRE(f);
  REQUIRE(PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr) == 1);
  std::fclose(f);
}

// Every certificate the tests need, made once per process in a private temp dir:
//   ca.crt            the run's CA           other-ca.crt   a second, unrelated CA
//   stage-K.crt/.key  K = 0..2, by the CA    rogue-1.*      stage 1, signed by the other CA
//   expired-1.*       stage 1 by the CA, notAfter yesterday
struct Pki {
  fs::path dir;
  Pki() {
    dir = fs::temp_directory_path() / ("resbm-test-tls-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const long day = 86400;
    Key ca_key = p256_key(), other_key = p256_key();
    Cert ca = make_cert("resbm test CA", ca_key.get(), nullptr, nullptr, -day, 30 * day);
    Cert other = make_cert("some other CA", other_key.get(), nullptr, nullptr, -day, 30 * day);
    write_pem(dir / "ca.crt", ca.get());
    write_pem(dir / "other-ca.crt", other.get());
    auto leaf = [&](const std::string& name, int stage, X509* by, EVP_PKEY* by_key, long from, long to) {
      Key k = p256_key();
      Cert c = make_cert("resbm-stage-" + std::to_string(stage), k.get(), by, by_key, from, to);
      write_pem(dir / (name + ".crt"), c.get());
      write_pem(dir / (name + ".key"), k.get());
    };
    for (int s = 0; s < 3; ++s) leaf("stage-" + std::to_string(s), s, ca.get(), ca_key.get(), -day, 30 * day);
    leaf("rogue-1", 1, other.get(), other_key.get(), -day, 30 * day);
    leaf("expired-1", 1, ca.get(), ca_key.get(), -3 * day, -day);
  }
  ~Pki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  TlsOptions opts(const std::string& name, const std::string& ca = "ca.crt") const {
    return {(dir / ca).string(), (dir / (name + ".crt")).string(), (dir / (name + ".key")).string()};
  }
};

const Pki& pki() {
  static Pki p;
  return p;
}

// Runs accept() on a thread and connect() here; returns both sides' errors ("<no error>"
// when that side succeeded).
struct Both {
  std::string server, client;
};
Both attempt(const TlsOptions& server_tls, const Handshake& server_hs, const TlsOptions& client_tls,
             const Handshake& client_hs) {
  TlsListener listener("127.0.0.1", 0, server_tls);
  auto server = std::async(std::launch::async, [&] {
    return error_of([&] {
      TlsLink l = listener.accept(server_hs, quick());
      // Keep the link open until the client has its answer.
      try {
        l.recv(Kind::activation, 2s);
      } catch (const Error&) {
      }
    });
  });
  Both r;
  r.client = error_of([&] {
    TlsLink l = TlsLink::connect("127.0.0.1", listener.port(), client_hs, quick(), client_tls);
    // A refusal of the client's certificate reaches a TLS 1.3 client after its handshake
    // completed; wait for the peer's verdict rather than closing first.
    try {
      l.recv(Kind::activation, 200ms);
    } catch (const LinkTimeout&) {
    }
  });
  r.server = server.get();
  return r;
}

}  // namespace

TEST_CASE("TLS: mutual authentication, frames both ways at once, stats, clean shutdown") {
  TlsListener listener("127.0.0.1", 0, pki().opts("stage-1"));
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TlsLink a = TlsLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick(), pki().opts("stage-0"));
  TlsLink b = server.get();
  REQUIRE(a.peer() == "127.0.0.1:" + std::to_string(listener.port()) + " (stage 1)");
  REQUIRE(has(b.peer(), " (stage 0)"));
  REQUIRE(a.peer_common_name() == "resbm-stage-1");
  REQUIRE(b.peer_common_name() == "resbm-stage-0");
  REQUIRE(b.peer_handshake().config_hash == 0xC0FFEE);
  const LinkStats a0 = a.stats(), b0 = b.stats();  // the handshake frames

  // Large frames outrun the socket buffers (partial TLS writes, WANT_WRITE); small ones
  // share records with their headers. Both directions run at once on separate threads.
  constexpr int kFrames = 60;
  auto size_of = [](int i) { return size_t(i % 5 == 0 ? 700000 : i * 131); };
  uint64_t payload_a = 0, payload_b = 0;
  for (int i = 0; i < kFrames; ++i) payload_a += size_of(i), payload_b += size_of(i) / 2;
  int bad_a = 0, bad_b = 0;
  std::thread tb([&] {
    std::thread sender([&] {
      for (int i = 0; i < kFrames; ++i) b.send(header(Kind::gradient, 1, uint32_t(i)), pattern(size_of(i) / 2, uint32_t(i) + 3));
    });
    for (int i = 0; i < kFrames; ++i) {
      Message m = b.recv(Kind::activation, 10s);
      bad_b += m.header.micro_batch != uint32_t(i) || m.payload != pattern(size_of(i), uint32_t(i));
    }
    sender.join();
  });
  std::thread ta([&] {
    for (int i = 0; i < kFrames; ++i) {
      Message m = a.recv(Kind::gradient, 10s);
      bad_a += m.header.micro_batch != uint32_t(i) || m.payload != pattern(size_of(i) / 2, uint32_t(i) + 3);
    }
  });
  for (int i = 0; i < kFrames; ++i) a.send(header(Kind::activation, 1, uint32_t(i)), pattern(size_of(i), uint32_t(i)));
  ta.join();
  tb.join();
  REQUIRE(bad_a == 0);
  REQUIRE(bad_b == 0);

  // Frame bytes, headers included, exactly as TcpLink counts them (TLS records not included).
  LinkStats as = a.stats(), bs = b.stats();
  REQUIRE(as.bytes_sent - a0.bytes_sent == kFrames * kHeaderSize + payload_a);
  REQUIRE(bs.bytes_received - b0.bytes_received == kFrames * kHeaderSize + payload_a);
  REQUIRE(bs.bytes_sent - b0.bytes_sent == kFrames * kHeaderSize + payload_b);
  REQUIRE(as.bytes_received - a0.bytes_received == kFrames * kHeaderSize + payload_b);
  REQUIRE(as.frames_sent - a0.frames_sent == uint64_t(kFrames));
  REQUIRE(bs.frames_received - b0.frames_received == uint64_t(kFrames));

  // A timeout before a frame consumes nothing: the link stays usable.
  REQUIRE_THROWS_AS(b.recv(Kind::activation, 50ms), LinkTimeout);
  a.send(header(Kind::heartbeat, 2, 0), {});
  a.send(header(Kind::activation, 2, 7), pattern(10, 1));
  REQUIRE(b.recv(Kind::activation, 2s).header.micro_batch == 7);

  // Through AnyLink, then the peer's close is LinkClosed on the other side.
  AnyLink any(std::move(a));
  any.close();
  std::string closed;
  try {
    b.recv(Kind::activation, 2s);
  } catch (const LinkClosed& e) {
    closed = e.what();
  }
  REQUIRE(has(closed, "shut the link down"));
  REQUIRE_THROWS_AS(any.recv(Kind::gradient, 10ms), LinkClosed);
}

TEST_CASE("TLS: close() on one thread wakes a recv() blocked on another") {
  TlsListener listener("127.0.0.1", 0, pki().opts("stage-1"));
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TlsLink a = TlsLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick(), pki().opts("stage-0"));
  TlsLink b = server.get();
  auto waiting = std::async(std::launch::async, [&] { return error_of([&] { a.recv(Kind::gradient, 20s); }); });
  std::this_thread::sleep_for(50ms);
  auto t0 = std::chrono::steady_clock::now();
  a.close();
  std::string e = waiting.get();
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
  REQUIRE(has(e, "closed by this stage"));
}

TEST_CASE("TLS: recv_into reuses the caller's buffer; a shorter frame shows nothing of an earlier one") {
  TlsListener listener("127.0.0.1", 0, pki().opts("stage-1"));
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TlsLink a = TlsLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick(), pki().opts("stage-0"));
  TlsLink b = server.get();
  // Around the first record (16 KiB - 48 bytes of payload travel with the header).
  const size_t sizes[] = {200000, 16336, 16337, 7, 0, 16335, 123456};
  std::thread sender([&] {
    for (size_t i = 0; i < std::size(sizes); ++i) a.send(header(Kind::activation, 1, uint32_t(i)), pattern(sizes[i], uint32_t(i)));
  });
  std::vector<std::byte> buf;
  for (size_t i = 0; i < std::size(sizes); ++i) {
    FrameHeader h = b.recv_into(Kind::activation, 5s, buf);
    INFO("frame " << i << " of " << sizes[i] << " bytes");
    REQUIRE(h.micro_batch == uint32_t(i));
    REQUIRE(buf == pattern(sizes[i], uint32_t(i)));
  }
  sender.join();
  REQUIRE(buf.capacity() >= 200000);  // kept from the first frame
}

TEST_CASE("TLS: a peer without a certificate is refused, and told so") {
  TlsListener listener("127.0.0.1", 0, pki().opts("stage-1"));
  auto server = std::async(std::launch::async, [&] { return error_of([&] { listener.accept(hs(1, 0), quick()); }); });
  // A client that trusts the run's CA but presents nothing: TlsLink cannot be made to
  // do that (it requires a certificate), so plain Asio SSL plays it.
  asio::io_context io;
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  ctx.load_verify_file(pki().opts("stage-0").ca_file);
  ctx.set_verify_mode(asio::ssl::verify_peer);
  asio::ssl::stream<asio::ip::tcp::socket> client(io, ctx);
  client.next_layer().connect({asio::ip::make_address("127.0.0.1"), listener.port()});
  client.handshake(asio::ssl::stream_base::client);  // TLS 1.3: the client finishes first
  std::string j = encode_handshake(hs(0, 1));
  FrameHeader h = seal(header(Kind::handshake, 0, 0), std::as_bytes(std::span(j.data(), j.size())));
  HeaderBytes hb = encode_header(h);
  boost::system::error_code ec;
  asio::write(client, asio::buffer(hb.data(), hb.size()), ec);
  std::array<char, 64> buf;
  client.read_some(asio::buffer(buf), ec);  // the server's verdict arrives as an alert
  std::string e = server.get();
  INFO(e);
  REQUIRE(has(e, "refused peer 127.0.0.1:"));
  REQUIRE(has(e, "presented no certificate"));
  REQUIRE(has(e, "--tls-cert"));
  REQUIRE(ec);
  REQUIRE(has(ec.message(), "certificate required"));

  // And a stage configured without one is stopped before it connects anywhere.
  TlsOptions none = pki().opts("stage-0");
  none.cert_file.clear();
  std::string local = error_of([&] { TlsLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick(), none); });
  REQUIRE(has(local, "no TLS certificate file given"));
  REQUIRE(has(local, "--tls-cert"));
  REQUIRE(has(local, "make_certs.sh"));
}

TEST_CASE("TLS: a certificate from another CA is refused on both sides") {
  Both r = attempt(pki().opts("stage-1"), hs(1, 0), pki().opts("rogue-1", "ca.crt"), hs(0, 1));
  INFO(r.server);
  INFO(r.client);
  // The server refused the client's certificate...
  REQUIRE(has(r.server, "refused peer 127.0.0.1:"));
  REQUIRE(has(r.server, "CN=resbm-stage-1"));
  REQUIRE(has(r.server, "is not signed by this run's CA"));
  REQUIRE(has(r.server, "same --tls-ca"));
  // ...and the client learns it from the alert.
  REQUIRE(has(r.client, "refused this stage's certificate"));
  REQUIRE(has(r.client, "not signed by a CA the peer trusts"));

  // A client that trusts only the other CA refuses the server's certificate itself.
  Both r2 = attempt(pki().opts("stage-1"), hs(1, 0), pki().opts("rogue-1", "other-ca.crt"), hs(0, 1));
  INFO(r2.server);
  INFO(r2.client);
  REQUIRE(has(r2.client, "is not signed by this run's CA"));
  REQUIRE(has(r2.client, "other-ca.crt"));
  REQUIRE(has(r2.server, "not signed by a CA the peer trusts"));
}

TEST_CASE("TLS: an expired certificate is refused on both sides") {
  Both r = attempt(pki().opts("stage-1"), hs(1, 0), pki().opts("expired-1"), hs(0, 1));
  INFO(r.server);
  INFO(r.client);
  REQUIRE(has(r.server, "refused peer"));
  REQUIRE(has(r.server, "expired on"));
  REQUIRE(has(r.server, "make_certs.sh"));
  REQUIRE(has(r.client, "refused this stage's certificate as expired"));

  // The expired certificate on the listening side: the connecting stage refuses it.
  Both r2 = attempt(pki().opts("expired-1"), hs(1, 0), pki().opts("stage-0"), hs(0, 1));
  INFO(r2.server);
  INFO(r2.client);
  REQUIRE(has(r2.client, "expired on"));
  REQUIRE(has(r2.server, "refused this stage's certificate as expired"));
}

TEST_CASE("TLS: the config-hash check still runs inside TLS, and certificates are bound to stages") {
  Both r = attempt(pki().opts("stage-1"), hs(1, 0, 0xBB), pki().opts("stage-0"), hs(0, 1, 0xAA));
  INFO(r.server);
  INFO(r.client);
  REQUIRE(has(r.server, "runs config hash 00000000000000aa but this stage has 00000000000000bb"));
  REQUIRE(has(r.client, "runs config hash 00000000000000bb but this stage has 00000000000000aa"));

  // Stage 2's certificate used by a process that claims to be stage 0.
  Both r2 = attempt(pki().opts("stage-1"), hs(1, -1), pki().opts("stage-2"), hs(0, 1));
  INFO(r2.server);
  INFO(r2.client);
  REQUIRE(has(r2.server, "claims to be stage 0 but presented the certificate of resbm-stage-2"));
  REQUIRE(has(r2.client, "refused the handshake"));
}

TEST_CASE("TLS: plain TCP and TLS stages refuse each other with a hint") {
  TlsListener listener("127.0.0.1", 0, pki().opts("stage-1"));
  auto server = std::async(std::launch::async, [&] { return error_of([&] { listener.accept(hs(1, 0), quick()); }); });
  std::string client = error_of([&] { TcpLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick()); });
  std::string e = server.get();
  INFO(e);
  INFO(client);
  REQUIRE(has(e, "does not speak TLS 1.3"));
  REQUIRE(has(e, "plain-TCP stage"));
  REQUIRE(client != "<no error>");

  TcpListener plain("127.0.0.1", 0);
  auto plain_server = std::async(std::launch::async, [&] { return error_of([&] { plain.accept(hs(1, 0), quick()); }); });
  std::string tls_client =
      error_of([&] { TlsLink::connect("127.0.0.1", plain.port(), hs(0, 1), quick(), pki().opts("stage-0")); });
  INFO(tls_client);
  REQUIRE(has(tls_client, "during the TLS handshake"));
  REQUIRE(has(tls_client, "plain-TCP stage"));
  REQUIRE(has(plain_server.get(), "not a resbm peer or wrong port"));
}

TEST_CASE("TLS: unreadable or mismatched certificate files name the file and the fix") {
  TlsOptions t = pki().opts("stage-0");
  t.ca_file = (pki().dir / "missing-ca.crt").string();
  std::string e = error_of([&] { TlsListener("127.0.0.1", 0, t); });
  REQUIRE(has(e, "cannot read the TLS CA certificate file " + t.ca_file));
  REQUIRE(has(e, "No such file"));
  REQUIRE(has(e, "examples/make_certs.sh"));

  t = pki().opts("stage-0");
  t.key_file = (pki().dir / "nope.key").string();
  REQUIRE(has(error_of([&] { TlsListener("127.0.0.1", 0, t); }), "cannot read the TLS private key file"));

  t = pki().opts("stage-0");
  t.cert_file = t.key_file;  // a key where a certificate belongs
  e = error_of([&] { TlsListener("127.0.0.1", 0, t); });
  REQUIRE(has(e, "cannot load this stage's certificate from " + t.cert_file));

  t = pki().opts("stage-0");
  t.key_file = pki().opts("stage-1").key_file;
  e = error_of([&] { TlsListener("127.0.0.1", 0, t); });
  REQUIRE(has(e, "does not belong to the certificate"));
}

TEST_CASE("plain TCP on a non-loopback address warns") {
  std::ostringstream out;
  REQUIRE_FALSE(warn_if_plain_on_public("127.0.0.1", out));
  REQUIRE_FALSE(warn_if_plain_on_public("127.0.0.2", out));
  REQUIRE_FALSE(warn_if_plain_on_public("::1", out));
  REQUIRE_FALSE(warn_if_plain_on_public("localhost", out));
  REQUIRE(out.str().empty());
  REQUIRE(warn_if_plain_on_public("0.0.0.0", out));
  REQUIRE(has(out.str(), "plain TCP on 0.0.0.0: traffic is unauthenticated and unencrypted"));
  REQUIRE(has(out.str(), "--tls-ca/--tls-cert/--tls-key"));
  REQUIRE(warn_if_plain_on_public("10.1.2.3", out));
  REQUIRE(warn_if_plain_on_public("", out));
  REQUIRE(has(out.str(), "all interfaces"));
}

// examples/make_certs.sh is what users run; its output must work with TlsLink as is.
TEST_CASE("TLS: certificates from examples/make_certs.sh connect two stages") {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
    WARN("openssl CLI not installed; skipping the make_certs.sh check");
    return;
  }
  fs::path dir = pki().dir / "made";
  std::string cmd = std::string("bash ") + RESBM_SOURCE_DIR + "/examples/make_certs.sh " + dir.string() + " 2 >/dev/null";
  REQUIRE(std::system(cmd.c_str()) == 0);
  auto opts = [&](int k) {
    return TlsOptions{(dir / "ca.crt").string(), (dir / cat("stage-", k, ".crt")).string(),
                      (dir / cat("stage-", k, ".key")).string()};
  };
  TlsListener listener("127.0.0.1", 0, opts(1));
  auto server = std::async(std::launch::async, [&] { return listener.accept(hs(1, 0), quick()); });
  TlsLink a = TlsLink::connect("127.0.0.1", listener.port(), hs(0, 1), quick(), opts(0));
  TlsLink b = server.get();
  a.send(header(Kind::activation, 0, 0), pattern(1000, 5));
  REQUIRE(b.recv(Kind::activation, 2s).payload == pattern(1000, 5));
  REQUIRE(b.peer_common_name() == "resbm-stage-0");
}
