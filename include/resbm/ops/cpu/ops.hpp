#pragma once
// Every CPU op: include this to get the whole CPU backend of resbm::ops.
#include "resbm/ops/cpu/attention.hpp"
#include "resbm/ops/cpu/cross_entropy.hpp"
#include "resbm/ops/cpu/embedding.hpp"
#include "resbm/ops/cpu/gemm.hpp"
#include "resbm/ops/cpu/rmsnorm.hpp"
#include "resbm/ops/cpu/rope.hpp"
#include "resbm/ops/cpu/swiglu.hpp"
