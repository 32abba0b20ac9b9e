#pragma once
// CRC-32C (Castagnoli), the iSCSI/ext4 checksum: the SSE4.2 instruction computes it, and it
// detects all burst errors up to 32 bits. Frames and checkpoints both use it. Three paths,
// chosen at compile time (-march=native picks the best this machine has):
//   SSE4.2 + AVX2 + VPCLMULQDQ  the crc32 instruction on three streams *and* carry-less
//                               multiply folding on a fourth, in one loop (~35 GB/s on the
//                               2-core AMD EPYC development machine, against ~20 for either
//                               alone: they run on different execution units)
//   SSE4.2                      the crc32 instruction on three interleaved streams (~20 GB/s)
//   otherwise                   slicing-by-8 tables built at compile time
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif
#if defined(__SSE4_2__) && defined(__PCLMUL__) && defined(__AVX2__) && defined(__VPCLMULQDQ__)
#include <immintrin.h>
#define RESBM_CRC32C_FUSED 1
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

#if defined(RESBM_CRC32C_FUSED)
// x^e mod P in the reflected register encoding (bit j holds the coefficient of x^(31-j)):
// multiplying by x is a right shift with the polynomial folded back in.
constexpr uint32_t crc32c_xpow(uint64_t e) {
  uint32_t v = 0x80000000u;
  for (uint64_t i = 0; i < e; ++i) v = (v >> 1) ^ ((v & 1u) ? kCrc32cPoly : 0u);
  return v;
}

// The register `c` pushed through D zero bits (D = 8 * bytes): c * x^D mod P. The 64-bit
// carry-less product c * k, k = x^(D-33) mod P, is reduced by the crc32 instruction, which
// itself multiplies by x^32 (and the reflected product carries one more x).
inline uint32_t crc32c_shift(uint32_t c, uint32_t k) {
  __m128i p = _mm_clmulepi64_si128(_mm_cvtsi32_si128(int(c)), _mm_cvtsi32_si128(int(k)), 0x00);
  return uint32_t(_mm_crc32_u64(0, uint64_t(_mm_cvtsi128_si64(p))));
}

// Folding: a 128-bit block A followed by L bytes is congruent, mod P, to A * x^(8*16*d) laid
// over the block 16*d bytes later. With A = H * x^64 + L0 (H: the first 8 bytes), the two
// 64x32-bit carry-less products H * x^(D+31) and L0 * x^(D-33) (mod P, 32-bit constants)
// give that, in the register encoding, for D = 128 * d bits.
inline __m128i crc32c_fold(__m128i a, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}
template <uint64_t Bits>
inline __m128i crc32c_fold_constant() {
  static constexpr uint32_t lo = crc32c_xpow(Bits + 31), hi = crc32c_xpow(Bits - 33);
  return _mm_set_epi64x(int64_t(hi), int64_t(lo));
}

// One superblock of kFusedBlock bytes: three streams of kFusedStream bytes through the crc32
// instruction (3 x 16 bytes an iteration) and, in the same loop, the 4 * kFusedStream + 64
// bytes after them folded 64 bytes an iteration by two 256-bit carry-less accumulators.
// The four partial registers are then shifted into place and xored.
inline constexpr size_t kFusedStream = 1024;
inline constexpr size_t kFusedVector = 4 * kFusedStream + 64;
inline constexpr size_t kFusedBlock = 3 * kFusedStream + kFusedVector;

inline uint32_t crc32c_update_fused(uint32_t crc, const unsigned char* p, size_t n) {
  constexpr size_t S = kFusedStream, W = kFusedVector;
  static constexpr uint32_t s0 = crc32c_xpow(8 * (2 * S + W) - 33), s1 = crc32c_xpow(8 * (S + W) - 33),
                            s2 = crc32c_xpow(8 * W - 33);
  const __m256i k512 = _mm256_broadcastsi128_si256(crc32c_fold_constant<512>());
  const __m128i k384 = crc32c_fold_constant<384>(), k256 = crc32c_fold_constant<256>(),
                k128 = crc32c_fold_constant<128>();
  auto fold256 = [&](__m256i a, const unsigned char* next) {
    __m256i f = _mm256_xor_si256(_mm256_clmulepi64_epi128(a, k512, 0x00), _mm256_clmulepi64_epi128(a, k512, 0x11));
    return _mm256_xor_si256(f, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(next)));
  };
  auto crc8 = [](uint64_t c, const unsigned char* q) {
    uint64_t v;
    std::memcpy(&v, q, 8);
    return _mm_crc32_u64(c, v);
  };
  while (n >= kFusedBlock) {
    const unsigned char* v = p + 3 * S;
    uint64_t a = crc, b = 0, c = 0;
    __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v));
    __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 32));
    v += 64;
    for (size_t i = 0; i < S; i += 16, v += 64) {
      a = crc8(a, p + i);
      b = crc8(b, p + S + i);
      c = crc8(c, p + 2 * S + i);
      a = crc8(a, p + i + 8);
      b = crc8(b, p + S + i + 8);
      c = crc8(c, p + 2 * S + i + 8);
      v0 = fold256(v0, v);
      v1 = fold256(v1, v + 32);
    }
    // The four 128-bit lanes in stream order are v0.lo, v0.hi, v1.lo, v1.hi.
    __m128i acc = _mm256_extracti128_si256(v1, 1);
    acc = _mm_xor_si128(acc, crc32c_fold(_mm256_castsi256_si128(v0), k384));
    acc = _mm_xor_si128(acc, crc32c_fold(_mm256_extracti128_si256(v0, 1), k256));
    acc = _mm_xor_si128(acc, crc32c_fold(_mm256_castsi256_si128(v1), k128));
    uint64_t cv = _mm_crc32_u64(0, uint64_t(_mm_cvtsi128_si64(acc)));
    cv = _mm_crc32_u64(cv, uint64_t(_mm_extract_epi64(acc, 1)));
    crc = crc32c_shift(uint32_t(a), s0) ^ crc32c_shift(uint32_t(b), s1) ^ crc32c_shift(uint32_t(c), s2) ^
          uint32_t(cv);
    p += kFusedBlock;
    n -= kFusedBlock;
  }
  // What is left (a short frame, or a piece of one as a socket read returned it): three
  // streams of T bytes while they last, the rest on one.
  constexpr size_t T = 256;
  static constexpr uint32_t t0 = crc32c_xpow(8 * 2 * T - 33), t1 = crc32c_xpow(8 * T - 33);
  while (n >= 3 * T) {
    uint64_t a = crc, b = 0, c = 0;
    for (size_t i = 0; i < T; i += 8) {
      a = crc8(a, p + i);
      b = crc8(b, p + T + i);
      c = crc8(c, p + 2 * T + i);
    }
    crc = crc32c_shift(uint32_t(a), t0) ^ crc32c_shift(uint32_t(b), t1) ^ uint32_t(c);
    p += 3 * T;
    n -= 3 * T;
  }
  return crc32c_update_hw_serial(crc, p, n);
}
#endif
}  // namespace detail
#endif

// Raw register update: chain calls to checksum data that arrives in pieces.
inline uint32_t crc32c_update(uint32_t crc, const void* data, size_t n) {
#if defined(RESBM_CRC32C_FUSED)
  return detail::crc32c_update_fused(crc, static_cast<const unsigned char*>(data), n);
#elif defined(__SSE4_2__)
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
