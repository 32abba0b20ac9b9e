#pragma once
// Everything between a text corpus and the int32 token batches a model consumes.
#include "resbm/data/sampler.hpp"
#include "resbm/data/shard.hpp"
#include "resbm/data/tokenizer.hpp"
