#pragma once
// Everything in resbm::optim: the Optimizer concept, AdamW, Muon, the learning-rate
// schedule and gradient clipping.
#include "resbm/optim/adamw.hpp"
#include "resbm/optim/any.hpp"
#include "resbm/optim/clip.hpp"
#include "resbm/optim/muon.hpp"
#include "resbm/optim/optimizer.hpp"
#include "resbm/optim/schedule.hpp"
