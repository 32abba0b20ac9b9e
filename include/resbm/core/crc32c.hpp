#pragma once
// CRC-32C (Castagnoli), the iSCSI/ext4 checksum: the SSE4.2 instruction computes it, and it
// detects all burst errors up to 32 bits. Software fallback: slicing-by-8 tables built at
// compile time. Frames and checkpoints both use it.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace resbm {

namespace detail {
inline constexpr uint32_t kCrc32cPoly = 0x82F63B78u;  // reflected 0x1EDC6F41

using Crc32cTables = std::array<std::array<uint32_t, 256>, 8>;
constexpr Crc32cTables make_crc32c_tables() {
  Crc32cTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1u) ? kCrc32cPoly : 0u);
    t[0][i] = c;
  }
  for (size_t s = 1; s < 8; ++s)
    for (size_t i = 0; i < 256; ++i) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
  return t;
}
inline constexpr Crc32cTables kCrc32cTables = make_crc32c_tables();

inline uint64_t load_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace detail

// Raw register update (no pre/post inversion), software. Public so that tests can hold
// the hardware path against it.
inline uint32_t crc32c_update_sw(uint32_t crc, const void* data, size_t n) {
  const auto& t = detail::kCrc32cTables;
  auto* p = static_cast<const unsigned char*>(data);
  while (n >= 8) {
    uint64_t v = detail::load_le64(p) ^ crc;
    crc = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
          t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^
          t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
  return crc;
}

#if defined(__SSE4_2__)
namespace detail {
inline uint32_t crc32c_update_hw_serial(uint32_t crc, const unsigned char* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = uint32_t(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// The crc32 instruction has a latency of 3 cycles and a throughput of 1: one dependency
// chain runs at a third of the unit's speed. Three chains over three adjacent blocks, then
// the first two shifted past the later blocks and folded in, run at full speed. Shifting a
// crc register past `kBlock` zero bytes is a linear map over GF(2), tabulated once.
inline constexpr size_t kCrcBlock = 4096;

struct Crc32cShift {
  uint32_t t[4][256];
  Crc32cShift() {
    // Column j of the map: the register 1<<j pushed through kBlock zero bytes.
    uint32_t col[32];
    static const unsigned char zeros[kCrcBlock] = {};
    for (int j = 0; j < 32; ++j) col[j] = crc32c_update_hw_serial(1u << j, zeros, kCrcBlock);
    for (int b = 0; b < 4; ++b)
      for (uint32_t v = 0; v < 256; ++v) {
        uint32_t r = 0;
        for (int k = 0; k < 8; ++k)
          if (v & (1u << k)) r ^= col[8 * b + k];
        t[b][v] = r;
      }
  }
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

inline uint32_t crc32c_update_hw(uint32_t crc, const void* data, size_t n) {
  auto* p = static_cast<const unsigned char*>(data);
  if (n >= 3 * kCrcBlock) {
    static const Crc32cShift shift;
    while (n >= 3 * kCrcBlock) {
      uint64_t a = crc, b = 0, c = 0;
      for (size_t i = 0; i < kCrcBlock; i += 8) {
        uint64_t va, vb, vc;
        std::memcpy(&va, p + i, 8);
        std::memcpy(&vb, p + kCrcBlock + i, 8);
        std::memcpy(&vc, p + 2 * kCrcBlock + i, 8);
        a = _mm_crc32_u64(a, va);
        b = _mm_crc32_u64(b, vb);
        c = _mm_crc32_u64(c, vc);
      }
      // Register linearity: crc(A||B) = shift(crc(A)) ^ crc_from_zero(B).
      crc = shift(shift(uint32_t(a)) ^ uint32_t(b)) ^ uint32_t(c);
      p += 3 * kCrcBlock;
      n -= 3 * kCrcBlock;
    }
  }
  return crc32c_update_hw_serial(crc, p, n);
}
}  // namespace detail
#endif

// Raw register update: chain calls to checksum data that arrives in pieces.
inline uint32_t crc32c_update(uint32_t crc, const void* data, size_t n) {
#if defined(__SSE4_2__)
  return detail::crc32c_update_hw(crc, data, n);
#else
  return crc32c_update_sw(crc, data, n);
#endif
}

// The standard CRC-32C of a byte string: crc32c("123456789") == 0xE3069283.
inline uint32_t crc32c(std::span<const std::byte> data) {
  return ~crc32c_update(~0u, data.data(), data.size());
}

// Incremental form of crc32c(): feed pieces with update(), read value().
class Crc32c {
 public:
  void update(const void* p, size_t n) { reg_ = crc32c_update(reg_, p, n); }
  uint32_t value() const { return ~reg_; }

 private:
  uint32_t reg_ = ~0u;
};


}  // namespace resbm
