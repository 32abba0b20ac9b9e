#pragma once
// Pre-tokenized data on disk, so training does not re-tokenize the corpus on every start:
//
//   "RESBMTOK" (8 bytes) | uint32 version = 1 | uint32 vocab_size | uint64 count |
//   count x uint16 token, all little-endian.
//
// uint16 halves the size of int32 and covers every vocabulary up to 65536. The header
// carries vocab_size so a shard tokenized for one vocabulary is never fed to a model
// built for a smaller one.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "resbm/core/error.hpp"
#include "resbm/io/file.hpp"

namespace resbm::data {

inline constexpr char kShardMagic[8] = {'R', 'E', 'S', 'B', 'M', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint64_t kShardHeaderBytes = 24;

struct TokenShard {
  std::vector<uint16_t> tokens;
  int vocab_size = 0;

  // The ids widened to what BatchSampler and the embedding take.
  std::vector<int32_t> as_int32() const { return std::vector<int32_t>(tokens.begin(), tokens.end()); }
};

inline void write_shard(const std::string& path, std::span<const int32_t> tokens, int vocab_size) {
  RESBM_CHECK(vocab_size >= 1 && vocab_size <= 65536,
              cat("shard vocab_size ", vocab_size, " is outside 1..65536"),
              "uint16 shards hold vocabularies of at most 65536 tokens");
  std::vector<uint16_t> body(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t t = tokens[i];
    RESBM_CHECK(t >= 0 && t < vocab_size,
                cat("token ", t, " at index ", i, " is outside the vocabulary [0, ", vocab_size,
                    ")", t >= 65536 ? " and does not fit in uint16" : ""),
                "tokenize with a tokenizer whose vocab_size matches the one passed here");
    body[i] = static_cast<uint16_t>(t);
  }
  unsigned char header[kShardHeaderBytes];
  std::memcpy(header, kShardMagic, 8);
  uint32_t version = kShardVersion, vocab = uint32_t(vocab_size);
  uint64_t count = tokens.size();
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &vocab, 4);
  std::memcpy(header + 16, &count, 8);

  io::AtomicFile f(path, "token shard");
  f.write(header, sizeof header);
  if (!body.empty()) f.write(body.data(), body.size() * sizeof(uint16_t));
  f.commit();
}

inline TokenShard read_shard(const std::string& path) {
  io::InputFile f(path, "token shard");
  const std::string regen = "regenerate the shard from the corpus";
  RESBM_CHECK(f.size() >= kShardHeaderBytes,
              cat("token shard '", path, "' is truncated: ", f.size(), " bytes, shorter than the ",
                  kShardHeaderBytes, "-byte header"),
              regen);
  unsigned char header[kShardHeaderBytes];
  f.read_at(0, header, sizeof header);
  if (std::memcmp(header, kShardMagic, 8) != 0) {
    std::string found;
    for (int i = 0; i < 8; ++i) {
      char buf[8];
      unsigned char c = header[i];
      if (c >= 0x20 && c < 0x7f && c != '\\')
        std::snprintf(buf, sizeof buf, "%c", c);
      else
        std::snprintf(buf, sizeof buf, "\\x%02X", c);
      found += buf;
    }
    fail(cat("token shard '", path, "' has bad magic \"", found, "\", expected \"RESBMTOK\""),
         "this is not a resbm token shard; pass a file written by write_shard");
  }
  uint32_t version = 0, vocab = 0;
  uint64_t count = 0;
  std::memcpy(&version, header + 8, 4);
  std::memcpy(&vocab, header + 12, 4);
  std::memcpy(&count, header + 16, 8);
  RESBM_CHECK(version == kShardVersion,
              cat("token shard '", path, "' has format version ", version, ", this build reads ",
                  kShardVersion),
              regen + " with this version of resbm");
  RESBM_CHECK(vocab >= 1 && vocab <= 65536,
              cat("token shard '", path, "' declares vocab_size ", vocab, ", outside 1..65536"),
              regen);
  const uint64_t body = f.size() - kShardHeaderBytes;
  RESBM_CHECK(body % 2 == 0,
              cat("token shard '", path, "' is truncated mid-token: its body is ", body,
                  " bytes, not a whole number of uint16 tokens"),
              regen);
  RESBM_CHECK(count <= body / 2,
              cat("token shard '", path, "' header declares ", count, " tokens but the file holds ",
                  body / 2, " (the file is truncated or the header count is wrong)"),
              regen);
  RESBM_CHECK(count == body / 2,
              cat("token shard '", path, "' header declares ", count, " tokens but the file holds ",
                  body / 2, ": the count does not match the file size (trailing data)"),
              regen);

  TokenShard shard;
  shard.vocab_size = int(vocab);
  shard.tokens.resize(size_t(count));
  if (count) f.read_at(kShardHeaderBytes, shard.tokens.data(), size_t(count) * 2);
  for (size_t i = 0; i < shard.tokens.size(); ++i)
    RESBM_CHECK(shard.tokens[i] < vocab,
                cat("token shard '", path, "' has token ", shard.tokens[i], " at index ", i,
                    ", outside its vocabulary [0, ", vocab, ")"),
                regen);
  return shard;
}

}  // namespace resbm::data
