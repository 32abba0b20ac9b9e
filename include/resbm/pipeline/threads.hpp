#pragma once
// S stages as threads of one process. When a stage fails it closes its links, so its
// neighbours stop at once (LinkClosed) instead of waiting for their timeout; the error
// reported is the first one that is not such a consequence.
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "resbm/transport/concepts.hpp"

namespace resbm::pipeline {

template <class Body, class OnError>
void run_stage_threads(int stages, Body&& body, OnError&& on_error) {
  std::mutex mu;
  std::exception_ptr root, consequence;
  std::vector<std::thread> threads;
  for (int s = 0; s < stages; ++s)
    threads.emplace_back([&, s] {
      try {
        body(s);
      } catch (const transport::LinkClosed&) {
        std::lock_guard lk(mu);
        if (!consequence) consequence = std::current_exception();
        on_error(s);
      } catch (...) {
        {
          std::lock_guard lk(mu);
          if (!root) root = std::current_exception();
        }
        on_error(s);
      }
    });
  for (auto& t : threads) t.join();
  if (root) std::rethrow_exception(root);
  if (consequence) std::rethrow_exception(consequence);
}

}  // namespace resbm::pipeline
