#pragma once
// A Link chosen at run time (in-process, TCP, TLS, shaped or not) behind one type, so the
// pipeline runner is compiled once per codec rather than once per codec and link.
#include <memory>
#include <utility>
#include <type_traits>
#include <vector>

#include "resbm/transport/concepts.hpp"

namespace resbm::transport {

class AnyLink {
 public:
  AnyLink() = default;
  template <Link L>
    requires(!std::is_same_v<std::decay_t<L>, AnyLink>)
  explicit AnyLink(L link) : impl_(std::make_unique<Model<L>>(std::move(link))) {}

  // Builds the link in place: for links that cannot move (Shaped owns a thread).
  template <Link L, class... Args>
  static AnyLink make(Args&&... args) {
    AnyLink a;
    a.impl_ = std::make_unique<Model<L>>(std::in_place, std::forward<Args>(args)...);
    return a;
  }

  explicit operator bool() const { return bool(impl_); }
  void send(const FrameHeader& h, std::span<const std::byte> payload) { impl_->send(h, payload); }
  Message recv(Kind expected, std::chrono::milliseconds timeout) { return impl_->recv(expected, timeout); }
  // transport::recv_into() through the wrapped link (see concepts.hpp).
  FrameHeader recv_into(Kind expected, std::chrono::milliseconds timeout, std::vector<std::byte>& payload) {
    return impl_->recv_into(expected, timeout, payload);
  }
  void close() {
    if (impl_) impl_->close();
  }
  std::string peer() const { return impl_ ? impl_->peer() : std::string("(none)"); }
  LinkStats stats() const { return impl_ ? impl_->stats() : LinkStats{}; }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual void send(const FrameHeader&, std::span<const std::byte>) = 0;
    virtual Message recv(Kind, std::chrono::milliseconds) = 0;
    virtual FrameHeader recv_into(Kind, std::chrono::milliseconds, std::vector<std::byte>&) = 0;
    virtual void close() = 0;
    virtual std::string peer() const = 0;
    virtual LinkStats stats() const = 0;
  };
  template <class L>
  struct Model final : Concept {
    explicit Model(L l) : link(std::move(l)) {}
    template <class... Args>
    explicit Model(std::in_place_t, Args&&... args) : link(std::forward<Args>(args)...) {}
    void send(const FrameHeader& h, std::span<const std::byte> p) override { link.send(h, p); }
    Message recv(Kind k, std::chrono::milliseconds t) override { return link.recv(k, t); }
    FrameHeader recv_into(Kind k, std::chrono::milliseconds t, std::vector<std::byte>& p) override {
      return transport::recv_into(link, k, t, p);
    }
    void close() override { link.close(); }
    std::string peer() const override { return link.peer(); }
    LinkStats stats() const override { return link.stats(); }
    L link;
  };
  std::unique_ptr<Concept> impl_;
};
static_assert(Link<AnyLink>);

}  // namespace resbm::transport
