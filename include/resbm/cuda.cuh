#pragma once
// The umbrella header of the CUDA backend (include it from .cu files): the context, device
// buffers, every CUDA op and the GPU halves of the boundary codec. See docs/cuda.md.
#include "resbm/ops/cuda/adamw.cuh"
#include "resbm/ops/cuda/attention.cuh"
#include "resbm/ops/cuda/attention_mma.cuh"
#include "resbm/ops/cuda/cast.cuh"
#include "resbm/ops/cuda/common.cuh"
#include "resbm/ops/cuda/context.cuh"
#include "resbm/ops/cuda/cross_entropy.cuh"
#include "resbm/ops/cuda/embedding.cuh"
#include "resbm/ops/cuda/matmul.cuh"
#include "resbm/ops/cuda/rmsnorm.cuh"
#include "resbm/ops/cuda/rope.cuh"
#include "resbm/ops/cuda/silu.cuh"
#include "resbm/ops/cuda/swiglu.cuh"
#include "resbm/ops/cuda/wire.cuh"
#include "resbm/codec/cuda/residual_bottleneck.cuh"
