#pragma once
// Everything in resbm::codec: the concepts, every wire policy, the learned
// ResidualBottleneck, the Dense/QuantOnly and Subspace baselines, and the presets.
#include "resbm/codec/concepts.hpp"
#include "resbm/codec/dense.hpp"
#include "resbm/codec/policies.hpp"
#include "resbm/codec/presets.hpp"
#include "resbm/codec/residual_bottleneck.hpp"
#include "resbm/codec/subspace.hpp"
#include "resbm/codec/wire/bf16.hpp"
#include "resbm/codec/wire/fp32.hpp"
#include "resbm/codec/wire/fp8_e4m3.hpp"
#include "resbm/codec/wire/int4_grouped.hpp"
#include "resbm/codec/wire/int8_grouped.hpp"
#include "resbm/codec/wire/int8_per_token.hpp"
