#pragma once
// The CPU worker threads behind parallel_for. A training step runs ~150 short parallel
// loops; between two of them a worker should not sleep (waking one costs 50-200 µs on a
// VM: OpenMP's passive wait policy) nor busy-spin (libgomp's default: on a shared machine
// the spinning worker holds the core that the thread it waits for needs, and steps
// collapse 5-25x, docs/performance.md). So an idle worker polls for kSpin, yielding its
// core on every poll (free when the machine is idle, and other threads run when it is
// not), then sleeps on a futex (std::atomic::wait).
//
// Loop i always runs fn(i); worker t of T takes the contiguous block [n·t/T, n·(t+1)/T).
// parallel_for's callers write disjoint outputs per i, so results do not depend on T.
// A pool serves one loop at a time: a second caller (another thread sharing the Context,
// or fn itself calling parallel_for) runs its loop inline instead of waiting.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace resbm {

class ThreadPool {
 public:
  // How long an idle worker keeps polling before it sleeps: longer than the serial gaps
  // between the loops of a step (µs to tens of µs), short against a time slice. 10 µs to
  // 1 ms measured alike under load (docs/performance.md).
  static constexpr std::chrono::microseconds kSpin{200};

  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    workers_.reserve(size_t(threads_ - 1));
    for (int t = 1; t < threads_; ++t) workers_.emplace_back([this, t] { work(t); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    stop_.store(true, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
  }

  // fn(i) for i in [0, n) over the pool's threads (the caller is thread 0). An exception
  // from any fn(i) is rethrown here after every thread has finished its block.
  template <class Fn>
  void run(int64_t n, Fn& fn) {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1 || in_worker() || busy_.exchange(true, std::memory_order_acquire)) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    fn_ = &fn;
    invoke_ = [](void* f, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) (*static_cast<Fn*>(f))(i);
    };
    n_ = n;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    block(0);
    // Wait for the workers: poll briefly, then sleep until the last one notifies.
    int left = pending_.load(std::memory_order_acquire);
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (left != 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
      left = pending_.load(std::memory_order_acquire);
    }
    while (left != 0) {
      pending_.wait(left, std::memory_order_acquire);
      left = pending_.load(std::memory_order_acquire);
    }
    std::exception_ptr error = std::move(error_);
    error_ = nullptr;
    busy_.store(false, std::memory_order_release);
    if (error) std::rethrow_exception(error);
  }

 private:
  static bool& in_worker() {
    thread_local bool flag = false;
    return flag;
  }
  void block(int t) {
    const int64_t b = n_ * t / threads_, e = n_ * (t + 1) / threads_;
    if (b == e) return;
    try {
      invoke_(fn_, b, e);
    } catch (...) {
      std::lock_guard lk(error_mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void work(int t) {
    in_worker() = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      const auto until = std::chrono::steady_clock::now() + kSpin;
      while (g == seen && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
        g = generation_.load(std::memory_order_acquire);
      }
      while (g == seen) {
        generation_.wait(seen, std::memory_order_acquire);
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_.load(std::memory_order_relaxed)) return;
      block(t);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> busy_{false};
  std::atomic<bool> stop_{false};
  // The current loop; written by the caller before generation_ is released.
  void* fn_ = nullptr;
  void (*invoke_)(void*, int64_t, int64_t) = nullptr;
  int64_t n_ = 0;
  std::mutex error_mu_;
  std::exception_ptr error_;
};

}  // namespace resbm
