#pragma once
// Int8Grouped<G>: symmetric int8 with one scale per G consecutive values of the flattened
// [tokens, width] payload, so groups cross token boundaries. At a narrow bottleneck (width
// r = 2..8) a per-token fp32 scale would cost more than the codes; one per 64 values costs
// 1/16 byte per value. Layout: ceil(tokens·width / G) fp32 scales (absmax of the group /
// 127, little-endian), then tokens·width int8 codes; the last group may be short. Round to
// nearest, ties to even: |x − deq| <= absmax_group/254. A zero group decodes to zeros.
#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

template <int G>
struct Int8Grouped {
  static_assert(G > 0, "Int8Grouped<G>: the group size G must be at least 1");
  static constexpr const char* name = "int8-grouped";
  static constexpr int group = G;

  static size_t bytes(int64_t tokens, int64_t width) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    return wire_detail::int_group_bytes<8>(n, (n + G - 1) / G);
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::encode_int_groups<8>(name, x, n, G, (n + G - 1) / G, width, out);
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::decode_int_groups<8>(name, in, n, G, (n + G - 1) / G, width, y);
  }
};
RESBM_ASSERT_WIRE_POLICY(Int8Grouped<64>);

}  // namespace resbm::codec
