#pragma once
// What every op needs besides its tensors: the thread count (CPU) — and, on the GPU, the
// stream, handles and workspace (see ops/cuda/context.cuh). `parallel_for` splits a range
// into fixed, contiguous chunks, so each output element is always computed by the same
// code in the same order: results do not depend on the thread count.
#include <cstdint>
#include <thread>

#include <cblas.h>

#include "resbm/core/error.hpp"

namespace resbm {

struct Context {
  int threads = 1;

  explicit Context(int n_threads = 0) { set_threads(n_threads); }

  // 0 = all hardware threads.
  void set_threads(int n) {
    RESBM_CHECK(n >= 0, cat("thread count ", n, " is negative"), "pass --threads 0 (all) or more");
    threads = n > 0 ? n : int(std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1);
    openblas_set_num_threads(1);  // ops::gemm splits the work itself, deterministically
  }
};

// fn(i) for i in [0, n), in parallel over ctx.threads. fn must write disjoint outputs.
template <class Fn>
void parallel_for(const Context& ctx, int64_t n, Fn&& fn) {
#pragma omp parallel for num_threads(ctx.threads) schedule(static) if (n > 1 && ctx.threads > 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace resbm
