// safetensors reading (mmap, validated) and writing (atomic).
//
// File layout: 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}?, name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...}
// then the data; offsets are relative to the first byte after the header. Nothing in a file is trusted:
// parse_safetensors_header() validates every field (see docs/formats.md) and throws graft::Error naming
// the file and the tensor/field on the first problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "graft/dtype.hpp"
#include "graft/mmap_file.hpp"
#include "graft/tensor.hpp"

namespace graft::io {

// Largest header graft accepts (the Rust reference uses the same 100 MB limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Dims shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
  int64_t numel() const { return shape.numel(); }
  uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;              // sorted by data offset (= file order)
  std::map<std::string, std::string> metadata;  // "__metadata__" (may be empty)
  uint64_t header_bytes = 0;                    // N
  uint64_t data_start = 0;                      // 8 + N: file offset of the data section
  uint64_t data_bytes = 0;                      // file size - data_start
};

// Validates the whole image of a safetensors file held in memory (`size` = the file size) and returns
// its header. `source` names the file in error messages. Never reads outside [data, data + size).
// This is the function the libFuzzer target drives.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, std::string_view source);

// One mmapped, validated .safetensors file. Tensors are zero-copy views into the mapping (read-only
// memory: writing through them faults); each view keeps the mapping alive.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);

  const std::string& path() const { return map_->path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsHeader& header() const { return header_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws naming the tensor and file
  Tensor tensor(const std::string& name) const;
  const std::shared_ptr<MappedFile>& mapping() const { return map_; }

 private:
  std::shared_ptr<MappedFile> map_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> index_;
};

// The weights of a model directory: `model.safetensors.index.json` (shards, each mapped once) or a
// single `model.safetensors` (or the only *.safetensors file in the directory).
// Index validation: weight_map must be {tensor: shard file name} with plain file names; every shard
// must exist; every tensor listed must be in its shard and every tensor of a shard must be listed.
class SafetensorsModel {
 public:
  // `path` = a directory, an index .json file, or a single .safetensors file.
  static SafetensorsModel open(const std::string& path);
  // True when `dir` holds weights open() would find.
  static bool has_weights(const std::string& dir);

  const std::vector<SafetensorsFile>& files() const { return files_; }
  std::vector<std::string> names() const;  // all tensor names, sorted
  size_t size() const { return where_.size(); }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  Tensor tensor(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::string& source() const { return source_; }  // index or file path

 private:
  std::string source_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, size_t> where_;  // tensor -> index into files_
};

// Writer. Order of tensors in the file:
//   Reference (default): like the Rust reference / HF `save_file`: by dtype size descending, then by
//     name, so every tensor is naturally aligned (the data section starts 8-byte aligned).
//   ByName: by name only.   Given: in the order passed.
// The header JSON lists "__metadata__" first (when non-empty) and then tensors in data order; it is
// padded with spaces to a multiple of 8 bytes. Tensors are written contiguous (strided views are
// copied). The file is written atomically (temp file, fsync, rename). Duplicate names are an error.
enum class WriteOrder { Reference, ByName, Given };
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      WriteOrder order = WriteOrder::Reference);
// The same bytes, in memory (tests, small files). save_safetensors streams instead of building this.
std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors,
                                           const std::map<std::string, std::string>& metadata = {},
                                           WriteOrder order = WriteOrder::Reference);

}  // namespace graft::io
