#pragma once
// Frames over TLS 1.3 with mutual authentication, for stages that talk across the internet.
//
// Every stage holds a certificate signed by the run's private CA (examples/make_certs.sh)
// and refuses any peer whose certificate is missing, signed by another CA, expired or not
// yet valid. Only TLS 1.3 is offered: no downgrade, no renegotiation, no session resumption
// (tickets are off: a stage connects once per run, and a resumed session would skip the
// certificate check on reconnect).
//
// The frame format, the JSON handshake (run id, stage count, config hash, expected stage)
// and the deadline rules are those of TcpLink (tcp.hpp): the same frames travel inside the
// TLS records, and one framing loop (stream_core.hpp, FrameChannel<TlsStream> here,
// FrameChannel<TcpStream> there) gives both the same timeouts, stall detection, stats
// (frame bytes, not TLS record overhead) and "broken links stay broken".
//
// Why not boost::asio::ssl::stream for the data: its synchronous read/write have no
// deadline, and over a non-blocking socket they drop the part of a TLS record the kernel
// did not take (asio::write returns would_block with the engine's output already
// consumed). Its async operations would need one io_context run by the sending and the
// receiving thread together, the problem tcp.hpp avoids. So Asio makes the sockets and the
// ssl::context (certificate loading, verify mode), and the OpenSSL session runs directly
// on the non-blocking descriptor: SSL_read/SSL_write report WANT_READ/WANT_WRITE, and
// poll() waits with the remaining time (TcpLink, with no record layer in between, sleeps in
// a blocking recv/send bounded by SO_RCVTIMEO/SO_SNDTIMEO instead). One SSL object must not
// be used by two threads at once, so each SSL call runs under a mutex; the waiting happens
// outside it, so a send is never stuck behind a recv that waits for the peer.
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/ssl.hpp>

#include "resbm/transport/tcp.hpp"

namespace resbm::transport {

// The run's CA and this stage's certificate and key, all PEM files as written by
// examples/make_certs.sh DIR STAGES: DIR/ca.crt, DIR/stage-K.crt, DIR/stage-K.key.
struct TlsOptions {
  std::string ca_file;    // peers must present a certificate signed by this CA
  std::string cert_file;  // this stage's certificate, signed by the same CA
  std::string key_file;   // its private key
};

// True when `host` names only this machine (127.0.0.0/8, ::1, localhost, or a name that
// resolves to loopback addresses only). "", 0.0.0.0 and :: mean every interface: false.
inline bool is_loopback_host(const std::string& host) {
  namespace ip = boost::asio::ip;
  auto loopback = [](const ip::address& a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped())
      return ip::make_address_v4(ip::v4_mapped, a.to_v6()).is_loopback();
    return a.is_loopback();
  };
  if (host == "localhost") return true;
  boost::system::error_code ec;
  ip::address a = ip::make_address(host, ec);
  if (!ec) return loopback(a);
  if (host.empty()) return false;
  boost::asio::io_context io;
  ip::tcp::resolver resolver(io);
  auto eps = resolver.resolve(host, "", ec);
  if (ec || eps.empty()) return false;
  for (const auto& e : eps)
    if (!loopback(e.endpoint().address())) return false;
  return true;
}

// Plain TCP stays available for one machine and trusted networks. Anywhere else its
// frames can be read and forged in transit, so a stage that binds or connects plain TCP
// to a non-loopback address says so. Returns whether it warned.
inline bool warn_if_plain_on_public(const std::string& host, std::ostream& out = std::cerr) {
  if (is_loopback_host(host)) return false;
  out << "resbm: warning: plain TCP on " << (host.empty() ? std::string("all interfaces") : host)
      << ": traffic is unauthenticated and unencrypted; use --tls-ca/--tls-cert/--tls-key "
         "(make them with examples/make_certs.sh, see docs/security.md)\n";
  return true;
}

namespace detail {

inline constexpr const char* kMakeCertsHint =
    "run examples/make_certs.sh DIR STAGES to make the run's CA (DIR/ca.crt) and one "
    "certificate and key per stage (DIR/stage-K.crt, DIR/stage-K.key)";

// Drains this thread's OpenSSL error queue into "reason; reason".
inline std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    const char* r = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += r ? r : cat("OpenSSL error ", e);
  }
  return out.empty() ? std::string("no OpenSSL reason given") : out;
}

inline std::string asn1_time_text(const ASN1_TIME* t) {
  if (!t) return "?";
  std::unique_ptr<BIO, decltype(&BIO_free)> b(BIO_new(BIO_s_mem()), BIO_free);
  if (!b || ASN1_TIME_print(b.get(), t) != 1) return "?";
  char* p = nullptr;
  long n = BIO_get_mem_data(b.get(), &p);
  return std::string(p, size_t(n));
}

inline std::string common_name(X509* x) {
  if (!x) return {};
  char buf[256];
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, sizeof buf);
  return n < 0 ? std::string() : std::string(buf, size_t(n));
}

inline void check_readable(const std::string& path, const char* what, const char* flag) {
  RESBM_CHECK(!path.empty(), cat("no TLS ", what, " file given"),
              cat("pass ", flag, " FILE; ", kMakeCertsHint));
  std::FILE* f = std::fopen(path.c_str(), "rb");
  int err = errno;
  if (f) {
    std::fclose(f);
    return;
  }
  fail(cat("cannot read the TLS ", what, " file ", path, ": ", std::strerror(err)),
       cat("check the path given to ", flag, " and its permissions, or ", kMakeCertsHint));
}

// The certificate store and settings shared by every connection of one stage. The warnings
// about this stage's own certificate do not stop it: the peer's refusal names the problem
// from the side that enforces it, and a test can still play a misconfigured stage.
inline std::shared_ptr<boost::asio::ssl::context> make_tls_context(const TlsOptions& t) {
  namespace ssl = boost::asio::ssl;
  check_readable(t.ca_file, "CA certificate", "--tls-ca");
  check_readable(t.cert_file, "certificate", "--tls-cert");
  check_readable(t.key_file, "private key", "--tls-key");
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls);
  SSL_CTX* h = ctx->native_handle();
  ERR_clear_error();
  RESBM_CHECK(SSL_CTX_set_min_proto_version(h, TLS1_3_VERSION) == 1 &&
                  SSL_CTX_set_max_proto_version(h, TLS1_3_VERSION) == 1,
              cat("this OpenSSL cannot restrict TLS to version 1.3: ", openssl_errors()),
              "build against OpenSSL 1.1.1 or newer");
  SSL_CTX_set_options(h, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_num_tickets(h, 0);
  SSL_CTX_set_session_cache_mode(h, SSL_SESS_CACHE_OFF);
  boost::system::error_code ec;
  ctx->load_verify_file(t.ca_file, ec);
  if (ec)
    fail(cat("cannot load the run's CA certificate from ", t.ca_file, ": ", openssl_errors(), " (",
             ec.message(), ")"),
         cat("pass the PEM CA certificate (ca.crt) to --tls-ca, or ", kMakeCertsHint));
  ctx->use_certificate_chain_file(t.cert_file, ec);
  if (ec)
    fail(cat("cannot load this stage's certificate from ", t.cert_file, ": ", openssl_errors(), " (",
             ec.message(), ")"),
         cat("pass a PEM certificate (stage-K.crt) to --tls-cert, or ", kMakeCertsHint));
  ctx->use_private_key_file(t.key_file, ssl::context::pem, ec);
  // Asio moves the first OpenSSL error into ec; a key of another certificate is reported
  // below, by name.
  if (ec && ERR_GET_REASON(static_cast<unsigned long>(static_cast<unsigned>(ec.value()))) == X509_R_KEY_VALUES_MISMATCH)
    ec.clear();
  if (ec)
    fail(cat("cannot load this stage's private key from ", t.key_file, ": ", openssl_errors(), " (",
             ec.message(), ")"),
         cat("pass the unencrypted PEM key (stage-K.key) to --tls-key, or ", kMakeCertsHint));
  if (!SSL_CTX_get0_privatekey(h) || SSL_CTX_check_private_key(h) != 1)
    fail(cat("the private key ", t.key_file, " does not belong to the certificate ", t.cert_file, ": ",
             openssl_errors()),
         "pass the key made together with the certificate (stage-K.key with stage-K.crt)");
  ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);

  X509* own = SSL_CTX_get0_certificate(h);
  if (own && X509_cmp_current_time(X509_get0_notAfter(own)) < 0)
    std::cerr << "resbm: warning: this stage's TLS certificate " << t.cert_file << " expired on "
              << asn1_time_text(X509_get0_notAfter(own))
              << "; peers will refuse it (make new certificates with examples/make_certs.sh)\n";
  return ctx;
}

// Why a peer's certificate failed verification, noted by the verify callback while the
// failing certificate is at hand (after the handshake OpenSSL keeps only the code).
struct VerifyNote {
  int error = X509_V_OK;
  int depth = 0;
  std::string subject, not_before, not_after;
};

inline int note_verify_failure(int ok, X509_STORE_CTX* x) {
  if (ok) return ok;
  auto* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* note = ssl ? static_cast<VerifyNote*>(SSL_get_app_data(ssl)) : nullptr;
  if (note && note->error == X509_V_OK) {
    note->error = X509_STORE_CTX_get_error(x);
    note->depth = X509_STORE_CTX_get_error_depth(x);
    if (X509* c = X509_STORE_CTX_get_current_cert(x)) {
      std::string cn = common_name(c);
      note->subject = cn.empty() ? std::string("without a common name") : cat("CN=", cn);
      note->not_before = asn1_time_text(X509_get0_notBefore(c));
      note->not_after = asn1_time_text(X509_get0_notAfter(c));
    }
  }
  return ok;
}

// OpenSSL's own socket BIO writes with write(), which raises SIGPIPE (and kills the
// process) when the peer has reset the connection. This one uses send(MSG_NOSIGNAL), as
// Asio does for plain TCP, and turns EAGAIN into OpenSSL's retry flags.
inline BIO_METHOD* nosigpipe_socket_bio() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "resbm socket");
    BIO_meth_set_write(m, [](BIO* b, const char* p, int n) -> int {
      BIO_clear_retry_flags(b);
      int fd = int(reinterpret_cast<intptr_t>(BIO_get_data(b)));
      ssize_t r = ::send(fd, p, size_t(n), MSG_NOSIGNAL);
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_write(b);
      return int(r);
    });
    BIO_meth_set_read(m, [](BIO* b, char* p, int n) -> int {
      BIO_clear_retry_flags(b);
      int fd = int(reinterpret_cast<intptr_t>(BIO_get_data(b)));
      ssize_t r = ::recv(fd, p, size_t(n), 0);
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) BIO_set_retry_read(b);
      return int(r);
    });
    BIO_meth_set_ctrl(m, [](BIO*, int cmd, long, void*) -> long { return cmd == BIO_CTRL_FLUSH ? 1 : 0; });
    BIO_meth_set_create(m, [](BIO* b) -> int {
      BIO_set_init(b, 1);
      return 1;
    });
    return m;
  }();
  return method;
}

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};

// What one non-blocking SSL call did. `error` is filled only for a failure; it holds the
// OpenSSL reasons, drained in the thread that made the call.
struct SslStep {
  enum Result { done, want_read, want_write, closed, failed } result = done;
  size_t bytes = 0;
  int sys_errno = 0;
  std::vector<unsigned long> codes;
};

inline SslStep ssl_step(SSL* ssl, int r, size_t bytes) {
  SslStep s;
  s.bytes = bytes;
  if (r == 1) return s;
  int e = SSL_get_error(ssl, r);
  s.sys_errno = errno;
  if (e == SSL_ERROR_WANT_READ) {
    s.result = SslStep::want_read;
  } else if (e == SSL_ERROR_WANT_WRITE) {
    s.result = SslStep::want_write;
  } else if (e == SSL_ERROR_ZERO_RETURN) {
    s.result = SslStep::closed;
  } else {
    s.result = SslStep::failed;
    while (unsigned long c = ERR_get_error()) s.codes.push_back(c);
    // OpenSSL 3 reports a TCP close without close_notify as an error; it is the same
    // event as a plain socket's EOF and is reported as such.
    if (e == SSL_ERROR_SYSCALL && s.codes.empty() && s.sys_errno == 0) s.result = SslStep::closed;
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
    if (s.codes.size() == 1 && ERR_GET_REASON(s.codes[0]) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
      s.result = SslStep::closed;
#endif
  }
  return s;
}

inline bool has_reason(const SslStep& s, int reason) {
  for (unsigned long c : s.codes)
    if (ERR_GET_REASON(c) == reason) return true;
  return false;
}

inline std::string reasons_text(const SslStep& s) {
  std::string out;
  for (unsigned long c : s.codes) {
    const char* r = ERR_reason_error_string(c);
    if (!out.empty()) out += "; ";
    out += r ? r : cat("OpenSSL error ", c);
  }
  if (out.empty()) out = s.sys_errno ? std::strerror(s.sys_errno) : "connection closed";
  return out;
}

// Turns a failed TLS step into an Error that says which side refused what, and why.
// `note` holds what this side's verification found; alerts carry the peer's verdict.
[[noreturn]] inline void fail_tls(const SslStep& s, const VerifyNote& note, const std::string& peer,
                                  const std::string& ca_file, bool in_handshake) {
  const std::string renew =
      "make new certificates with examples/make_certs.sh DIR STAGES [DAYS] and restart the stages";
  const std::string same_ca =
      "sign every stage's certificate with the run's CA (examples/make_certs.sh) and give every "
      "stage the same --tls-ca";
  if (note.error != X509_V_OK) {
    std::string cert = cat("its certificate (", note.subject.empty() ? std::string("?") : note.subject,
                           note.depth > 0 ? cat(", issuer at depth ", note.depth) : std::string(), ")");
    const char* why = X509_verify_cert_error_string(note.error);
    switch (note.error) {
      case X509_V_ERR_CERT_HAS_EXPIRED:
        fail(cat("refused peer ", peer, ": ", cert, " expired on ", note.not_after), renew);
      case X509_V_ERR_CERT_NOT_YET_VALID:
        fail(cat("refused peer ", peer, ": ", cert, " is not valid before ", note.not_before),
             "check both machines' clocks, or make new certificates");
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        fail(cat("refused peer ", peer, ": ", cert, " is not signed by this run's CA (", ca_file,
                 "): ", why),
             same_ca);
      default:
        fail(cat("refused peer ", peer, ": ", cert, " failed verification: ", why), same_ca);
    }
  }
  if (has_reason(s, SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE))
    fail(cat("refused peer ", peer, ": it presented no certificate"),
         "start every stage with --tls-ca, --tls-cert and --tls-key; mutual TLS needs a "
         "certificate signed by the run's CA on both ends");
  std::string alert = reasons_text(s);
  if (has_reason(s, SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED))
    fail(cat("peer ", peer, " refused this stage: it requires a certificate and got none (", alert, ")"),
         "pass --tls-cert and --tls-key");
  if (has_reason(s, SSL_R_TLSV1_ALERT_UNKNOWN_CA))
    fail(cat("peer ", peer, " refused this stage's certificate: it is not signed by a CA the peer trusts (",
             alert, ")"),
         same_ca);
  if (has_reason(s, SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED))
    fail(cat("peer ", peer, " refused this stage's certificate as expired (", alert, ")"), renew);
  if (has_reason(s, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE) || has_reason(s, SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN) ||
      has_reason(s, SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE) ||
      has_reason(s, SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED) || has_reason(s, SSL_R_TLSV1_ALERT_DECRYPT_ERROR))
    fail(cat("peer ", peer, " refused this stage's certificate (", alert, ")"),
         cat("see the peer's log; ", same_ca));
  if (has_reason(s, SSL_R_WRONG_VERSION_NUMBER) || has_reason(s, SSL_R_HTTP_REQUEST) ||
      has_reason(s, SSL_R_PACKET_LENGTH_TOO_LONG) || has_reason(s, SSL_R_UNSUPPORTED_PROTOCOL) ||
      has_reason(s, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION) || has_reason(s, SSL_R_RECORD_LENGTH_MISMATCH))
    fail(cat("peer ", peer, " does not speak TLS 1.3 (", alert,
             "): it is probably a plain-TCP stage, started without --tls-*"),
         "start every stage with the same --tls-ca and its own --tls-cert/--tls-key, or none of them");
  if (s.result == SslStep::closed && in_handshake)
    fail(cat("peer ", peer, " closed the connection during the TLS handshake"),
         "check the peer's log: it refused this stage's certificate, or it is a plain-TCP stage "
         "started without --tls-*");
  fail(cat("TLS with peer ", peer, " failed", in_handshake ? " during the handshake" : "", ": ", alert),
       "check the peer's log and both stages' --tls-* flags");
}

// The TLS byte stream of TlsLink: an OpenSSL session on the non-blocking descriptor. Each
// SSL call runs under `mu`; the waiting (poll() with the time left) happens outside it, so
// a send is never stuck behind a recv that waits for the peer.
class TlsStream {
 public:
  static constexpr bool kAuthenticated = true;
  static constexpr const char* kEofFix =
      "check the peer's log: it probably exited, crashed or refused this stage";

  // `note`, `peer` and `ca_file` belong to the link's State and outlive the stream's use;
  // they name the reason of a failure in TLS terms (fail_tls).
  void attach(SSL* ssl, int fd, const VerifyNote* note, const std::string* peer, const std::string* ca_file) {
    ssl_ = ssl;
    fd_ = fd;
    note_ = note;
    peer_ = peer;
    ca_file_ = ca_file;
  }
  std::mutex& mutex() { return mu_; }

  IoStep read(std::byte* p, size_t n, Clock::time_point deadline) {
    for (;;) {
      SslStep step = call([&](size_t* k) { return SSL_read_ex(ssl_, p, n, k); });
      if (step.result == SslStep::done) return {IoStep::done, step.bytes, {}, {}, {}};
      if (IoStep st; !waited(step, deadline, st)) return st;
    }
  }

  // TLS has no gather write: the header travels in the first record together with up to
  // 16 KiB - 48 bytes of payload (one record and one syscall for small frames), the rest
  // of the payload is encrypted straight from the caller's buffer. The first record is
  // staged again from the frame on every call, so a retry passes the same bytes.
  IoStep write(const HeaderBytes& h, std::span<const std::byte> payload, size_t done, Clock::time_point deadline) {
    constexpr size_t kRecord = 16384;
    const size_t first = kHeaderSize + std::min(payload.size(), kRecord - kHeaderSize);
    const std::byte* p;
    size_t n;
    if (done < first) {
      head_.resize(first - done);
      std::byte* out = head_.data();
      if (done < kHeaderSize) {
        std::memcpy(out, h.data() + done, kHeaderSize - done);
        out += kHeaderSize - done;
      }
      const size_t from = done > kHeaderSize ? done - kHeaderSize : 0;
      if (first > kHeaderSize + from) std::memcpy(out, payload.data() + from, first - kHeaderSize - from);
      p = head_.data();
      n = head_.size();
    } else {
      p = payload.data() + (done - kHeaderSize);
      n = payload.size() - (done - kHeaderSize);
    }
    for (;;) {
      SslStep step = call([&](size_t* k) { return SSL_write_ex(ssl_, p, n, k); });
      if (step.result == SslStep::done) return {IoStep::done, step.bytes, {}, {}, {}};
      if (IoStep st; !waited(step, deadline, st)) return st;
    }
  }

 private:
  // One SSL call under the session mutex, its outcome read in the same thread.
  template <class F>
  SslStep call(F&& f) {
    std::lock_guard lk(mu_);
    ERR_clear_error();
    size_t k = 0;
    int r = f(&k);
    return ssl_step(ssl_, r, k);
  }

  // After an SSL call that moved nothing: true once the descriptor is ready for the retry
  // OpenSSL asked for; otherwise `st` says why the stream stopped.
  bool waited(const SslStep& step, Clock::time_point deadline, IoStep& st) {
    if (step.result == SslStep::want_read || step.result == SslStep::want_write) {
      if (wait_fd(fd_, step.result == SslStep::want_read ? POLLIN : POLLOUT, deadline)) return true;
      st.result = IoStep::timed_out;
      return false;
    }
    if (step.result == SslStep::closed) {
      st.result = IoStep::eof;
      st.reason = reasons_text(step);
      return false;
    }
    if (step.codes.empty()) {
      st.result = IoStep::failed;
      st.reason = reasons_text(step);
      return false;
    }
    try {
      fail_tls(step, *note_, *peer_, *ca_file_, /*in_handshake=*/false);
    } catch (const Error& e) {
      st.result = IoStep::refused;
      st.problem = e.problem();
      st.fix = e.fix();
    }
    return false;
  }

  SSL* ssl_ = nullptr;
  int fd_ = -1;
  const VerifyNote* note_ = nullptr;
  const std::string* peer_ = nullptr;
  const std::string* ca_file_ = nullptr;
  std::mutex mu_;
  std::vector<std::byte> head_;  // the sender's (under send_mu): header + start of the payload
};


struct TlsState : FrameChannel<TlsStream> {
  static constexpr const char* kName = "TlsLink";
  TlsState(const TcpOptions& o, std::shared_ptr<boost::asio::ssl::context> c, std::string ca)
      : FrameChannel(o), ctx(std::move(c)), ca_file(std::move(ca)) {}
  // TLS close_notify, best effort: one alert, no wait for the answer.
  void end_session() {
    if (!ssl || broken.load()) return;
    std::lock_guard lk(stream.mutex());
    ERR_clear_error();
    SSL_shutdown(ssl.get());
    ERR_clear_error();
  }
  std::shared_ptr<boost::asio::ssl::context> ctx;  // outlives ssl, which refers to it
  std::string ca_file;
  asio::io_context io;
  tcp::socket sock{io};
  std::unique_ptr<SSL, SslFree> ssl;
  VerifyNote note;  // written by the verify callback during the handshake only
  std::string peer_addr, peer_cn;
  Handshake peer_hs;
};

}  // namespace detail

class TlsListener;

class TlsLink : public detail::StreamLink<detail::TlsState> {
 public:
  using Options = TcpOptions;

  // Connects to host:port (retrying like TcpLink::connect until opt.connect_timeout), runs
  // the TLS handshake within opt.handshake_timeout, then the resbm handshake inside TLS.
  // Neither handshake is retried: a refused certificate or config does not fix itself.
  static TlsLink connect(const std::string& host, uint16_t port, const Handshake& hs,
                         const Options& opt, const TlsOptions& tls) {
    return connect(host, port, hs, opt, detail::make_tls_context(tls), tls.ca_file);
  }

  // The common name of the peer's (verified) certificate, e.g. "resbm-stage-1".
  const std::string& peer_common_name() const { return state().peer_cn; }

 private:
  friend class TlsListener;
  using State = detail::TlsState;

  explicit TlsLink(std::unique_ptr<State> st) : StreamLink(std::move(st)) {}

  static TlsLink connect(const std::string& host, uint16_t port, const Handshake& hs, const Options& opt,
                         std::shared_ptr<boost::asio::ssl::context> ctx, const std::string& ca_file) {
    auto st = std::make_unique<State>(opt, std::move(ctx), ca_file);
    detail::connect_with_retry(st->io, st->sock, host, port, opt);
    TlsLink link(std::move(st));
    link.start(hs, /*initiator=*/true);
    return link;
  }

  // After the TCP connection is up: the TLS handshake, then the resbm handshake inside it
  // (the connecting side speaks first), as TcpLink does in the clear.
  void start(const Handshake& mine, bool initiator) {
    State& s = *st_;
    s.peer_addr = detail::prepare_socket(s.sock, /*non_blocking=*/true);
    s.peer_name = s.peer_addr;
    tls_handshake(initiator);
    s.stream.attach(s.ssl.get(), s.sock.native_handle(), &s.note, &s.peer_name, &s.ca_file);

    // Beyond the config check: a certificate made for stage k (CN=resbm-stage-k, as
    // make_certs.sh writes them) may only be used by stage k.
    auto check = [&](const Handshake& theirs) {
      verify_handshake(mine, theirs, s.peer_addr);
      const std::string prefix = "resbm-stage-";
      if (s.peer_cn.rfind(prefix, 0) == 0) {
        std::string k = s.peer_cn.substr(prefix.size());
        RESBM_CHECK(k == std::to_string(theirs.stage),
                    cat("peer ", s.peer_addr, " claims to be stage ", theirs.stage,
                        " but presented the certificate of ", s.peer_cn),
                    "give each stage its own certificate (stage-K.crt and stage-K.key for stage K)");
      }
    };
    exchange_handshakes(mine, initiator, check);
  }

  void tls_handshake(bool initiator) {
    State& s = *st_;
    ERR_clear_error();
    SSL* ssl = SSL_new(s.ctx->native_handle());
    RESBM_CHECK(ssl, cat("cannot create a TLS session: ", detail::openssl_errors()), "report this as a bug");
    s.ssl.reset(ssl);
    BIO* bio = BIO_new(detail::nosigpipe_socket_bio());
    RESBM_CHECK(bio, cat("cannot create a socket BIO: ", detail::openssl_errors()), "report this as a bug");
    BIO_set_data(bio, reinterpret_cast<void*>(intptr_t(s.sock.native_handle())));
    SSL_set_bio(ssl, bio, bio);
    SSL_set_app_data(ssl, &s.note);
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), detail::note_verify_failure);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (initiator)
      SSL_set_connect_state(ssl);
    else
      SSL_set_accept_state(ssl);
    auto deadline = detail::Clock::now() + s.opt.handshake_timeout;
    for (;;) {
      ERR_clear_error();
      detail::SslStep step = detail::ssl_step(ssl, SSL_do_handshake(ssl), 0);
      if (step.result == detail::SslStep::done) break;
      if (step.result == detail::SslStep::want_read || step.result == detail::SslStep::want_write) {
        short ev = step.result == detail::SslStep::want_read ? POLLIN : POLLOUT;
        if (!detail::wait_fd(s.sock.native_handle(), ev, deadline))
          s.break_link(cat("TLS handshake with ", s.peer_addr, " timed out after ",
                           detail::timeout_text(s.opt.handshake_timeout)),
                       "check that the peer is a resbm stage started with --tls-* flags, or raise the "
                       "handshake timeout");
        continue;
      }
      linger_after_refusal();
      failed(step, /*in_handshake=*/true);
    }
    // The session exists now; from here on the SSL object is shared, and the stream's mutex
    // guards it.
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    s.peer_cn = detail::common_name(SSL_get0_peer_certificate(ssl));
#else
    X509* pc = SSL_get_peer_certificate(ssl);
    s.peer_cn = detail::common_name(pc);
    X509_free(pc);
#endif
  }

  // A refused handshake leaves the peer's last flight (and, in TLS 1.3, possibly its first
  // frame) unread here; closing now would answer with a reset that can overtake the alert,
  // and the peer would report "connection reset" instead of the reason. So: finish
  // sending (FIN after the alert), read until the peer closes too, at most one second.
  void linger_after_refusal() {
    State& s = *st_;
    int fd = s.sock.native_handle();
    ::shutdown(fd, SHUT_WR);
    auto deadline = detail::Clock::now() + std::chrono::seconds(1);
    char sink[4096];
    while (detail::wait_fd(fd, POLLIN, deadline)) {
      ssize_t n = ::recv(fd, sink, sizeof sink, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
    }
  }

  [[noreturn]] void failed(const detail::SslStep& step, bool in_handshake) {
    State& s = *st_;
    try {
      detail::fail_tls(step, s.note, s.peer_name, s.ca_file, in_handshake);
    } catch (const Error& e) {
      s.break_link(e.problem(), e.fix());
    }
  }
};
static_assert(Link<TlsLink>);

// Listens on host:port (port 0: any free port, see port()). Each accept() yields one
// authenticated link; the certificates are loaded once, here.
class TlsListener {
 public:
  TlsListener(const std::string& host, uint16_t port, const TlsOptions& tls)
      : ctx_(detail::make_tls_context(tls)), ca_file_(tls.ca_file), acceptor_(io_) {
    detail::listen_on(acceptor_, io_, host, port);
  }

  uint16_t port() const { return acceptor_.local_endpoint().port(); }
  std::string address() const { return detail::endpoint_text(acceptor_.local_endpoint()); }

  // Waits up to opt.accept_timeout for a stage to connect, then runs both handshakes. A
  // refused peer is an Error naming the reason; the listener stays open for the next accept().
  TlsLink accept(const Handshake& hs, const TcpOptions& opt = {}) {
    auto st = std::make_unique<TlsLink::State>(opt, ctx_, ca_file_);
    detail::accept_within(acceptor_, io_, st->sock, opt.accept_timeout);
    TlsLink link(std::move(st));
    link.start(hs, /*initiator=*/false);
    return link;
  }

  // Connects with this listener's certificates (loaded once): for a stage that both
  // listens for its predecessor and connects to its successor.
  TlsLink connect(const std::string& host, uint16_t port, const Handshake& hs, const TcpOptions& opt = {}) {
    return TlsLink::connect(host, port, hs, opt, ctx_, ca_file_);
  }

 private:
  std::shared_ptr<boost::asio::ssl::context> ctx_;
  std::string ca_file_;
  detail::asio::io_context io_;
  detail::tcp::acceptor acceptor_;
};

}  // namespace resbm::transport
