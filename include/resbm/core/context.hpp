#pragma once
// What every op needs besides its tensors: the thread count (CPU) — and, on the GPU, the
// stream, handles and workspace (see ops/cuda/context.cuh). `parallel_for` splits a range
// into fixed, contiguous chunks, so each output element is always computed by the same
// code in the same order: results do not depend on the thread count.
#include <cstdint>
#include <memory>
#include <thread>

#include <cblas.h>

#include "resbm/core/error.hpp"
#include "resbm/core/thread_pool.hpp"

namespace resbm {

struct Context {
  int threads = 1;
  // The workers of parallel_for (none for one thread). Copies of a Context share them; a
  // loop started while another runs on the same pool runs inline (thread_pool.hpp).
  std::shared_ptr<ThreadPool> pool;

  explicit Context(int n_threads = 0) { set_threads(n_threads); }

  // 0 = all hardware threads.
  void set_threads(int n) {
    RESBM_CHECK(n >= 0, cat("thread count ", n, " is negative"), "pass --threads 0 (all) or more");
    threads = n > 0 ? n : int(std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1);
    pool = threads > 1 ? std::make_shared<ThreadPool>(threads) : nullptr;
    openblas_set_num_threads(1);  // ops::gemm splits the work itself, deterministically
  }
};

// fn(i) for i in [0, n), in parallel over ctx.threads. fn must write disjoint outputs.
template <class Fn>
void parallel_for(const Context& ctx, int64_t n, Fn&& fn) {
  if (ctx.pool && n > 1)
    ctx.pool->run(n, fn);
  else
    for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace resbm
