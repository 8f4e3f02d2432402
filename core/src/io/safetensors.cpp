#include "graft/io/safetensors.hpp"

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "graft/error.hpp"

namespace graft::io {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kFixCorrupt = "the file is truncated or corrupt: download or convert it again";

// safetensors dtypes that exist in the format but that graft does not (yet) load.
constexpr std::string_view kKnownUnsupported[] = {"U16", "U32", "U64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2",
                                                  "C64", "F8_E4M3FNUZ", "F8_E5M2FNUZ"};

std::string supported_dtype_list() {
  std::string s;
  for (DType t : kAllDTypes) {
    if (!s.empty()) s += ", ";
    s += dtype_safetensors_name(t);
  }
  return s;
}

// Reads a non-negative integer that fits uint64 from a JSON value; false otherwise.
bool as_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

std::string short_dump(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Parses the JSON text, rejecting duplicate keys at any level (nlohmann keeps the last silently)
// and nesting deeper than any valid header needs.
json parse_header_json(const char* begin, const char* end, std::string_view source) {
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  int duplicate_depth = 0;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && duplicate.empty() && parsed.is_string()) {
          const auto& k = parsed.get_ref<const std::string&>();
          if (!keys.back().insert(k).second) {
            duplicate = k;
            duplicate_depth = depth;
          }
        }
        break;
      default:
        break;
    }
    if (depth > 8)
      GRAFT_FAIL(kFixCorrupt, "safetensors '{}': header JSON is nested {} levels deep (a valid header needs 3)",
                 source, depth);
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    GRAFT_FAIL(kFixCorrupt, "safetensors '{}': header is not valid JSON: {}", source, e.what());
  }
  if (!duplicate.empty()) {
    if (duplicate_depth <= 1)
      GRAFT_FAIL(kFixCorrupt, "safetensors '{}': duplicate tensor name '{}' in the header", source, duplicate);
    GRAFT_FAIL(kFixCorrupt, "safetensors '{}': duplicate key '{}' inside a header entry", source, duplicate);
  }
  return j;
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, std::string_view source) {
  SafetensorsHeader h;
  GRAFT_CHECK_FIX(size >= 8, kFixCorrupt, "safetensors '{}': file is {} bytes, shorter than the 8-byte header length",
                  source, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  GRAFT_CHECK_FIX(n <= kMaxSafetensorsHeaderBytes, kFixCorrupt,
                  "safetensors '{}': header length {} exceeds the {} byte limit", source, n, kMaxSafetensorsHeaderBytes);
  GRAFT_CHECK_FIX(n <= size - 8, kFixCorrupt, "safetensors '{}': header length {} is larger than the file ({} bytes)",
                  source, n, size);
  GRAFT_CHECK_FIX(n >= 2, kFixCorrupt, "safetensors '{}': header length {} is too short for a JSON object", source, n);
  h.header_bytes = n;
  h.data_start = 8 + n;
  h.data_bytes = size - h.data_start;

  const char* hb = reinterpret_cast<const char*>(data + 8);
  GRAFT_CHECK_FIX(hb[0] == '{', kFixCorrupt, "safetensors '{}': header does not start with '{{' (not a JSON object)",
                  source);
  json j = parse_header_json(hb, hb + n, source);
  GRAFT_CHECK_FIX(j.is_object(), kFixCorrupt, "safetensors '{}': header JSON is a {}, not an object", source,
                  j.type_name());

  h.tensors.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      GRAFT_CHECK_FIX(v.is_object(), kFixCorrupt, "safetensors '{}': __metadata__ is a {}, not an object of strings",
                      source, v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        GRAFT_CHECK_FIX(m.value().is_string(), kFixCorrupt,
                        "safetensors '{}': __metadata__ value for key '{}' is a {} ({}), must be a string", source,
                        m.key(), m.value().type_name(), short_dump(m.value()));
        h.metadata.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    GRAFT_CHECK_FIX(v.is_object(), kFixCorrupt, "safetensors '{}': tensor '{}': entry is a {}, not an object", source,
                    name, v.type_name());
    TensorInfo t;
    t.name = name;
    for (auto f = v.begin(); f != v.end(); ++f)
      GRAFT_CHECK_FIX(f.key() == "dtype" || f.key() == "shape" || f.key() == "data_offsets", kFixCorrupt,
                      "safetensors '{}': tensor '{}': unknown field '{}' (expected dtype, shape, data_offsets)", source,
                      name, f.key());
    // dtype
    auto d = v.find("dtype");
    GRAFT_CHECK_FIX(d != v.end(), kFixCorrupt, "safetensors '{}': tensor '{}': missing field 'dtype'", source, name);
    GRAFT_CHECK_FIX(d->is_string(), kFixCorrupt, "safetensors '{}': tensor '{}': field 'dtype' is a {}, not a string",
                    source, name, d->type_name());
    const auto& ds = d->get_ref<const std::string&>();
    auto dt = dtype_from_safetensors(ds);
    if (!dt) {
      bool known = std::find(std::begin(kKnownUnsupported), std::end(kKnownUnsupported), ds) != std::end(kKnownUnsupported);
      if (known)
        GRAFT_FAIL(fmt::format("convert the tensor to one of: {}", supported_dtype_list()),
                   "safetensors '{}': tensor '{}': dtype '{}' is a safetensors dtype graft does not support", source,
                   name, ds);
      GRAFT_FAIL(kFixCorrupt, "safetensors '{}': tensor '{}': unknown dtype '{}' (supported: {})", source, name,
                 ds.size() > 40 ? ds.substr(0, 40) + "..." : ds, supported_dtype_list());
    }
    t.dtype = *dt;
    // shape
    auto s = v.find("shape");
    GRAFT_CHECK_FIX(s != v.end(), kFixCorrupt, "safetensors '{}': tensor '{}': missing field 'shape'", source, name);
    GRAFT_CHECK_FIX(s->is_array(), kFixCorrupt, "safetensors '{}': tensor '{}': field 'shape' is a {}, not an array",
                    source, name, s->type_name());
    GRAFT_CHECK_FIX(s->size() <= static_cast<size_t>(kMaxDims), kFixCorrupt,
                    "safetensors '{}': tensor '{}': shape has {} dimensions, graft supports at most {}", source, name,
                    s->size(), kMaxDims);
    uint64_t numel = 1;
    for (const auto& e : *s) {
      uint64_t dim = 0;
      GRAFT_CHECK_FIX(as_u64(e, dim), kFixCorrupt,
                      "safetensors '{}': tensor '{}': shape entry {} is not a non-negative integer", source, name,
                      short_dump(e));
      GRAFT_CHECK_FIX(dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
                          !__builtin_mul_overflow(numel, dim, &numel) &&
                          numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                      kFixCorrupt, "safetensors '{}': tensor '{}': shape {} overflows the element count", source, name,
                      short_dump(*s));
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes = 0;
    GRAFT_CHECK_FIX(!__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes), kFixCorrupt,
                    "safetensors '{}': tensor '{}': shape {} overflows the byte count", source, name, short_dump(*s));
    // data_offsets
    auto o = v.find("data_offsets");
    GRAFT_CHECK_FIX(o != v.end(), kFixCorrupt, "safetensors '{}': tensor '{}': missing field 'data_offsets'", source,
                    name);
    GRAFT_CHECK_FIX(o->is_array() && o->size() == 2, kFixCorrupt,
                    "safetensors '{}': tensor '{}': field 'data_offsets' must be [begin, end], got {}", source, name,
                    short_dump(*o));
    GRAFT_CHECK_FIX(as_u64((*o)[0], t.begin) && as_u64((*o)[1], t.end), kFixCorrupt,
                    "safetensors '{}': tensor '{}': data_offsets {} are not non-negative integers", source, name,
                    short_dump(*o));
    GRAFT_CHECK_FIX(t.begin <= t.end, kFixCorrupt, "safetensors '{}': tensor '{}': data_offsets begin {} > end {}",
                    source, name, t.begin, t.end);
    GRAFT_CHECK_FIX(t.end <= h.data_bytes, kFixCorrupt,
                    "safetensors '{}': tensor '{}': data_offsets end {} is past the end of the data ({} bytes)", source,
                    name, t.end, h.data_bytes);
    GRAFT_CHECK_FIX(t.end - t.begin == nbytes, kFixCorrupt,
                    "safetensors '{}': tensor '{}': data_offsets span {} bytes but {} {} needs {} bytes (size mismatch)",
                    source, name, t.end - t.begin, ds, short_dump(*s), nbytes);
    h.tensors.push_back(std::move(t));
  }
  // Overlaps: sort by begin, then each tensor must start at or after the previous one's end
  // (empty tensors occupy nothing).
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : (a.end != b.end ? a.end < b.end : a.name < b.name);
  });
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin == t.end) continue;
    if (prev)
      GRAFT_CHECK_FIX(t.begin >= prev->end, kFixCorrupt,
                      "safetensors '{}': tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", source, prev->name,
                      prev->begin, prev->end, t.name, t.begin, t.end);
    prev = &t;
  }
  return h;
}

// ---------------------------------------------------------------- SafetensorsFile

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.map_ = MappedFile::open(path);
  f.header_ = parse_safetensors_header(f.map_->data(), f.map_->size(), path);
  f.index_.reserve(f.header_.tensors.size());
  for (size_t i = 0; i < f.header_.tensors.size(); ++i) f.index_.emplace(f.header_.tensors[i].name, i);
  return f;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  GRAFT_CHECK_FIX(it != index_.end(), "check the tensor name (`graft inspect` lists the model's tensors)",
                  "tensor '{}' not found in '{}'", name, path());
  return header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& t = info(name);
  // The mapping is read-only; Tensor's API takes void*.
  auto* p = const_cast<uint8_t*>(map_->data() + header_.data_start + t.begin);
  return Tensor::wrap(p, t.shape, t.dtype, Device{}, std::static_pointer_cast<void>(map_));
}

// ---------------------------------------------------------------- SafetensorsModel

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";

std::vector<std::string> safetensors_in_dir(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

bool SafetensorsModel::has_weights(const std::string& dir) {
  fs::path d(dir);
  return fs::exists(d / kIndexName) || !safetensors_in_dir(d).empty();
}

SafetensorsModel SafetensorsModel::open(const std::string& path) {
  fs::path p(path);
  SafetensorsModel m;
  std::string index_path;
  std::string single;
  if (fs::is_directory(p)) {
    if (fs::exists(p / kIndexName)) {
      index_path = (p / kIndexName).string();
    } else if (fs::exists(p / "model.safetensors")) {
      single = (p / "model.safetensors").string();
    } else {
      auto all = safetensors_in_dir(p);
      GRAFT_CHECK_FIX(!all.empty(), "point at a Hugging Face model directory with safetensors weights",
                      "no {} or *.safetensors file in '{}'", kIndexName, path);
      GRAFT_CHECK_FIX(all.size() == 1, fmt::format("add a {} listing which tensor is in which file", kIndexName),
                      "'{}' holds {} .safetensors files but no {}", path, all.size(), kIndexName);
      single = (p / all[0]).string();
    }
  } else if (p.extension() == ".json") {
    index_path = path;
  } else {
    single = path;
  }

  if (!single.empty()) {
    m.source_ = single;
    m.files_.push_back(SafetensorsFile::open(single));
    for (const auto& t : m.files_[0].tensors()) m.where_.emplace(t.name, 0);
    return m;
  }

  m.source_ = index_path;
  const char* fix = "the index does not match the shards: download the model again";
  json j;
  try {
    j = json::parse(read_text_file(index_path));
  } catch (const json::exception& e) {
    GRAFT_FAIL(fix, "'{}' is not valid JSON: {}", index_path, e.what());
  }
  GRAFT_CHECK_FIX(j.is_object(), fix, "'{}': top level is a {}, not an object", index_path, j.type_name());
  auto wm = j.find("weight_map");
  GRAFT_CHECK_FIX(wm != j.end(), fix, "'{}': missing 'weight_map'", index_path);
  GRAFT_CHECK_FIX(wm->is_object(), fix, "'{}': 'weight_map' is a {}, not an object", index_path, wm->type_name());
  fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_ids;  // shard file name -> index into files_
  std::map<std::string, std::string> listed;  // tensor -> shard
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    GRAFT_CHECK_FIX(it.value().is_string(), fix, "'{}': weight_map['{}'] is a {}, not a file name", index_path, it.key(),
                    it.value().type_name());
    const auto& shard = it.value().get_ref<const std::string&>();
    GRAFT_CHECK_FIX(!shard.empty() && shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos &&
                        shard != "." && shard != "..",
                    fix, "'{}': weight_map['{}'] = '{}' is not a plain file name in the model directory", index_path,
                    it.key(), shard);
    listed.emplace(it.key(), shard);
    if (!shard_ids.count(shard)) {
      fs::path sp = dir / shard;
      GRAFT_CHECK_FIX(fs::exists(sp), fix, "'{}': weight_map['{}'] points to missing shard '{}'", index_path, it.key(),
                      sp.string());
      shard_ids.emplace(shard, m.files_.size());
      m.files_.push_back(SafetensorsFile::open(sp.string()));
    }
  }
  for (const auto& [tensor, shard] : listed) {
    size_t id = shard_ids.at(shard);
    GRAFT_CHECK_FIX(m.files_[id].contains(tensor), fix, "'{}' lists tensor '{}' in '{}', but that shard does not contain it",
                    index_path, tensor, shard);
    m.where_.emplace(tensor, id);
  }
  for (const auto& [shard, id] : shard_ids)
    for (const auto& t : m.files_[id].tensors()) {
      auto l = listed.find(t.name);
      GRAFT_CHECK_FIX(l != listed.end(), fix, "shard '{}' contains tensor '{}', which '{}' does not list", shard,
                      t.name, index_path);
      GRAFT_CHECK_FIX(l->second == shard, fix, "tensor '{}' is in shard '{}' but '{}' says it is in '{}'", t.name,
                      shard, index_path, l->second);
    }
  return m;
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [n, i] : where_) out.push_back(n);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsFile& SafetensorsModel::file_of(const std::string& name) const {
  auto it = where_.find(name);
  GRAFT_CHECK_FIX(it != where_.end(), "check the tensor name (`graft inspect` lists the model's tensors)",
                  "tensor '{}' not found in '{}'", name, source_);
  return files_[it->second];
}
const TensorInfo& SafetensorsModel::info(const std::string& name) const { return file_of(name).info(name); }
Tensor SafetensorsModel::tensor(const std::string& name) const { return file_of(name).tensor(name); }

// ---------------------------------------------------------------- writer

namespace {
struct WritePlan {
  std::string header;        // JSON padded with spaces to a multiple of 8
  std::vector<size_t> order; // indices into the tensor list, in data order
  uint64_t data_bytes = 0;
};

WritePlan plan_write(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata, WriteOrder order) {
  WritePlan p;
  p.order.resize(tensors.size());
  for (size_t i = 0; i < p.order.size(); ++i) p.order[i] = i;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    GRAFT_CHECK_FIX(name != "__metadata__", "rename the tensor", "a tensor cannot be named '__metadata__'");
    GRAFT_CHECK_FIX(seen.insert(name).second, "give every tensor a unique name",
                    "duplicate tensor name '{}' passed to the safetensors writer", name);
    GRAFT_CHECK(t.device().is_cpu(), "tensor '{}' is on {}: copy it to the host before saving", name, t.device().str());
    GRAFT_CHECK(t.numel() == 0 || t.raw() != nullptr, "tensor '{}' has no data", name);
  }
  if (order == WriteOrder::Reference)
    std::stable_sort(p.order.begin(), p.order.end(), [&](size_t a, size_t b) {
      size_t sa = dtype_size(tensors[a].second.dtype()), sb = dtype_size(tensors[b].second.dtype());
      return sa != sb ? sa > sb : tensors[a].first < tensors[b].first;
    });
  else if (order == WriteOrder::ByName)
    std::stable_sort(p.order.begin(), p.order.end(), [&](size_t a, size_t b) { return tensors[a].first < tensors[b].first; });

  // ordered_json keeps insertion order, so the header lists entries in data order.
  nlohmann::ordered_json hdr = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = hdr["__metadata__"];
    m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t off = 0;
  for (size_t i : p.order) {
    const auto& [name, t] = tensors[i];
    auto shape = nlohmann::ordered_json::array();
    for (int64_t d : t.shape()) shape.push_back(d);
    uint64_t nb = t.nbytes();
    hdr[name] = {{"dtype", std::string(dtype_safetensors_name(t.dtype()))}, {"shape", shape}, {"data_offsets", {off, off + nb}}};
    off += nb;
  }
  try {
    p.header = hdr.dump();
  } catch (const nlohmann::json::exception& e) {
    GRAFT_FAIL("use valid UTF-8 in tensor names and metadata", "cannot write the safetensors header: {}", e.what());
  }
  p.header.append((8 - p.header.size() % 8) % 8, ' ');  // like the Rust reference
  p.data_bytes = off;
  return p;
}

void put_u64le(uint8_t* dst, uint64_t n) {
  for (int i = 0; i < 8; ++i) dst[i] = static_cast<uint8_t>(n >> (8 * i));
}
}  // namespace

std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata,
                                           WriteOrder order) {
  WritePlan p = plan_write(tensors, metadata, order);
  std::vector<uint8_t> out(8 + p.header.size() + p.data_bytes);
  put_u64le(out.data(), p.header.size());
  std::memcpy(out.data() + 8, p.header.data(), p.header.size());
  uint8_t* dst = out.data() + 8 + p.header.size();
  for (size_t i : p.order) {
    const Tensor& t = tensors[i].second;
    if (t.numel() == 0) continue;
    Tensor c = t.is_contiguous() ? t : t.contiguous();
    std::memcpy(dst, c.raw(), c.nbytes());
    dst += c.nbytes();
  }
  return out;
}

// Streams the file (no full in-memory copy): temp file in the target directory, write, fsync, rename,
// fsync the directory — a crash leaves either the old file or the new one, never half a file.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata, WriteOrder order) {
  WritePlan p = plan_write(tensors, metadata, order);
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmp = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmp.data());
  GRAFT_CHECK_FIX(fd >= 0, "check that the directory exists and is writable", "cannot create a temporary file in '{}': {}",
                  dir.string(), std::strerror(errno));
  auto fail = [&](const char* what) {
    int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    GRAFT_FAIL("free disk space or choose another output directory", "{} '{}' failed: {}", what, path, std::strerror(e));
  };
  auto write_all = [&](const void* b, size_t n) {
    const char* c = static_cast<const char*>(b);
    while (n > 0) {
      ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("writing");
      c += w;
      n -= static_cast<size_t>(w);
    }
  };
  try {
    uint8_t len[8];
    put_u64le(len, p.header.size());
    write_all(len, 8);
    write_all(p.header.data(), p.header.size());
    for (size_t i : p.order) {
      const Tensor& t = tensors[i].second;
      if (t.numel() == 0) continue;
      if (t.is_contiguous()) {
        write_all(t.raw(), t.nbytes());
      } else {
        Tensor c = t.contiguous();
        write_all(c.raw(), c.nbytes());
      }
    }
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::fsync(fd) != 0) fail("flushing");
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    GRAFT_FAIL("free disk space or choose another output directory", "closing '{}' failed: {}", path, std::strerror(e));
  }
  ::chmod(tmp.c_str(), 0644);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    GRAFT_FAIL("", "renaming the temporary file onto '{}' failed: {}", path, std::strerror(e));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace graft::io
