#pragma once
// Subspace<rank<R>, Wire>: the "subspace models" baseline. A fixed orthonormal basis
// U [d, r] and a fixed random token embedding F [vocab, d]; the sender sends
// c = Uᵀ(h − F[x]) (r values per token), the receiver rebuilds h' = U c + F[x].
//
// That is exact only if h − F[x] lies in span(U), and the model keeps it there through
// constrain(): after init and after every optimizer step every parameter that writes the
// residual stream is projected —
//   "*.attn.wo.weight", "*.mlp.w2.weight" [d, in]:  W <- U Uᵀ W
//   "tok_embeddings.weight" [vocab, d]:            E <- F + (E − F) U Uᵀ
// The stream starts as E[x] = F[x] + (span(U)) and each block adds wo·(...) + w2·(...), both
// in span(U); RMSNorm and attention only read the stream. So at every boundary
// h = F[x] + U a for some a, and the boundary is lossless up to the wire's rounding.
//
// U and F come from a fixed Philox seed, not the run's seed: every stage and every
// boundary must use the very same basis, and a seed that differed between two processes
// would silently make the boundary lossy. Column j of U does not depend on r (nested
// subspaces), and both are cached per shape so constrain() after every step is only the
// projections.
#include <cmath>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "resbm/codec/concepts.hpp"
#include "resbm/codec/detail.hpp"
#include "resbm/codec/policies.hpp"
#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/nn/init.hpp"
#include "resbm/ops/cpu/gemm.hpp"

namespace resbm::codec {

template <class Rank, class Wire>
struct Subspace {
  static_assert(is_rank_v<Rank>, "Subspace: the first parameter must be resbm::rank<R>");
  static_assert(Rank::value >= 1, "Subspace: rank<R> needs R >= 1");
  static_assert(WirePolicy<Wire>, "Subspace: Wire does not model resbm::codec::WirePolicy");

  static constexpr int r = Rank::value;
  static constexpr const char* name = "subspace";
  static constexpr uint64_t kSeed = 0x5ab5bace5eedull;
  // The scale of the model's own embedding init, so the constrained embedding starts out
  // as large as an unconstrained one.
  static constexpr double kEmbeddingStd = 0.02;
  using fwd_wire = Wire;
  using bwd_wire = Wire;

  // U [d, r], row-major, orthonormal columns: Gaussian columns, modified Gram–Schmidt in
  // double, run twice (one pass loses orthogonality as cond(G)·eps; the second restores it
  // to rounding).
  template <class T>
  static const Buffer<T>& basis(int d) {
    static std::mutex m;
    static std::map<int, Buffer<T>> cache;
    std::lock_guard<std::mutex> lock(m);
    auto it = cache.find(d);
    if (it != cache.end()) return it->second;
    RESBM_CHECK(r <= d, cat("Subspace: rank ", r, " is larger than d_model ", d), "choose r <= d_model");
    std::vector<double> u(size_t(d) * r);  // column-major while orthonormalising
    const uint64_t stream = nn::name_stream("subspace.basis");
    for (int j = 0; j < r; ++j) {
      double* v = u.data() + size_t(j) * d;
      for (int i = 0; i < d; ++i) v[i] = double(Philox::normal(kSeed, stream, uint64_t(j) * uint64_t(d) + uint64_t(i)));
      for (int pass = 0; pass < 2; ++pass)
        for (int k = 0; k < j; ++k) {
          const double* w = u.data() + size_t(k) * d;
          double dot = 0;
          for (int i = 0; i < d; ++i) dot += w[i] * v[i];
          for (int i = 0; i < d; ++i) v[i] -= dot * w[i];
        }
      double nrm = 0;
      for (int i = 0; i < d; ++i) nrm += v[i] * v[i];
      nrm = std::sqrt(nrm);
      for (int i = 0; i < d; ++i) v[i] /= nrm;
    }
    Buffer<T> out(size_t(d) * r);
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < r; ++j) out[size_t(i) * r + j] = T(u[size_t(j) * d + i]);
    return cache.emplace(d, std::move(out)).first->second;
  }

  // F [vocab, d], row-major, normal with std kEmbeddingStd.
  template <class T>
  static const Buffer<T>& fixed_embedding(int vocab, int d) {
    static std::mutex m;
    static std::map<std::pair<int, int>, Buffer<T>> cache;
    std::lock_guard<std::mutex> lock(m);
    auto it = cache.find({vocab, d});
    if (it != cache.end()) return it->second;
    Buffer<T> f(size_t(vocab) * size_t(d));
    const uint64_t stream = nn::name_stream("subspace.embedding");
    for (size_t i = 0; i < f.size(); ++i) f[i] = T(double(Philox::normal(kSeed, stream, i)) * kEmbeddingStd);
    return cache.emplace(std::make_pair(vocab, d), std::move(f)).first->second;
  }

  // The constrain hook (see ConstrainsModel in concepts.hpp). `seed` is unused on purpose:
  // U and F must not depend on it (see the top of this file).
  template <class T>
  static void constrain(ParamArena<T>& a, const Boundary& b, uint64_t /*seed*/) {
    detail::check_boundary("Subspace", b, r, true);
    const int64_t d = b.d_model;
    const T* U = basis<T>(b.d_model).data();
    std::vector<T> c;
    for (size_t p = 0; p < a.infos().size(); ++p) {
      const ParamInfo& info = a.info(p);
      auto W = a.param(p);
      if (ends_with(info.name, ".attn.wo.weight") || ends_with(info.name, ".mlp.w2.weight")) {
        RESBM_CHECK(info.rank == 2 && info.shape[0] == d,
                    cat("Subspace: '", info.name, "' has shape ", shape_str(info.shape, info.rank),
                        ", not [d_model = ", d, ", in]"),
                    "use the Subspace codec with the model whose d_model the Boundary names");
        const int64_t in = info.shape[1];
        c.assign(size_t(r * in), T(0));
        for (int64_t i = 0; i < d; ++i)  // c = Uᵀ W  [r, in]
          for (int64_t j = 0; j < r; ++j) {
            const T u = U[i * r + j];
            const T* w = W.data + i * in;
            T* cj = c.data() + j * in;
            for (int64_t k = 0; k < in; ++k) cj[k] += u * w[k];
          }
        for (int64_t i = 0; i < d; ++i) {  // W = U c
          T* w = W.data + i * in;
          std::fill(w, w + in, T(0));
          for (int64_t j = 0; j < r; ++j) {
            const T u = U[i * r + j];
            const T* cj = c.data() + j * in;
            for (int64_t k = 0; k < in; ++k) w[k] += u * cj[k];
          }
        }
      } else if (info.name == "tok_embeddings.weight" || ends_with(info.name, ".tok_embeddings.weight")) {
        RESBM_CHECK(info.rank == 2 && info.shape[0] == b.vocab && info.shape[1] == d,
                    cat("Subspace: '", info.name, "' has shape ", shape_str(info.shape, info.rank),
                        ", not [vocab = ", b.vocab, ", d_model = ", d, "]"),
                    "use the Subspace codec with the model whose sizes the Boundary names");
        const T* F = fixed_embedding<T>(b.vocab, b.d_model).data();
        c.assign(size_t(r), T(0));
        for (int64_t v = 0; v < b.vocab; ++v) {
          T* e = W.data + v * d;
          const T* f = F + v * d;
          std::fill(c.begin(), c.end(), T(0));
          for (int64_t i = 0; i < d; ++i)
            for (int64_t j = 0; j < r; ++j) c[size_t(j)] += (e[i] - f[i]) * U[i * r + j];
          for (int64_t i = 0; i < d; ++i) {
            T s = f[i];
            for (int64_t j = 0; j < r; ++j) s += U[i * r + j] * c[size_t(j)];
            e[i] = s;
          }
        }
      }
    }
  }

  template <class T>
  class Encoder {
   public:
    struct Activations {
      int64_t tokens = 0;
    };
    Encoder(const Boundary& b, ParamArena<T>&)
        : b_(checked(b)), U_(&basis<T>(b.d_model)), F_(&fixed_embedding<T>(b.vocab, b.d_model)) {}
    void init(uint64_t) {}
    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      return Activations{tokens};
    }
    size_t wire_bytes(int64_t tokens) const { return Wire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return Wire::bytes(tokens, r); }

    // c = Uᵀ (h − F[x]): the sender needs the token ids too (its own data loader's).
    void forward(const Context& ctx, Activations& s, Tensor<const T> h, std::span<const int32_t> tokens,
                 std::span<std::byte> wire) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(h, {N, d}, "boundary encoder input");
      detail::check_ids("Subspace encoder", tokens, N, b_.vocab);
      T* D = detail::grow(diff_, size_t(N * d));
      for (int64_t n = 0; n < N; ++n) {
        const T* f = F_->data() + int64_t(tokens[size_t(n)]) * d;
        for (int64_t i = 0; i < d; ++i) D[n * d + i] = h[n * d + i] - f[i];
      }
      T* c = detail::grow(code_, size_t(N * r));
      ops::gemm<T>(ctx, false, false, N, r, d, T(1), D, d, U_->data(), r, T(0), c, r);
      stage_.template send<Wire>(c, N, r, wire);
    }
    // dh += U dc
    void backward(const Context& ctx, Activations& s, std::span<const std::byte> grad_wire, Tensor<T> dh) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(dh, {N, d}, "boundary encoder input gradient");
      T* dc = detail::grow(code_, size_t(N * r));
      stage_.template receive<Wire>(grad_wire, N, r, dc);
      ops::gemm<T>(ctx, false, true, N, d, r, T(1), dc, r, U_->data(), r, T(1), dh.data, d);
    }

   private:
    static const Boundary& checked(const Boundary& b) {
      detail::check_boundary("Subspace encoder", b, r, true);
      return b;
    }
    Boundary b_;
    const Buffer<T>* U_;
    const Buffer<T>* F_;
    Buffer<T> diff_, code_;
    detail::WireStage<T> stage_;
  };

  template <class T>
  class Decoder {
   public:
    struct Activations {
      int64_t tokens = 0;
    };
    Decoder(const Boundary& b, ParamArena<T>&)
        : b_(checked(b)), U_(&basis<T>(b.d_model)), F_(&fixed_embedding<T>(b.vocab, b.d_model)) {}
    void init(uint64_t) {}
    Activations make_activations(int64_t tokens) const {
      detail::check_tokens_arg(tokens);
      return Activations{tokens};
    }
    size_t wire_bytes(int64_t tokens) const { return Wire::bytes(tokens, r); }
    size_t grad_bytes(int64_t tokens) const { return Wire::bytes(tokens, r); }

    // h' = U c + F[x]
    void forward(const Context& ctx, Activations& s, std::span<const std::byte> wire, std::span<const int32_t> tokens,
                 Tensor<T> h_out) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(h_out, {N, d}, "boundary decoder output");
      detail::check_ids("Subspace decoder", tokens, N, b_.vocab);
      T* c = detail::grow(code_, size_t(N * r));
      stage_.template receive<Wire>(wire, N, r, c);
      ops::gemm<T>(ctx, false, true, N, d, r, T(1), c, r, U_->data(), r, T(0), h_out.data, d);
      for (int64_t n = 0; n < N; ++n) {
        const T* f = F_->data() + int64_t(tokens[size_t(n)]) * d;
        for (int64_t i = 0; i < d; ++i) h_out[n * d + i] += f[i];
      }
    }
    // dc = Uᵀ dh'
    void backward(const Context& ctx, Activations& s, Tensor<const T> dh_out, std::span<std::byte> grad_wire) {
      const int64_t N = s.tokens, d = b_.d_model;
      expect_shape(dh_out, {N, d}, "boundary decoder output gradient");
      T* dc = detail::grow(code_, size_t(N * r));
      ops::gemm<T>(ctx, false, false, N, r, d, T(1), dh_out.data, d, U_->data(), r, T(0), dc, r);
      stage_.template send<Wire>(dc, N, r, grad_wire);
    }

   private:
    static const Boundary& checked(const Boundary& b) {
      detail::check_boundary("Subspace decoder", b, r, true);
      return b;
    }
    Boundary b_;
    const Buffer<T>* U_;
    const Buffer<T>* F_;
    Buffer<T> code_;
    detail::WireStage<T> stage_;
  };

 private:
  static bool ends_with(const std::string& s, const char* suffix) {
    const std::string_view x(suffix);
    return s.size() >= x.size() && std::string_view(s).substr(s.size() - x.size()) == x;
  }
};

}  // namespace resbm::codec
