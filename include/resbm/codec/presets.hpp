#pragma once
// Named codecs, and the one place where a runtime name picks a compile-time codec.
//
// Bytes per token per direction at d = 256 (dense bf16: 2·d = 512):
//   DenseBf16            512                     1x
//   Int8 (QuantOnly)     256 + 4 (scale)         ~1.97x
//   ResbmLinear<r>       fwd r + 4, bwd 2·r      (r = 8: 12 and 16)
//   Resbm<r>             fwd r + 4·r/16, bwd r + 4·r/64   (r = 2: 2.5 + 2.125 B/token, 221x)
//   SubspaceInt8<r>      r + 4·r/64 both ways
// Resbm uses grouped int8 in both directions: with a per-token scale the 4 scale bytes
// would dwarf r = 2 code bytes. Forward groups are 16 values (8 tokens at r = 2): with 64
// (32 tokens) one outlier token — the residual stream's first positions run large — sets
// the scale for 31 others, and at d = 128, r = 2 the run drifted 0.08 nats above an fp32
// wire by step 150 and its gradient norm grew; groups of 16 or 8 tracked fp32 (2.133 vs
// 2.136). The backward gradient tolerated groups of 64 (2.101).
#include <array>
#include <string>
#include <utility>

#include "resbm/codec/dense.hpp"
#include "resbm/codec/residual_bottleneck.hpp"
#include "resbm/codec/subspace.hpp"
#include "resbm/codec/wire/bf16.hpp"
#include "resbm/codec/wire/fp32.hpp"
#include "resbm/codec/wire/int8_grouped.hpp"
#include "resbm/codec/wire/int8_per_token.hpp"

namespace resbm::codec {

namespace presets {

using DenseBf16 = Dense<Bf16Wire>;
using DenseFp32 = Dense<Fp32Wire>;
using Int8 = QuantOnly<Int8PerToken>;
template <int R>
using ResbmLinear = ResidualBottleneck<rank<R>, Linear, Truncate, Int8PerToken, Bf16Wire, NoSideInfo>;
template <int R>
using Resbm = ResidualBottleneck<rank<R>, Mlp<256, silu>, Truncate, Int8Grouped<16>, Int8Grouped<64>, TokenReembed>;
template <int R>
using SubspaceInt8 = Subspace<rank<R>, Int8Grouped<64>>;

RESBM_ASSERT_BOUNDARY_CODEC(DenseBf16);
RESBM_ASSERT_BOUNDARY_CODEC(DenseFp32);
RESBM_ASSERT_BOUNDARY_CODEC(Int8);
RESBM_ASSERT_BOUNDARY_CODEC(ResbmLinear<8>);
RESBM_ASSERT_BOUNDARY_CODEC(Resbm<8>);
RESBM_ASSERT_BOUNDARY_CODEC(SubspaceInt8<8>);

}  // namespace presets

// The names with_codec() accepts, and the ranks of the rank-dependent ones. Ranks are a
// short fixed list because each one instantiates the caller's whole function (a trainer)
// once per codec: powers of two up to 64 cover every experiment in DESIGN §1.
inline constexpr std::array<const char*, 6> codec_names{"dense", "fp32", "int8", "resbm-linear", "resbm", "subspace"};
inline constexpr std::array<int, 7> codec_ranks{1, 2, 4, 8, 16, 32, 64};

namespace presets_detail {
template <class Fn, int R>
bool ranked(const std::string& name, int rank, Fn& fn) {
  if (rank != R) return false;
  if (name == "resbm-linear")
    fn.template operator()<presets::ResbmLinear<R>>();
  else if (name == "resbm")
    fn.template operator()<presets::Resbm<R>>();
  else
    fn.template operator()<presets::SubspaceInt8<R>>();
  return true;
}

template <class Fn, size_t... I>
bool dispatch_rank(const std::string& name, int rank, Fn& fn, std::index_sequence<I...>) {
  return (ranked<Fn, codec_ranks[I]>(name, rank, fn) || ...);
}

inline std::string list_names() {
  std::string s;
  for (const char* n : codec_names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}
inline std::string list_ranks() {
  std::string s;
  for (int r : codec_ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}
}  // namespace presets_detail

// Calls fn.template operator()<Codec>() for the codec called `name`:
//   dense -> DenseBf16, fp32 -> DenseFp32, int8 -> Int8 (these ignore `rank`),
//   resbm-linear -> ResbmLinear<rank>, resbm -> Resbm<rank>, subspace -> SubspaceInt8<rank>
// with rank in codec_ranks. Anything else is an Error listing what is valid.
template <class Fn>
void with_codec(const std::string& name, int rank, Fn&& fn) {
  if (name == "dense") return fn.template operator()<presets::DenseBf16>();
  if (name == "fp32") return fn.template operator()<presets::DenseFp32>();
  if (name == "int8") return fn.template operator()<presets::Int8>();
  RESBM_CHECK(name == "resbm-linear" || name == "resbm" || name == "subspace",
              cat("unknown codec '", name, "'"), cat("pick one of: ", presets_detail::list_names()));
  const bool found = presets_detail::dispatch_rank(name, rank, fn, std::make_index_sequence<codec_ranks.size()>{});
  RESBM_CHECK(found, cat("codec '", name, "' is not built for rank ", rank),
              cat("pick a rank in: ", presets_detail::list_ranks()));
}

}  // namespace resbm::codec
