#pragma once
// Checkpoints of one model or one pipeline stage, under one directory:
//   <stem>.step-<N>.params.safetensors   parameters by name (opens with `safetensors`)
//   <stem>.step-<N>.optim.safetensors    optimizer state by name
//   <stem>.manifest.json                 the config, and for the last two saves: step,
//                                        optimizer steps, and each file's size and CRC-32C
// Files are written atomically (temp file, fsync, rename) and the manifest last, so a
// process killed mid-save leaves the manifest pointing at the previous, complete files.
// On load, sizes and checksums are verified before any file is parsed: a truncated or
// corrupted file, or one from another config, is refused with the reason.
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/arena.hpp"
#include "resbm/core/crc32c.hpp"
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

// Size and CRC-32C of a whole file, read in pieces.
inline std::pair<uint64_t, uint32_t> file_checksum(const std::string& path) {
  InputFile f(path, "checkpoint file");
  Crc32c crc;
  std::vector<char> buf(size_t(1) << 20);
  for (uint64_t off = 0; off < f.size();) {
    const size_t n = size_t(std::min<uint64_t>(buf.size(), f.size() - off));
    f.read_at(off, buf.data(), n);
    crc.update(buf.data(), n);
    off += n;
  }
  return {f.size(), crc.value()};
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

inline std::string manifest_path(const std::string& dir, const std::string& stem) {
  return (std::filesystem::path(dir) / (stem + ".manifest.json")).string();
}

// The manifest of <dir>/<stem>, or null when there is none.
inline Json read_manifest(const std::string& dir, const std::string& stem) {
  const std::string path = manifest_path(dir, stem);
  if (!std::filesystem::exists(path)) return Json();
  Json m = Json::parse(read_file(path, "checkpoint manifest", 1 << 20));
  RESBM_CHECK(m.is_object() && m.contains("config") && m.contains("checkpoints") && m.at("checkpoints").is_array(),
              cat("checkpoint manifest '", path, "' lacks its config or checkpoint list"),
              "the manifest is corrupt; resume from another directory or start anew");
  return m;
}

// Steps <dir>/<stem> holds checkpoints of, oldest first (empty when none).
inline std::vector<int64_t> checkpoint_steps(const std::string& dir, const std::string& stem) {
  std::vector<int64_t> steps;
  Json m = read_manifest(dir, stem);
  if (m.is_null()) return steps;
  for (const Json& c : m.at("checkpoints").as_array()) steps.push_back(c.at("step").as_int64());
  return steps;
}

// Saves step `step`; keeps this and the previous save, removes older files.
inline void save_checkpoint(const std::string& dir, const std::string& stem, int64_t step, int64_t optimizer_steps,
                            ParamArena<float>& arena, const NamedTensors& optim_state, const Json& config) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  RESBM_CHECK(!ec, cat("cannot create checkpoint directory '", dir, "': ", ec.message()),
              "pass --save a writable directory");
  char tag[32];
  std::snprintf(tag, sizeof tag, ".step-%08" PRId64, step);
  Json files = Json::array();
  auto write = [&](const char* role, const NamedTensors& tensors) {
    const std::string name = stem + tag + "." + role + ".safetensors";
    const std::string path = (std::filesystem::path(dir) / name).string();
    save_tensors(path, tensors);
    const auto [bytes, crc] = file_checksum(path);
    Json f = Json::object();
    f.set("role", role);
    f.set("name", name);
    f.set("bytes", double(bytes));
    f.set("crc32c", double(crc));
    files.push_back(std::move(f));
  };
  write("params", named_params(arena));
  write("optim", optim_state);

  Json entry = Json::object();
  entry.set("step", step);
  entry.set("optimizer_steps", optimizer_steps);
  entry.set("files", std::move(files));
  Json old = read_manifest(dir, stem);
  Json list = Json::array();
  std::vector<std::string> drop;
  if (!old.is_null())
    for (const Json& c : old.at("checkpoints").as_array()) {
      if (c.at("step").as_int64() == step) continue;  // re-saved: the new entry replaces it
      list.push_back(c);
    }
  while (list.size() >= 2) {  // keep the previous save and this one
    for (const Json& f : list.as_array().front().at("files").as_array()) drop.push_back(f.at("name").as_string());
    list.as_array().erase(list.as_array().begin());
  }
  list.push_back(std::move(entry));
  Json manifest = Json::object();
  manifest.set("format", "resbm-checkpoint");
  manifest.set("version", 1);
  manifest.set("config", config);
  manifest.set("checkpoints", std::move(list));
  write_file_atomic(manifest_path(dir, stem), manifest.dump() + "\n", "checkpoint manifest");
  for (const auto& name : drop) std::filesystem::remove(std::filesystem::path(dir) / name, ec);
}

struct LoadedCheckpoint {
  int64_t step = 0;
  int64_t optimizer_steps = 0;
};

// Loads checkpoint `step` (-1: the newest) of <dir>/<stem> after checking the manifest's
// config against `config` and every file's size and checksum against the manifest.
inline LoadedCheckpoint load_checkpoint(const std::string& dir, const std::string& stem, ParamArena<float>& arena,
                                        const NamedTensors& optim_state, const Json& config, int64_t step = -1) {
  Json m = read_manifest(dir, stem);
  RESBM_CHECK(!m.is_null(), cat("no checkpoint manifest '", manifest_path(dir, stem), "'"),
              "pass --resume the directory that an earlier run wrote with --save");
  expect_same_config(m.at("config"), config, dir);
  const Json* entry = nullptr;
  for (const Json& c : m.at("checkpoints").as_array())
    if (step < 0 || c.at("step").as_int64() == step) entry = &c;
  RESBM_CHECK(entry, cat("checkpoint '", dir, "' has no save of step ", step, " for ", stem),
              "resume from a step every stage saved (see the manifests), or start anew");
  LoadedCheckpoint out{entry->at("step").as_int64(), entry->at("optimizer_steps").as_int64()};
  for (const Json& f : entry->at("files").as_array()) {
    const std::string path = (std::filesystem::path(dir) / f.at("name").as_string()).string();
    RESBM_CHECK(std::filesystem::exists(path), cat("checkpoint file '", path, "' is missing"),
                "restore it, or resume from another checkpoint");
    const auto [bytes, crc] = file_checksum(path);
    RESBM_CHECK(double(bytes) == f.at("bytes").as_number(),
                cat("checkpoint file '", path, "' is ", bytes, " bytes but its manifest says ",
                    f.at("bytes").as_int64(), ": it is truncated or was overwritten"),
                "restore it, or resume from another checkpoint");
    RESBM_CHECK(double(crc) == f.at("crc32c").as_number(),
                cat("checkpoint file '", path, "' is corrupted (crc32c ", crc, ", manifest says ",
                    f.at("crc32c").as_int64(), ")"),
                "restore it, or resume from another checkpoint");
    const std::string& role = f.at("role").as_string();
    if (role == "params") load_tensors(path, named_params(arena));
    else if (role == "optim") load_tensors(path, optim_state);
    else fail(cat("checkpoint manifest lists a file of unknown role '", role, "'"), "write it with this resbm");
  }
  return out;
}

}  // namespace resbm::io
