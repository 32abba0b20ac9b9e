#pragma once
// The safetensors format (https://github.com/huggingface/safetensors), so checkpoints open
// in PyTorch/NumPy as they are:
//
//   uint64 little-endian N | N bytes of JSON header, space-padded to a multiple of 8 |
//   tensor bytes, packed in header order, no gaps.
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the first byte after the header) plus an optional "__metadata__"
// object of string -> string. We write F32 only; we parse every standard dtype so a file
// from another tool is validated properly and fails with a clear message only when a
// non-F32 tensor is actually read.
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "resbm/core/error.hpp"
#include "resbm/core/tensor.hpp"
#include "resbm/io/file.hpp"
#include "resbm/io/json.hpp"

namespace resbm::io {

namespace detail {
// Same limit as the reference implementation: a header this large is a corrupt length.
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

inline int safetensors_dtype_size(const std::string& dtype) {
  static const std::pair<const char*, int> table[] = {
      {"BOOL", 1}, {"U8", 1},   {"I8", 1},   {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2},  {"F16", 2},  {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4},  {"F64", 8},  {"I64", 8},     {"U64", 8}};
  for (const auto& [name, size] : table)
    if (dtype == name) return size;
  return 0;
}

inline std::string dims_str(const std::vector<int64_t>& d) {
  std::string out = "[";
  for (size_t i = 0; i < d.size(); ++i) out += (i ? ", " : "") + std::to_string(d[i]);
  return out + "]";
}
}  // namespace detail

inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, Tensor<const float>>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta.set(k, v);
    header.set("__metadata__", std::move(meta));
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    RESBM_CHECK(!name.empty(), "a tensor saved to safetensors has an empty name",
                "give every tensor a name");
    RESBM_CHECK(name != "__metadata__", "a tensor is named \"__metadata__\"",
                "rename it; the format reserves that key");
    RESBM_CHECK(!header.contains(name), cat("tensor '", name, "' is saved twice"),
                "give every tensor a unique name");
    RESBM_CHECK(t.rank >= 1, cat("tensor '", name, "' is an empty view (rank 0)"),
                "pass a view with a shape");
    RESBM_CHECK(t.data != nullptr || t.numel() == 0, cat("tensor '", name, "' has no data"),
                "allocate the tensor before saving it");
    Json shape = Json::array();
    for (int i = 0; i < t.rank; ++i) shape.push_back(t.shape[size_t(i)]);
    uint64_t bytes = uint64_t(t.numel()) * sizeof(float);
    Json entry = Json::object();
    entry.set("dtype", "F32");
    entry.set("shape", std::move(shape));
    entry.set("data_offsets", JsonArray{Json(offset), Json(offset + bytes)});
    header.set(name, std::move(entry));
    offset += bytes;
  }
  std::string text = header.dump();
  // Readers may map the data and view it as F32/F64 in place; 8-byte alignment allows it.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));

  AtomicFile f(path, "safetensors file");
  f.write(len, 8);
  f.write(text.data(), text.size());
  for (const auto& [name, t] : tensors)
    if (t.numel() > 0) f.write(t.data, size_t(t.numel()) * sizeof(float));
  f.commit();
}

class SafetensorsFile {
 public:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;  // relative to the data section
  };

  explicit SafetensorsFile(const std::string& path) : file_(path, "safetensors file") {
    const uint64_t size = file_.size();
    RESBM_CHECK(size >= 8,
                cat("safetensors file '", path, "' is ", size,
                    " bytes, shorter than its 8-byte header length"),
                "the file is truncated or not a safetensors file; regenerate it");
    unsigned char len[8];
    file_.read_at(0, len, 8);
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t(len[i]) << (8 * i);
    RESBM_CHECK(n <= detail::kMaxSafetensorsHeader,
                cat("safetensors file '", path, "' declares a header of ", n,
                    " bytes, above the 100 MB limit"),
                "the file is corrupt or not a safetensors file; regenerate it");
    RESBM_CHECK(n <= size - 8,
                cat("safetensors file '", path, "' declares a header of ", n, " bytes but only ",
                    size - 8, " bytes follow the length field"),
                "the file is truncated or corrupt; regenerate it");
    std::string text(size_t(n), '\0');
    file_.read_at(8, text.data(), text.size());
    data_start_ = 8 + n;
    parse_header(path, text);
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Tensor names in the order the header lists them.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    RESBM_CHECK(it != entries_.end(),
                cat("safetensors file '", file_.path(), "' has no tensor '", name, "'"),
                "check the name against names(); the checkpoint may be from another model");
    return it->second;
  }
  const std::vector<int64_t>& shape(const std::string& name) const { return entry(name).shape; }

  // Copies tensor `name` into dst, whose shape must match the stored one exactly.
  void read_into(const std::string& name, Tensor<float> dst) const {
    const Entry& e = entry(name);
    RESBM_CHECK(e.dtype == "F32",
                cat("tensor '", name, "' in '", file_.path(), "' is ", e.dtype,
                    " but read_into reads F32"),
                "convert the checkpoint to float32");
    std::vector<int64_t> want(dst.shape.begin(), dst.shape.begin() + dst.rank);
    RESBM_CHECK(want == e.shape,
                cat("tensor '", name, "' has shape ", detail::dims_str(e.shape), " in '",
                    file_.path(), "' but the destination has shape ", detail::dims_str(want)),
                "load the checkpoint into a model of the same configuration");
    RESBM_CHECK(dst.data != nullptr || dst.numel() == 0,
                cat("destination of tensor '", name, "' has no data"),
                "allocate the destination before reading");
    if (e.end > e.begin) file_.read_at(data_start_ + e.begin, dst.data, size_t(e.end - e.begin));
  }

 private:
  [[noreturn]] void bad(const std::string& path, const std::string& what) const {
    fail(cat("safetensors file '", path, "': ", what),
         "the file is corrupt or was written by an incompatible tool; regenerate it");
  }

  void parse_header(const std::string& path, const std::string& text) {
    Json h;
    try {
      h = Json::parse(text, 64);
    } catch (const Error& e) {
      fail(cat("safetensors file '", path, "' has a corrupt header: ", e.problem()),
           "the file is corrupt; regenerate it");
    }
    if (!h.is_object()) bad(path, "the header is not a JSON object");
    std::vector<std::pair<uint64_t, std::string>> order;  // (begin, name)
    for (const auto& [name, v] : h.as_object()) {
      if (name == "__metadata__") {
        if (!v.is_object()) bad(path, "\"__metadata__\" is not an object");
        for (const auto& [k, mv] : v.as_object()) {
          if (!mv.is_string()) bad(path, cat("metadata value \"", k, "\" is not a string"));
          metadata_[k] = mv.as_string();
        }
        continue;
      }
      if (!v.is_object()) bad(path, cat("entry for tensor '", name, "' is not an object"));
      const Json* dtype = v.find("dtype");
      const Json* shape = v.find("shape");
      const Json* offs = v.find("data_offsets");
      if (!dtype || !dtype->is_string() || !shape || !shape->is_array() || !offs ||
          !offs->is_array())
        bad(path, cat("tensor '", name,
                      "' needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" (array)"));
      Entry e;
      e.dtype = dtype->as_string();
      int esize = detail::safetensors_dtype_size(e.dtype);
      if (esize == 0) bad(path, cat("tensor '", name, "' has unknown dtype \"", e.dtype, "\""));
      uint64_t count = 1;
      for (const Json& d : shape->as_array()) {
        if (!d.is_number() || std::nearbyint(d.as_number()) != d.as_number() ||
            d.as_number() < 0 || d.as_number() > detail::kMaxExactInt)
          bad(path, cat("tensor '", name, "' has a shape entry that is not a size: ", d.dump()));
        int64_t dim = d.as_int64();
        e.shape.push_back(dim);
        // Saturating: anything past 2^60 elements fails the size check below anyway, and
        // the product must not wrap around into a plausible value.
        const uint64_t cap = uint64_t(1) << 60;
        count = (dim != 0 && count > cap / uint64_t(dim)) ? cap : count * uint64_t(dim);
      }
      if (offs->size() != 2) bad(path, cat("tensor '", name, "' needs two data_offsets"));
      for (const Json& o : offs->as_array())
        if (!o.is_number() || std::nearbyint(o.as_number()) != o.as_number() ||
            o.as_number() < 0 || o.as_number() > detail::kMaxExactInt)
          bad(path, cat("tensor '", name, "' has an offset that is not a byte position: ",
                        o.dump()));
      e.begin = uint64_t(offs->as_array()[0].as_int64());
      e.end = uint64_t(offs->as_array()[1].as_int64());
      if (e.end < e.begin)
        bad(path, cat("tensor '", name, "' has data_offsets [", e.begin, ", ", e.end,
                      "] that end before they begin"));
      if (e.end - e.begin != count * uint64_t(esize))
        bad(path, cat("tensor '", name, "' has ", e.end - e.begin, " bytes of data but shape ",
                      detail::dims_str(e.shape), " of ", e.dtype, " needs ",
                      count * uint64_t(esize)));
      order.emplace_back(e.begin, name);
      names_.push_back(name);
      entries_.emplace(name, std::move(e));
    }
    // The format requires the data section to be covered exactly: no overlaps, no holes.
    std::sort(order.begin(), order.end());
    const uint64_t data_size = file_.size() - data_start_;
    uint64_t at = 0;
    for (const auto& [begin, name] : order) {
      const Entry& e = entries_.at(name);
      if (e.end > data_size)
        fail(cat("safetensors file '", path, "' is truncated: tensor '", name,
                 "' ends at data byte ", e.end, " but the data section has ", data_size, " bytes"),
             "the file was cut short; regenerate it");
      if (begin < at)
        bad(path, cat("tensor '", name, "' at data_offsets [", e.begin, ", ", e.end,
                      "] overlaps the previous tensor, which ends at ", at));
      if (begin > at)
        bad(path, cat("data bytes [", at, ", ", begin, ") belong to no tensor (before '", name,
                      "')"));
      at = e.end;
    }
    if (at != data_size)
      bad(path, cat("the data section has ", data_size, " bytes but the tensors cover ", at,
                    " (trailing bytes)"));
  }

  InputFile file_;
  uint64_t data_start_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

inline SafetensorsFile load_safetensors(const std::string& path) { return SafetensorsFile(path); }

}  // namespace resbm::io
