// HDF5 cache of tokenized datasets: <cache_dir>/<key>.h5 with datasets ids (int32, concatenated),
// labels (int32), offsets (int64, n+1) and attributes key (string), version, checksum (uint64).
// Written to a temporary name, fsynced, renamed. A file that fails any check is rebuilt.
#include <hdf5.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "data_internal.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace graft::train {

namespace {

constexpr int64_t kCacheVersion = 1;

uint64_t checksum(const std::vector<int32_t>& ids, const std::vector<int32_t>& labels, const std::vector<int64_t>& offs) {
  uint64_t h = data_detail::fnv1a(ids.data(), ids.size() * sizeof(int32_t));
  h = data_detail::fnv1a(labels.data(), labels.size() * sizeof(int32_t), h);
  return data_detail::fnv1a(offs.data(), offs.size() * sizeof(int64_t), h);
}

// RAII for hid_t handles.
struct H {
  hid_t id = H5I_INVALID_HID;
  herr_t (*close)(hid_t) = nullptr;
  H(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~H() {
    if (id >= 0 && close) close(id);
  }
  H(const H&) = delete;
  H& operator=(const H&) = delete;
  bool ok() const { return id >= 0; }
};

// Silences HDF5's automatic error printing while alive.
struct QuietHdf5 {
  H5E_auto2_t fn = nullptr;
  void* data = nullptr;
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &fn, &data);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, fn, data); }
};

template <class T>
bool write_1d(hid_t file, const char* name, hid_t type, const std::vector<T>& v) {
  hsize_t dims[1] = {static_cast<hsize_t>(v.size())};
  H space(H5Screate_simple(1, dims, nullptr), H5Sclose);
  if (!space.ok()) return false;
  H ds(H5Dcreate2(file, name, type, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) return false;
  return v.empty() || H5Dwrite(ds.id, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0;
}

template <class T>
bool read_1d(hid_t file, const char* name, hid_t type, std::vector<T>& v) {
  H ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  if (!ds.ok()) return false;
  H space(H5Dget_space(ds.id), H5Sclose);
  if (!space.ok() || H5Sget_simple_extent_ndims(space.id) != 1) return false;
  hsize_t dims[1] = {0};
  if (H5Sget_simple_extent_dims(space.id, dims, nullptr) < 0) return false;
  v.resize(static_cast<size_t>(dims[0]));
  return v.empty() || H5Dread(ds.id, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0;
}

template <class T>
bool write_attr(hid_t obj, const char* name, hid_t type, const T& value) {
  H space(H5Screate(H5S_SCALAR), H5Sclose);
  H a(H5Acreate2(obj, name, type, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return a.ok() && H5Awrite(a.id, type, &value) >= 0;
}

template <class T>
bool read_attr(hid_t obj, const char* name, hid_t type, T& value) {
  H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  return a.ok() && H5Aread(a.id, type, &value) >= 0;
}

bool write_string_attr(hid_t obj, const char* name, const std::string& s) {
  H type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, std::max<size_t>(1, s.size()));
  H space(H5Screate(H5S_SCALAR), H5Sclose);
  H a(H5Acreate2(obj, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  std::string buf = s.empty() ? std::string(1, '\0') : s;
  return a.ok() && H5Awrite(a.id, type.id, buf.data()) >= 0;
}

bool read_string_attr(hid_t obj, const char* name, std::string& s) {
  H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  if (!a.ok()) return false;
  H type(H5Aget_type(a.id), H5Tclose);
  if (!type.ok() || H5Tget_class(type.id) != H5T_STRING || H5Tis_variable_str(type.id) > 0) return false;
  size_t n = H5Tget_size(type.id);
  std::string buf(n, '\0');
  if (H5Aread(a.id, type.id, buf.data()) < 0) return false;
  s = buf.substr(0, buf.find('\0'));
  return true;
}

void fsync_path(const std::string& path, bool dir) {
  int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

void write_sample_cache(const std::string& path, const std::string& key, const std::vector<Sample>& samples) {
  std::vector<int32_t> ids, labels;
  std::vector<int64_t> offs{0};
  for (const auto& s : samples) {
    ids.insert(ids.end(), s.ids.begin(), s.ids.end());
    labels.insert(labels.end(), s.labels.begin(), s.labels.end());
    offs.push_back(static_cast<int64_t>(ids.size()));
  }
  std::filesystem::path p(path);
  std::error_code ec;
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  QuietHdf5 quiet;
  bool ok = false;
  {
    H f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    GRAFT_CHECK_FIX(f.ok(), "check that the cache directory is writable (or change dataset_prepared_path)",
                    "cannot create dataset cache file {}", tmp);
    int64_t version = kCacheVersion;
    uint64_t sum = checksum(ids, labels, offs);
    ok = write_1d(f.id, "ids", H5T_NATIVE_INT32, ids) && write_1d(f.id, "labels", H5T_NATIVE_INT32, labels) &&
         write_1d(f.id, "offsets", H5T_NATIVE_INT64, offs) && write_string_attr(f.id, "key", key) &&
         write_attr(f.id, "version", H5T_NATIVE_INT64, version) && write_attr(f.id, "checksum", H5T_NATIVE_UINT64, sum);
    if (ok) ok = H5Fflush(f.id, H5F_SCOPE_GLOBAL) >= 0;
  }
  if (!ok) {
    std::filesystem::remove(tmp, ec);
    GRAFT_FAIL("check free disk space in the cache directory", "cannot write dataset cache file {}", tmp);
  }
  fsync_path(tmp, false);
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    GRAFT_FAIL("check that the cache directory is writable", "cannot rename {} to {}", tmp, path);
  }
  if (p.has_parent_path()) fsync_path(p.parent_path().string(), true);
}

bool read_sample_cache(const std::string& path, const std::string& key, std::vector<Sample>& samples) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  QuietHdf5 quiet;
  if (H5Fis_hdf5(path.c_str()) <= 0) return false;
  H f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!f.ok()) return false;
  std::string stored_key;
  int64_t version = 0;
  uint64_t sum = 0;
  if (!read_string_attr(f.id, "key", stored_key) || stored_key != key) return false;
  if (!read_attr(f.id, "version", H5T_NATIVE_INT64, version) || version != kCacheVersion) return false;
  if (!read_attr(f.id, "checksum", H5T_NATIVE_UINT64, sum)) return false;
  std::vector<int32_t> ids, labels;
  std::vector<int64_t> offs;
  if (!read_1d(f.id, "ids", H5T_NATIVE_INT32, ids) || !read_1d(f.id, "labels", H5T_NATIVE_INT32, labels) ||
      !read_1d(f.id, "offsets", H5T_NATIVE_INT64, offs))
    return false;
  if (ids.size() != labels.size() || offs.empty() || offs.front() != 0 ||
      offs.back() != static_cast<int64_t>(ids.size()) || checksum(ids, labels, offs) != sum)
    return false;
  for (size_t i = 1; i < offs.size(); ++i)
    if (offs[i] < offs[i - 1]) return false;
  std::vector<Sample> out(offs.size() - 1);
  for (size_t i = 0; i + 1 < offs.size(); ++i) {
    auto b = static_cast<std::ptrdiff_t>(offs[i]), e = static_cast<std::ptrdiff_t>(offs[i + 1]);
    out[i].ids.assign(ids.begin() + b, ids.begin() + e);
    out[i].labels.assign(labels.begin() + b, labels.begin() + e);
  }
  samples = std::move(out);
  return true;
}

std::string dataset_cache_key(const DatasetSpec& spec, const std::string& tokenizer_json_text,
                              const std::string& template_source, const DataOptions& options) {
  nlohmann::ordered_json j;
  j["v"] = kCacheVersion;
  j["type"] = spec.type;
  j["field_messages"] = spec.field_messages;
  j["message_property_mappings"] = spec.message_property_mappings;
  j["roles"] = spec.roles;
  j["roles_to_train"] = spec.roles_to_train;
  j["train_on_eos"] = spec.train_on_eos;
  j["sequence_len"] = options.sequence_len;
  j["train_on_inputs"] = options.train_on_inputs;
  j["add_eos"] = options.add_eos;
  j["truncation"] = options.truncation;
  j["kwargs"] = options.chat_template_kwargs;
  j["model_ids"] = {options.model_vocab_size, options.model_bos_id, options.model_eos_id};
  const std::string desc = j.dump();
  const std::string file = read_text_file(spec.path);
  auto mix = [&](uint64_t h) {
    for (const std::string* s : std::initializer_list<const std::string*>{&desc, &file, &tokenizer_json_text, &template_source}) {
      uint64_t n = s->size();
      h = data_detail::fnv1a(&n, sizeof n, h);
      h = data_detail::fnv1a(s->data(), s->size(), h);
    }
    return h;
  };
  uint64_t a = mix(0xcbf29ce484222325ull), b = mix(0x84222325cbf29ce4ull ^ 0x9e3779b97f4a7c15ull);
  return fmt::format("{:016x}{:016x}", a, b);
}

std::vector<Sample> load_dataset_cached(const DatasetSpec& spec, const tokenizer::Tokenizer& tok,
                                        const std::string& tokenizer_json_text,
                                        const chat_template::ChatTemplate* tpl, const DataOptions& options,
                                        const std::string& cache_dir, DataStats* stats) {
  GRAFT_CHECK_FIX(std::filesystem::is_regular_file(spec.path), "check the dataset `path`",
                  "dataset file {} does not exist", spec.path);
  std::string key = dataset_cache_key(spec, tokenizer_json_text, effective_template_source(spec, tok, tpl, options), options);
  std::string file = (std::filesystem::path(cache_dir) / (key + ".h5")).string();
  std::vector<Sample> samples;
  std::error_code ec;
  if (read_sample_cache(file, key, samples)) {
    if (stats) {
      *stats = DataStats{};
      stats->samples = static_cast<int64_t>(samples.size());
      for (const auto& s : samples) {
        stats->tokens += static_cast<int64_t>(s.ids.size());
        for (int32_t l : s.labels) stats->trained_tokens += l != kIgnoreIndex;
      }
      stats->cache_hit = true;
      stats->cache_file = file;
    }
    return samples;
  }
  if (std::filesystem::exists(file, ec))
    std::fprintf(stderr, "graft: dataset cache %s is invalid or corrupt; rebuilding it\n", file.c_str());
  DataStats st;
  samples = load_dataset(spec, tok, tpl, options, &st);
  write_sample_cache(file, key, samples);
  st.cache_file = file;
  if (stats) *stats = st;
  return samples;
}

}  // namespace graft::train
