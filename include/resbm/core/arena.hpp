#pragma once
// All parameters of a model (or of one pipeline stage) in one contiguous buffer, and their
// gradients in another of the same layout: optimizers, clipping, checkpoints and the wire
// see one flat array plus a table of named, shaped entries.
//
// Two phases: `add` declares entries (name, dims, kind), `allocate` lays them out. Entries
// are aligned to 16 elements so vectorised loops never straddle two parameters.
#include <cstddef>
#include <initializer_list>
#include <string>
#include <vector>

#include "resbm/core/buffer.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm {

// How the optimizer treats a parameter: Muon orthogonalises `matrix` entries (2-D weights
// inside the network); AdamW takes the rest. Weight decay applies to matrix, embedding and
// head, not to gains.
enum class ParamKind { matrix, embedding, head, gain };

inline const char* kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::matrix: return "matrix";
    case ParamKind::embedding: return "embedding";
    case ParamKind::head: return "head";
    case ParamKind::gain: return "gain";
  }
  return "?";
}

struct ParamInfo {
  std::string name;  // e.g. "blocks.3.attn.wq.weight"
  Shape shape{0, 0, 0, 0};
  int rank = 0;
  size_t offset = 0;  // in elements from the start of the arena
  size_t numel = 0;
  ParamKind kind = ParamKind::matrix;
};

// Entry `p` of a flat array laid out as a ParamArena says: host arrays (the arena's own)
// or device ones (the GPU model's and codec halves' copies of a layout), D the device tag.
template <class D = cpu, class P>
Tensor<P, D> entry_view(P* base, const ParamInfo& p) {
  Tensor<P, D> t;
  t.data = base + p.offset;
  t.shape = p.shape;
  t.rank = p.rank;
  return t;
}

template <class T>
class ParamArena {
 public:
  // Declares an entry; returns its index. Only before allocate().
  size_t add(std::string name, std::initializer_list<int64_t> dims, ParamKind kind) {
    RESBM_CHECK(!allocated_, cat("parameter '", name, "' declared after allocate()"),
                "declare every parameter before allocating the arena");
    for (const auto& p : infos_)
      RESBM_CHECK(p.name != name, cat("parameter '", name, "' declared twice"),
                  "give every parameter a unique name");
    ParamInfo info;
    info.name = std::move(name);
    Tensor<T> probe(nullptr, dims);
    info.shape = probe.shape;
    info.rank = probe.rank;
    info.numel = size_t(probe.numel());
    info.offset = size_;
    info.kind = kind;
    size_ += (info.numel + 15) / 16 * 16;
    infos_.push_back(std::move(info));
    return infos_.size() - 1;
  }

  void allocate() {
    RESBM_CHECK(!allocated_, "arena allocated twice", "call allocate() once");
    params_.resize(size_);
    grads_.resize(size_);
    allocated_ = true;
  }

  bool allocated() const { return allocated_; }
  size_t size() const { return size_; }  // elements, padding included
  size_t count() const {                 // elements, padding excluded
    size_t n = 0;
    for (const auto& p : infos_) n += p.numel;
    return n;
  }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  const ParamInfo& info(size_t i) const { return infos_.at(i); }

  Tensor<T> param(size_t i) { return view(params_.data(), i); }
  Tensor<T> grad(size_t i) { return view(grads_.data(), i); }
  Tensor<const T> param(size_t i) const { return view(params_.data(), i); }
  Tensor<const T> grad(size_t i) const { return view(grads_.data(), i); }

  // Index of the entry called `name`; Error if there is none.
  size_t find(const std::string& name) const {
    for (size_t i = 0; i < infos_.size(); ++i)
      if (infos_[i].name == name) return i;
    fail(cat("no parameter named '", name, "'"), "check the name against infos()");
  }

  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  const T* params() const { return params_.data(); }
  const T* grads() const { return grads_.data(); }
  void zero_grad() { grads_.zero(); }

 private:
  template <class P>
  Tensor<P> view(P* base, size_t i) const {
    RESBM_CHECK(allocated_, "parameter read before allocate()", "call allocate() first");
    return entry_view(base, infos_.at(i));
  }

  std::vector<ParamInfo> infos_;
  size_t size_ = 0;
  bool allocated_ = false;
  Buffer<T> params_, grads_;
};

}  // namespace resbm
