#pragma once
// Int8PerToken: symmetric int8 with one scale per token. Layout: `tokens` fp32 scales
// (absmax of the token's row / 127, little-endian), then tokens·width int8 codes, row-major;
// 4 + width bytes per token. Round to nearest, ties to even: |x − deq| <= absmax/254.
// A zero row has scale 0 and decodes to exact zeros.
#include "resbm/codec/wire/common.hpp"

namespace resbm::codec {

struct Int8PerToken {
  static constexpr const char* name = "int8-per-token";

  static size_t bytes(int64_t tokens, int64_t width) {
    return wire_detail::int_group_bytes<8>(wire_detail::checked_count(name, tokens, width), tokens);
  }
  static void encode(const float* x, int64_t tokens, int64_t width, std::byte* out) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::encode_int_groups<8>(name, x, n, width, tokens, width, out);
  }
  static void decode(const std::byte* in, int64_t tokens, int64_t width, float* y) {
    const int64_t n = wire_detail::checked_count(name, tokens, width);
    wire_detail::decode_int_groups<8>(name, in, n, width, tokens, width, y);
  }
};
RESBM_ASSERT_WIRE_POLICY(Int8PerToken);

}  // namespace resbm::codec
