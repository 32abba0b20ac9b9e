#pragma once
// What every CUDA op needs besides its tensors: the device, one stream, a cuBLASLt handle
// with its workspace (32 MiB) and the cache of matmul plans, plus a scratch buffer that ops
// use for deterministic two-pass reductions. Everything is owned here and freed with it.
//
// Ops take `CudaContext&` and `Tensor<T, resbm::cuda>` views; they are asynchronous on
// ctx.stream and never synchronise (except where a header says so). Errors of the CUDA
// runtime and of cuBLAS(Lt) throw resbm::Error naming the call, file:line and the error.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "resbm/core/dtype.hpp"
#include "resbm/core/error.hpp"
#include "resbm/core/tensor.hpp"

namespace resbm::cuda_detail {

[[noreturn]] inline void cuda_fail(cudaError_t e, const char* call, const char* file, int line) {
  fail(cat("CUDA call ", call, " failed at ", file, ":", line, ": ", cudaGetErrorName(e), " (",
           cudaGetErrorString(e), ")"),
       "check the device, the sizes passed and that no earlier kernel faulted "
       "(run under compute-sanitizer)");
}

[[noreturn]] inline void cublas_fail(cublasStatus_t s, const char* call, const char* file, int line) {
  fail(cat("cuBLAS call ", call, " failed at ", file, ":", line, ": ", cublasLtGetStatusName(s), " (",
           cublasLtGetStatusString(s), ")"),
       "check the matmul shapes, leading dimensions and pointer alignment");
}

}  // namespace resbm::cuda_detail

#define RESBM_CUDA_CHECK(call)                                                       \
  do {                                                                               \
    cudaError_t resbm_err_ = (call);                                                 \
    if (resbm_err_ != cudaSuccess)                                                   \
      ::resbm::cuda_detail::cuda_fail(resbm_err_, #call, __FILE__, __LINE__);        \
  } while (0)
#define RESBM_CUBLAS_CHECK(call)                                                     \
  do {                                                                               \
    cublasStatus_t resbm_st_ = (call);                                               \
    if (resbm_st_ != CUBLAS_STATUS_SUCCESS)                                          \
      ::resbm::cuda_detail::cublas_fail(resbm_st_, #call, __FILE__, __LINE__);       \
  } while (0)
// After every kernel launch: a bad launch configuration shows up here, not later.
#define RESBM_CUDA_LAUNCH_CHECK() RESBM_CUDA_CHECK(cudaGetLastError())

#ifndef CUDA_CHECK
#define CUDA_CHECK(call) RESBM_CUDA_CHECK(call)
#endif
#ifndef CUBLAS_CHECK
#define CUBLAS_CHECK(call) RESBM_CUBLAS_CHECK(call)
#endif

namespace resbm {

// Our bf16 and CUDA's __nv_bfloat16 have the same bits; kernels read and write through
// these so that host code keeps using resbm::bf16.
static_assert(sizeof(bf16) == sizeof(__nv_bfloat16));

template <class T>
using CudaTensor = Tensor<T, cuda>;

// Owning device memory (cudaMalloc), move-only. Not zeroed: call zero() or fill it.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  // Reallocates; the contents are lost (and undefined).
  void resize(size_t n) {
    release();
    if (n == 0) return;
    RESBM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
    n_ = n;
  }
  void zero(cudaStream_t s = nullptr) {
    if (n_) RESBM_CUDA_CHECK(cudaMemsetAsync(p_, 0, n_ * sizeof(T), s));
  }
  // Byte fill, e.g. 0xff makes every float/bf16 a NaN (poisoning outputs in tests).
  void fill_bytes(int byte, cudaStream_t s = nullptr) {
    if (n_) RESBM_CUDA_CHECK(cudaMemsetAsync(p_, byte, n_ * sizeof(T), s));
  }
  // Synchronous copies (they wait for the device). n defaults to the whole buffer.
  void from_host(const T* src, size_t n) {
    RESBM_CHECK(n <= n_, cat("copy of ", n, " elements into a device buffer of ", n_),
                "resize the buffer first");
    if (n) RESBM_CUDA_CHECK(cudaMemcpy(p_, src, n * sizeof(T), cudaMemcpyHostToDevice));
  }
  void from_host(const std::vector<T>& src) {
    if (src.size() != n_) resize(src.size());
    from_host(src.data(), src.size());
  }
  void to_host(T* dst, size_t n) const {
    RESBM_CHECK(n <= n_, cat("copy of ", n, " elements out of a device buffer of ", n_),
                "ask for at most size() elements");
    if (n) RESBM_CUDA_CHECK(cudaMemcpy(dst, p_, n * sizeof(T), cudaMemcpyDeviceToHost));
  }
  std::vector<T> to_host() const {
    std::vector<T> out(n_);
    to_host(out.data(), n_);
    return out;
  }

  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }

  CudaTensor<T> view(std::initializer_list<int64_t> dims) {
    CudaTensor<T> t(p_, dims);
    RESBM_CHECK(size_t(t.numel()) <= n_, "view larger than its device buffer",
                "resize the buffer before viewing it");
    return t;
  }

 private:
  void release() {
    if (p_) cudaFree(p_);  // no throw from destructors; a failed free leaks at worst
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// One cached cuBLASLt matmul: descriptors and the heuristic's algorithm for one
// (shape, transposes, leading dimensions, dtypes, alignments) key.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};
// (ops, m, n, k, leading dims, C type, alignments, reserved, reserved, batch count, batch
// strides of the three operands)
using LtKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int,
                         int, int, int, int64_t, int64_t, int64_t, int64_t>;

class CudaContext {
 public:
  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;

  explicit CudaContext(int device_id = 0) : device(device_id) {
    int n = 0;
    RESBM_CUDA_CHECK(cudaGetDeviceCount(&n));
    RESBM_CHECK(device_id >= 0 && device_id < n, cat("CUDA device ", device_id, " of ", n, " requested"),
                "pass a device id below the number of GPUs");
    RESBM_CUDA_CHECK(cudaSetDevice(device));
    RESBM_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
    RESBM_CUDA_CHECK(cudaStreamCreate(&stream));
    RESBM_CUBLAS_CHECK(cublasLtCreate(&lt));
    workspace.resize(kWorkspaceBytes);
  }
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;
  ~CudaContext() {
    for (auto& [k, p] : plans) {
      cublasLtMatrixLayoutDestroy(p.a);
      cublasLtMatrixLayoutDestroy(p.b);
      cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.desc);
    }
    if (lt) cublasLtDestroy(lt);
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }

  void synchronize() const { RESBM_CUDA_CHECK(cudaStreamSynchronize(stream)); }

  // At least `bytes` of device scratch, valid until the next call (ops on ctx.stream run in
  // order, so one op's scratch is free again when the next starts). Growing it synchronises
  // the stream first; keep sizes steady (e.g. by a warm-up step) before graph capture.
  void* scratch(size_t bytes) {
    if (bytes > scratch_.size()) {
      synchronize();
      scratch_.resize((bytes + 255) / 256 * 256);
    }
    return scratch_.data();
  }

  // Time up to kAutotuneCandidates of cuBLASLt's algorithms for each new GEMM shape (on its
  // real operands, writing a scratch output) and keep the fastest, instead of the
  // heuristic's first. Off by default: two contexts may then pick different algorithms for
  // one shape, whose sums round differently.
  bool autotune = false;
  static constexpr int kAutotuneCandidates = 8;

  int device = 0;
  cudaDeviceProp props{};
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer<unsigned char> workspace;
  std::map<LtKey, LtPlan> plans;

 private:
  DeviceBuffer<unsigned char> scratch_;
};

namespace cuda_detail {
inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }
}  // namespace cuda_detail

}  // namespace resbm
