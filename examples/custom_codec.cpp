// A user-defined wire policy, plugged into the ResidualBottleneck by one type alias.
//
// Int6PerToken: symmetric 6-bit integers in [-31, 31] with one fp32 scale per token —
// between int8 (too many bits at a wide bottleneck) and int4 (too coarse for a per-token
// scale). Layout: `tokens` fp32 scales (absmax/31, little-endian), then the codes as one
// little-endian bit stream: value i occupies bits [6i, 6i+6), 6-bit two's complement, the
// last byte zero-padded. Everything a wire policy needs is the four static members that
// resbm::codec::WirePolicy lists; the static_asserts below check it at compile time.
//
// Runs one micro-batch of random residuals through encoder -> wire -> decoder, then the
// gradient back, and prints the bytes per token and the round-trip error.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "resbm/codec/codec.hpp"
#include "resbm/core/rng.hpp"

namespace codec = resbm::codec;

struct Int6PerToken {
  static constexpr const char* name = "int6-per-token";

  static size_t bytes(int64_t tokens, int64_t width) {
    RESBM_CHECK(tokens >= 0 && width >= 0, "int6: negative payload shape", "pass sizes >= 0");
    return size_t(tokens) * 4 + (size_t(tokens * width) * 6 + 7) / 8;
  }

  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    std::byte* codes = out + 4 * tokens;
    std::fill(codes, codes + (bytes(tokens, width) - size_t(tokens) * 4), std::byte{0});
    for (int64_t t = 0; t < tokens; ++t) {
      float m = 0;
      for (int64_t c = 0; c < width; ++c) {
        const float v = x[t * width + c];
        RESBM_CHECK(std::isfinite(v), resbm::cat(name, ": non-finite value at token ", t), "check the model");
        m = std::max(m, std::fabs(v));
      }
      const float scale = m / 31.0f;
      const uint32_t s = resbm::float_bits(scale);
      for (int k = 0; k < 4; ++k) out[4 * t + k] = std::byte((s >> (8 * k)) & 0xffu);
      for (int64_t c = 0; c < width; ++c) {
        const int64_t i = t * width + c;
        const double q = scale > 0 ? std::clamp(std::nearbyint(double(x[i]) / scale), -31.0, 31.0) : 0.0;
        const uint32_t bits = uint32_t(int(q)) & 0x3fu;
        for (int b = 0; b < 6; ++b)
          if (bits >> b & 1u) codes[(6 * i + b) / 8] |= std::byte(uint8_t(1u << ((6 * i + b) % 8)));
      }
    }
  }

  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const std::byte* codes = in + 4 * tokens;
    for (int64_t t = 0; t < tokens; ++t) {
      uint32_t s = 0;
      for (int k = 0; k < 4; ++k) s |= uint32_t(in[4 * t + k]) << (8 * k);
      const float scale = resbm::bits_float(s);
      RESBM_CHECK(std::isfinite(scale), resbm::cat(name, ": corrupt scale at token ", t), "check both stages' codec");
      for (int64_t c = 0; c < width; ++c) {
        const int64_t i = t * width + c;
        uint32_t bits = 0;
        for (int b = 0; b < 6; ++b) bits |= (uint32_t(codes[(6 * i + b) / 8]) >> ((6 * i + b) % 8) & 1u) << b;
        const int v = bits >= 32 ? int(bits) - 64 : int(bits);
        y[i] = float(v) * scale;
      }
    }
  }
};
RESBM_ASSERT_WIRE_POLICY(Int6PerToken);

// The one line that makes it a codec: rank 16, MLP encoder/decoder, int6 forward, bf16
// gradients, token re-embedding on the receiver.
using MyCodec = codec::ResidualBottleneck<resbm::rank<16>, codec::Mlp<64, resbm::silu>, codec::Truncate, Int6PerToken,
                                          codec::Bf16Wire, codec::TokenReembed>;
RESBM_ASSERT_BOUNDARY_CODEC(MyCodec);

int main() {
  const codec::Boundary b{0, 128, 65};
  const int64_t N = 256, d = b.d_model, r = MyCodec::r;
  resbm::Context ctx(1);

  // Each half in its own arena, as on two pipeline stages.
  resbm::ParamArena<float> sender, receiver;
  MyCodec::Encoder<float> enc(b, sender);
  MyCodec::Decoder<float> dec(b, receiver);
  sender.allocate();
  receiver.allocate();
  enc.init(1);
  dec.init(1);

  std::vector<float> h(size_t(N * d)), dh_out(size_t(N * d)), dh(size_t(N * d), 0.0f), out(size_t(N * d));
  std::vector<int32_t> tokens(static_cast<size_t>(N));
  for (size_t i = 0; i < h.size(); ++i) h[i] = resbm::Philox::normal(7, 1, i);
  for (size_t i = 0; i < dh_out.size(); ++i) dh_out[i] = 1e-3f * resbm::Philox::normal(7, 2, i);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t(resbm::Philox::bits64(7, 3, i) % uint64_t(b.vocab));

  auto es = enc.make_activations(N);
  auto ds = dec.make_activations(N);
  std::vector<std::byte> wire(enc.wire_bytes(N)), grad(dec.grad_bytes(N));
  enc.forward(ctx, es, resbm::Tensor<const float>(h.data(), {N, d}), tokens, wire);
  dec.forward(ctx, ds, wire, tokens, resbm::Tensor<float>(out.data(), {N, d}));
  dec.backward(ctx, ds, resbm::Tensor<const float>(dh_out.data(), {N, d}), grad);
  enc.backward(ctx, es, grad, resbm::Tensor<float>(dh.data(), {N, d}));

  // At init the boundary is truncate-then-pad: out[:, :r] is the rounded h[:, :r], the rest 0.
  double err = 0, rel = 0, rest = 0, grad_norm = 0;
  for (int64_t n = 0; n < N; ++n) {
    float m = 0;
    for (int64_t j = 0; j < r; ++j) m = std::max(m, std::fabs(h[size_t(n * d + j)]));
    for (int64_t j = 0; j < r; ++j) {
      const double e = std::fabs(double(out[size_t(n * d + j)]) - double(h[size_t(n * d + j)]));
      err = std::max(err, e);
      rel = std::max(rel, e / double(m));
    }
    for (int64_t c = r; c < d; ++c) rest = std::max(rest, double(std::fabs(out[size_t(n * d + c)])));
  }
  for (float g : dh) grad_norm += double(g) * double(g);

  const double fwd = double(enc.wire_bytes(N)) / double(N), bwd = double(enc.grad_bytes(N)) / double(N);
  std::printf("codec: rank %d, d_model %lld, forward wire %s, backward wire %s\n", MyCodec::r, (long long)d,
              Int6PerToken::name, codec::Bf16Wire::name);
  std::printf("bytes/token: forward %.2f, backward %.2f (dense bf16: %lld each way) -> %.1fx fewer\n", fwd, bwd,
              (long long)(2 * d), double(4 * d) / (fwd + bwd));
  std::printf("round trip at init: max |h' - h| over the first r = %.3g (%.4f of the token's absmax; int6 bound 1/62 = %.4f)\n",
              err, rel, 1.0 / 62);
  std::printf("round trip at init: max |h'| beyond r = %.3g (decoder and re-embedding start at zero)\n", rest);
  std::printf("backward: |dL/dh| = %.4g from %zu gradient bytes\n", std::sqrt(grad_norm), grad.size());
  return rel <= 1.0 / 62 + 1e-6 && rest == 0.0 ? 0 : 1;
}
