#pragma once
// A checkpoint of one model (or one pipeline stage): its parameters, its optimizer state
// and a JSON record of the run (config, step), under one directory:
//   <dir>/<stem>.params.safetensors   parameters by name (opens with the safetensors package)
//   <dir>/<stem>.optim.safetensors    optimizer state by name
//   <dir>/<stem>.json                 {"step": ..., "config": {...}, ...}
// Each file is written atomically (temp file, fsync, rename) and the JSON record last, so a
// run killed mid-save leaves the previous record pointing at complete files.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"
#include "resbm/io/safetensors.hpp"

namespace resbm::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor<float>>>;

inline NamedTensors named_params(ParamArena<float>& arena) {
  NamedTensors out;
  for (size_t i = 0; i < arena.infos().size(); ++i) out.emplace_back(arena.info(i).name, arena.param(i));
  return out;
}

inline void save_tensors(const std::string& path, const NamedTensors& tensors) {
  std::vector<std::pair<std::string, Tensor<const float>>> views(tensors.begin(), tensors.end());
  save_safetensors(path, views, {{"format", "pt"}, {"writer", "resbm"}});
}

// Reads every tensor of `tensors` from `path`; the file must hold exactly these names.
inline void load_tensors(const std::string& path, const NamedTensors& tensors) {
  SafetensorsFile file(path);
  for (const auto& name : file.names()) {
    bool known = false;
    for (const auto& t : tensors) known = known || t.first == name;
    RESBM_CHECK(known, cat("checkpoint '", path, "' holds tensor '", name, "' that this model does not have"),
                "resume with the configuration the checkpoint was written with");
  }
  for (const auto& [name, t] : tensors) {
    RESBM_CHECK(file.contains(name), cat("checkpoint '", path, "' lacks tensor '", name, "'"),
                "resume with the configuration the checkpoint was written with");
    file.read_into(name, t);
  }
}

inline void save_checkpoint(const std::string& dir, const std::string& stem, ParamArena<float>& arena,
                            const NamedTensors& optim_state, const Json& record) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  RESBM_CHECK(!ec, cat("cannot create checkpoint directory '", dir, "': ", ec.message()),
              "pass --save a writable directory");
  const std::string base = (std::filesystem::path(dir) / stem).string();
  save_tensors(base + ".params.safetensors", named_params(arena));
  save_tensors(base + ".optim.safetensors", optim_state);
  write_file_atomic(base + ".json", record.dump() + "\n", "checkpoint record");
}

// Error naming the first field of `saved` that differs from `now`.
inline void expect_same_config(const Json& saved, const Json& now, const std::string& where) {
  for (const auto& [key, value] : now.as_object()) {
    std::string flag = key;
    for (char& ch : flag) ch = ch == '_' ? '-' : ch;
    const Json* old = saved.find(key);
    RESBM_CHECK(old && *old == value,
                cat("checkpoint '", where, "' was written with ", key, " = ",
                    old ? old->dump() : std::string("(absent)"), " but this run has ", key, " = ", value.dump()),
                cat("resume with --", flag, " ", old ? old->dump() : std::string("..."),
                    " or start a new run without --resume"));
  }
}

// Loads parameters and optimizer state after checking that the record's "config" equals
// `config` (so a mismatch names the field, not a tensor shape); returns the record.
inline Json load_checkpoint(const std::string& dir, const std::string& stem, ParamArena<float>& arena,
                            const NamedTensors& optim_state, const Json& config) {
  const std::string base = (std::filesystem::path(dir) / stem).string();
  RESBM_CHECK(std::filesystem::exists(base + ".json"),
              cat("no checkpoint record '", base, ".json'"),
              "pass --resume the directory that an earlier run wrote with --save");
  Json record = Json::parse(read_file(base + ".json", "checkpoint record", 1 << 20));
  RESBM_CHECK(record.is_object() && record.contains("config") && record.contains("step"),
              cat("checkpoint record '", base, ".json' lacks its config or step"),
              "the record is corrupt; resume from another checkpoint or start anew");
  expect_same_config(record.at("config"), config, dir);
  load_tensors(base + ".params.safetensors", named_params(arena));
  load_tensors(base + ".optim.safetensors", optim_state);
  return record;
}

}  // namespace resbm::io
