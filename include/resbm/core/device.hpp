#pragma once
// Devices are tags: ops overload on them, layers are written once over ops.
#include <type_traits>

#if defined(__CUDACC__)
#define RESBM_HD __host__ __device__
#else
#define RESBM_HD
#endif

namespace resbm {

struct cpu {
  static constexpr const char* name = "cpu";
};
struct cuda {
  static constexpr const char* name = "cuda";
};

template <class D>
concept Device = std::is_same_v<D, cpu> || std::is_same_v<D, cuda>;

}  // namespace resbm
