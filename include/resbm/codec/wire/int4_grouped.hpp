#pragma once
// Int4Grouped<G>: symmetric 4-bit integers in [-7, 7] (-8 is never produced, so the range
// is symmetric like the int8 wires) with one scale per G consecutive values of the
// flattened [tokens, width] payload. Layout: ceil(tokens·width / G) fp32 scales (absmax of
// the group / 7, little-endian), then ceil(tokens·width / 2) bytes of codes: value 2i in the
// low nibble of byte i, 2i+1 in the high nibble, 4-bit two's complement; an odd count
// leaves the last high nibble 0. Round to nearest, ties to even: |x − deq| <= absmax_group/14.
#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

template <int G>
struct Int4Grouped {
  static_assert(G > 0, "Int4Grouped<G>: the group size G must be at least 1");
  static constexpr const char* name = "int4-grouped";
  static constexpr int group = G;

  static size_t bytes(int64_t tokens, int64_t width) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    return wire_detail::int_group_bytes<4>(n, (n + G - 1) / G);
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::encode_int_groups<4>(name, x, n, G, (n + G - 1) / G, width, out);
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::decode_int_groups<4>(name, in, n, G, (n + G - 1) / G, width, y);
  }
};
RESBM_ASSERT_WIRE_POLICY(Int4Grouped<64>);

}  // namespace resbm::codec
