#pragma once
// Which GPU halves implement a codec: CudaHalves<Codec> is CudaResidualBottleneck<Codec>
// for the Mlp/silu bottleneck with an int8 forward wire (presets::Resbm<R>), CudaDense<Codec>
// for Dense<W> with a wire the GPU encodes (bf16, int8). HasCudaHalves<Codec> says whether
// there is one, so a trainer dispatching on runtime names can refuse the others by name.
#include "resbm/codec/cuda/dense.cuh"
#include "resbm/codec/cuda/residual_bottleneck.cuh"

namespace resbm::codec {

template <class Codec>
struct CudaHalvesOf {};

template <class W>
  requires ops::cuda_detail_wire::CudaWire<W>
struct CudaHalvesOf<Dense<W>> {
  using type = CudaDense<Dense<W>>;
};

template <class Codec>
  requires has_cuda_residual_bottleneck<Codec>
struct CudaHalvesOf<Codec> {
  using type = CudaResidualBottleneck<Codec>;
};

template <class Codec>
concept HasCudaHalves = requires { typename CudaHalvesOf<Codec>::type; };

template <class Codec>
using CudaHalves = typename CudaHalvesOf<Codec>::type;

}  // namespace resbm::codec
