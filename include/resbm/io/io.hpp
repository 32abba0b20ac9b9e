#pragma once
// Files and human-facing output: JSON, safetensors checkpoints, metrics logs, progress.
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"
#include "resbm/io/metrics.hpp"
#include "resbm/io/progress.hpp"
#include "resbm/io/safetensors.hpp"
