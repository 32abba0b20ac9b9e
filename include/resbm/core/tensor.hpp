#pragma once
// Non-owning, contiguous, row-major views of up to 4 dimensions. Ops take views and check
// their shapes at the door, so a wrong shape is an Error naming the tensor, not a crash.
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "resbm/core/device.hpp"
#include "resbm/core/error.hpp"

namespace resbm {

using Shape = std::array<int64_t, 4>;

inline std::string shape_str(const Shape& s, int rank) {
  std::string out = "[";
  for (int i = 0; i < rank; ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

template <class T, class D = cpu>
struct Tensor {
  using value_type = T;
  using device = D;

  T* data = nullptr;
  Shape shape{0, 0, 0, 0};
  int rank = 0;

  Tensor() = default;
  Tensor(T* p, std::initializer_list<int64_t> dims) : data(p) {
    RESBM_CHECK(dims.size() >= 1 && dims.size() <= 4, "a Tensor has 1 to 4 dimensions",
                "reshape the data to at most 4 dimensions");
    for (int64_t d : dims) {
      RESBM_CHECK(d >= 0, cat("negative dimension ", d), "pass sizes >= 0");
      shape[rank++] = d;
    }
  }
  // A view of T is usable where a view of const T is expected.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  Tensor(const Tensor<U, D>& o) : data(o.data), shape(o.shape), rank(o.rank) {}

  int64_t size(int i) const { return shape[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return rank ? n : 0;
  }
  T& operator[](int64_t i) const { return data[i]; }
  T* begin() const { return data; }
  T* end() const { return data + numel(); }
  // The same memory seen with other dimensions of the same element count.
  Tensor reshape(std::initializer_list<int64_t> dims) const {
    Tensor t(data, dims);
    RESBM_CHECK(t.numel() == numel(),
                cat("cannot reshape ", shape_str(shape, rank), " to ", shape_str(t.shape, t.rank)),
                "keep the element count");
    return t;
  }
  // Rows [begin, end) of the first dimension.
  Tensor slice(int64_t begin, int64_t end) const {
    RESBM_CHECK(rank >= 1 && 0 <= begin && begin <= end && end <= shape[0],
                cat("slice [", begin, ", ", end, ") out of ", shape_str(shape, rank)),
                "slice within the first dimension");
    int64_t row = rank ? numel() / (shape[0] ? shape[0] : 1) : 0;
    Tensor t = *this;
    t.data = data + begin * row;
    t.shape[0] = end - begin;
    return t;
  }
};

// Throws an Error naming `what` unless `t` has exactly the given dimensions.
template <class T, class D>
void expect_shape(const Tensor<T, D>& t, std::initializer_list<int64_t> dims, const char* what) {
  bool ok = t.rank == int(dims.size());
  int i = 0;
  for (int64_t d : dims) ok = ok && t.shape[i++] == d;
  Shape want{0, 0, 0, 0};
  i = 0;
  for (int64_t d : dims) want[i++] = d;
  RESBM_CHECK(ok,
              cat(what, " has shape ", shape_str(t.shape, t.rank), " but ",
                  shape_str(want, int(dims.size())), " was expected"),
              "pass a tensor of the expected shape");
  RESBM_CHECK(t.data != nullptr || t.numel() == 0, cat(what, " has no data"),
              "allocate the tensor before passing it");
}

}  // namespace resbm
