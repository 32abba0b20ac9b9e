#pragma once
// The umbrella header: everything resbm offers on the CPU. The CUDA backend is
// resbm/cuda.cuh (include it from .cu files).
#include "resbm/core/arena.hpp"
#include "resbm/core/buffer.hpp"
#include "resbm/core/context.hpp"
#include "resbm/core/device.hpp"
#include "resbm/core/dtype.hpp"
#include "resbm/core/error.hpp"
#include "resbm/core/rng.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/data/data.hpp"
#include "resbm/io/checkpoint.hpp"
#include "resbm/io/cli.hpp"
#include "resbm/io/io.hpp"
#include "resbm/nn/llama.hpp"
#include "resbm/ops/cpu/ops.hpp"
#include "resbm/optim/optim.hpp"
