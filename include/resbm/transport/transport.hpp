#pragma once
// Transports: frames (frame.hpp), the Link concept, in-process pairs, Asio TCP links, TLS
// links (tls.hpp) and the shaping decorator. They move bytes only and know nothing of codecs.
#include "resbm/transport/concepts.hpp"
#include "resbm/transport/frame.hpp"
#include "resbm/transport/in_process.hpp"
#include "resbm/transport/shaped.hpp"
#include "resbm/transport/tcp.hpp"
#include "resbm/transport/tls.hpp"

namespace resbm::transport {
static_assert(Link<Shaped<TcpLink>>);
static_assert(Link<Shaped<TlsLink>>);
}  // namespace resbm::transport
