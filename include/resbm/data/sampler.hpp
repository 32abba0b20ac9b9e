#pragma once
// Batches of (input, target) windows for next-token prediction.
//
// Training batches are a pure function of (seed, step): offsets come from the
// counter-based Philox generator, not from a stateful RNG. Every pipeline stage that needs
// the batch (the first for inputs, the last for targets) computes the same one on its own,
// and a run resumed from a checkpoint at step s sees exactly the batches it would have
// seen, with no generator state to save.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>

#include "resbm/core/error.hpp"
#include "resbm/core/rng.hpp"

namespace resbm::data {

struct Split {
  std::span<const int32_t> train, val;
};

// The first train_fraction of the tokens for training, the rest for validation. Contiguous
// rather than interleaved so no validation window overlaps a training window (except at the
// one boundary).
inline Split split_train_val(std::span<const int32_t> tokens, double train_fraction = 0.9) {
  RESBM_CHECK(std::isfinite(train_fraction) && train_fraction > 0 && train_fraction < 1,
              cat("train_fraction ", train_fraction, " is not strictly between 0 and 1"),
              "pass e.g. 0.9 for a 90/10 split");
  auto n_train = size_t(std::floor(double(tokens.size()) * train_fraction));
  return Split{tokens.first(n_train), tokens.subspan(n_train)};
}

class BatchSampler {
 public:
  // Philox stream for batch offsets: far above the small parameter ids that weight
  // initialisation uses as streams, so the same seed never correlates the two.
  static constexpr uint64_t kStream = 0x5265'7362'6D53'616DULL;  // "ResbmSam"

  BatchSampler(std::span<const int32_t> tokens, int64_t batch, int64_t seq_len, uint64_t seed)
      : tokens_(tokens), batch_(batch), seq_len_(seq_len), seed_(seed) {
    RESBM_CHECK(batch >= 1, cat("batch size ", batch, " is below 1"), "pass a batch size >= 1");
    RESBM_CHECK(seq_len >= 1, cat("sequence length ", seq_len, " is below 1"),
                "pass a sequence length >= 1");
    RESBM_CHECK(seq_len < std::numeric_limits<int64_t>::max() / std::max<int64_t>(batch, 1),
                cat("batch ", batch, " x seq_len ", seq_len, " overflows"), "use smaller sizes");
    RESBM_CHECK(int64_t(tokens.size()) >= seq_len + 1,
                cat("data has ", tokens.size(), " tokens but a window of seq_len ", seq_len,
                    " needs at least ", seq_len + 1, " (inputs plus the shifted target)"),
                "use more data, a smaller seq_len, or a larger share for this split");
  }

  int64_t batch_size() const { return batch_; }
  int64_t seq_len() const { return seq_len_; }
  int64_t size() const { return int64_t(tokens_.size()); }

  // Start of row b of training step `step`: uniform over all len - seq_len valid starts.
  int64_t offset(int64_t step, int64_t b) const {
    RESBM_CHECK(step >= 0 && step <= (std::numeric_limits<int64_t>::max() - batch_) / batch_,
                cat("training step ", step, " is negative or too large"),
                "pass the step number counted from 0");
    RESBM_CHECK(b >= 0 && b < batch_, cat("row ", b, " is outside the batch of ", batch_),
                "pass a row in [0, batch)");
    uint64_t r = Philox::bits64(seed_, kStream, uint64_t(step * batch_ + b));
    return int64_t(r % uint64_t(starts()));
  }

  // Fills batch*seq_len inputs and the same number of targets (inputs shifted by one).
  void batch(int64_t step, int32_t* inputs, int32_t* targets) const {
    check_out(inputs, targets);
    for (int64_t b = 0; b < batch_; ++b) copy_window(offset(step, b), b, inputs, targets);
  }

  // How many batches of consecutive, non-overlapping windows cover the split (at least 1;
  // the last one wraps to the start if the windows do not fill it).
  int64_t eval_batches() const {
    int64_t windows = (size() - 1) / seq_len_;
    return std::max<int64_t>(1, (windows + batch_ - 1) / batch_);
  }

  // Batch i of the fixed evaluation pass: window w = i*batch + b starts at w*seq_len, taken
  // modulo the number of valid starts so any i stays inside the data.
  void eval_batch(int64_t i, int32_t* inputs, int32_t* targets) const {
    check_out(inputs, targets);
    RESBM_CHECK(i >= 0 && i <= std::numeric_limits<int64_t>::max() / batch_ / seq_len_ - 1,
                cat("evaluation batch ", i, " is negative or too large"),
                "pass an index in [0, eval_batches())");
    for (int64_t b = 0; b < batch_; ++b) {
      int64_t w = i * batch_ + b;
      copy_window(int64_t(uint64_t(w * seq_len_) % uint64_t(starts())), b, inputs, targets);
    }
  }

 private:
  int64_t starts() const { return size() - seq_len_; }

  void check_out(const int32_t* inputs, const int32_t* targets) const {
    RESBM_CHECK(inputs != nullptr && targets != nullptr, "batch output pointer is null",
                "pass buffers of batch*seq_len int32 each");
  }

  void copy_window(int64_t off, int64_t b, int32_t* inputs, int32_t* targets) const {
    const int32_t* src = tokens_.data() + off;
    std::memcpy(inputs + b * seq_len_, src, size_t(seq_len_) * sizeof(int32_t));
    std::memcpy(targets + b * seq_len_, src + 1, size_t(seq_len_) * sizeof(int32_t));
  }

  std::span<const int32_t> tokens_;
  int64_t batch_, seq_len_;
  uint64_t seed_;
};

}  // namespace resbm::data
