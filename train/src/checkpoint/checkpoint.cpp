// HDF5 training checkpoints (layout in graft/train/checkpoint.hpp).
#include "graft/train/checkpoint.hpp"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "graft/error.hpp"
#include "graft/mmap_file.hpp"

namespace graft::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFixLoad = "pass a checkpoint file graft wrote (checkpoint-<step>.h5); if it is damaged, resume "
                                 "from an earlier checkpoint";
constexpr const char* kFixSave = "check that the directory exists, is writable and has free space";

// HDF5 prints its error stack to stderr by default; graft turns the stack into the Error message instead.
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost messages of the current HDF5 error stack ("" when empty).
std::string hdf5_error() {
  std::vector<std::string> msgs;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* e, void* p) -> herr_t {
        auto* v = static_cast<std::vector<std::string>*>(p);
        if (e->desc && *e->desc && v->size() < 3) v->push_back(e->desc);
        return 0;
      },
      &msgs);
  H5Eclear2(H5E_DEFAULT);
  std::string s;
  for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) s += (s.empty() ? "" : ": ") + *it;
  return s.empty() ? "HDF5 call failed" : s;
}

// An HDF5 identifier closed on scope exit.
class Id {
 public:
  Id() = default;
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Id& operator=(Id&& o) noexcept {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
    return *this;
  }
  ~Id() { reset(); }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool ok() const { return id_ >= 0; }
  // Closes now; returns false on failure.
  bool close() {
    if (id_ < 0) return true;
    const herr_t s = close_(id_);
    id_ = H5I_INVALID_HID;
    return s >= 0;
  }
  void reset() {
    if (id_ >= 0) close_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

struct H5Types {
  hid_t mem, file;
};
std::optional<H5Types> h5_types(DType t) {
  switch (t) {
    case DType::F64: return H5Types{H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE};
    case DType::F32: return H5Types{H5T_NATIVE_FLOAT, H5T_IEEE_F32LE};
    case DType::F16:
    case DType::BF16: return H5Types{H5T_NATIVE_UINT16, H5T_STD_U16LE};  // raw bits; the "dtype" attribute says which
    case DType::I64: return H5Types{H5T_NATIVE_INT64, H5T_STD_I64LE};
    case DType::I32: return H5Types{H5T_NATIVE_INT32, H5T_STD_I32LE};
    case DType::I16: return H5Types{H5T_NATIVE_INT16, H5T_STD_I16LE};
    case DType::I8: return H5Types{H5T_NATIVE_INT8, H5T_STD_I8LE};
    case DType::U8:
    case DType::Bool: return H5Types{H5T_NATIVE_UINT8, H5T_STD_U8LE};
    default: return std::nullopt;
  }
}

// ---- writing ----

struct Writer {
  std::string tmp;  // the checkpoint path (named in errors)

  void check(bool ok, const std::string& what) const {
    if (!ok) GRAFT_FAIL(kFixSave, "writing checkpoint '{}': {}: {}", tmp, what, hdf5_error());
  }

  Id string_type(size_t n) const {
    Id t(H5Tcopy(H5T_C_S1), H5Tclose);
    check(t.ok(), "string type");
    check(H5Tset_size(t, std::max<size_t>(n, 1)) >= 0 && H5Tset_strpad(t, H5T_STR_NULLPAD) >= 0, "string type");
    return t;
  }
  void attr_string(hid_t obj, const std::string& name, const std::string& v) const {
    Id type = string_type(v.size());
    Id space(v.empty() ? H5Screate(H5S_NULL) : H5Screate(H5S_SCALAR), H5Sclose);
    check(space.ok(), "dataspace for attribute '" + name + "'");
    Id a(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    check(a.ok(), "creating attribute '" + name + "'");
    if (!v.empty()) check(H5Awrite(a, type, v.data()) >= 0, "writing attribute '" + name + "'");
  }
  // A string as a scalar dataset (fixed-length, NUL-padded; "" = null dataspace): unlike attributes,
  // datasets have no 64 KB limit in the oldest file format.
  void dataset_string(hid_t group, const std::string& name, const std::string& v) const {
    Id type = string_type(v.size());
    Id space(v.empty() ? H5Screate(H5S_NULL) : H5Screate(H5S_SCALAR), H5Sclose);
    check(space.ok(), "dataspace for string '" + name + "'");
    Id d(H5Dcreate2(group, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    check(d.ok(), "creating string '" + name + "'");
    if (!v.empty()) check(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, "writing string '" + name + "'");
  }
  template <class T>
  void attr_scalar(hid_t obj, const std::string& name, hid_t file_type, hid_t mem_type, T v) const {
    Id space(H5Screate(H5S_SCALAR), H5Sclose);
    Id a(H5Acreate2(obj, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    check(a.ok(), "creating attribute '" + name + "'");
    check(H5Awrite(a, mem_type, &v) >= 0, "writing attribute '" + name + "'");
  }
  Id group(hid_t parent, const char* name) const {
    Id g(H5Gcreate2(parent, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    check(g.ok(), std::string("creating group '") + name + "'");
    return g;
  }

  void tensor(hid_t tensors, hid_t lcpl, const std::string& name, const Tensor& t0) const {
    GRAFT_CHECK_FIX(!name.empty() && name.front() != '/' && name.back() != '/' && name.find("//") == std::string::npos &&
                        name != "." && name.find("/./") == std::string::npos && name.rfind("./", 0) != 0,
                    "use names like 'lora/<key>/A'", "checkpoint tensor name '{}' is not a valid path", name);
    GRAFT_CHECK_FIX(t0.defined() && t0.device().is_cpu(), "copy tensors to the host before saving",
                    "checkpoint tensor '{}' is {} (host tensors only)", name, t0.defined() ? t0.describe() : "undefined");
    auto types = h5_types(t0.dtype());
    GRAFT_CHECK_FIX(types.has_value(), "", "checkpoint tensor '{}' has unsupported dtype {}", name, dtype_name(t0.dtype()));
    const Tensor t = t0.contiguous();
    std::vector<hsize_t> dims;
    for (int i = 0; i < t.ndim(); ++i) dims.push_back(static_cast<hsize_t>(t.size(i)));
    Id space(t.ndim() == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(t.ndim(), dims.data(), nullptr), H5Sclose);
    check(space.ok(), "dataspace of '" + name + "'");
    Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    check(dcpl.ok(), "dataset properties");
    if (t.ndim() > 0 && t.numel() > 0) {
      // Fletcher-32 checksums need chunking: chunks of whole rows, at most ~256 MB each (HDF5's limit is 4 GB).
      std::vector<hsize_t> chunk = dims;
      const hsize_t row_bytes = static_cast<hsize_t>(t.nbytes()) / dims[0];
      const hsize_t max_bytes = hsize_t{256} << 20;
      chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(dims[0], max_bytes / std::max<hsize_t>(row_bytes, 1)));
      GRAFT_CHECK_FIX(chunk[0] * row_bytes < (hsize_t{1} << 32), "split the tensor",
                      "checkpoint tensor '{}' {}: one row is too large for an HDF5 chunk", name, t.describe());
      check(H5Pset_chunk(dcpl, t.ndim(), chunk.data()) >= 0 && H5Pset_fletcher32(dcpl) >= 0, "chunking of '" + name + "'");
    }
    Id ds(H5Dcreate2(tensors, name.c_str(), types->file, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose);
    check(ds.ok(), "creating dataset '" + name + "' (a name cannot be both a tensor and a group)");
    if (t.numel() > 0) check(H5Dwrite(ds, types->mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw()) >= 0, "writing '" + name + "'");
    attr_string(ds, "dtype", std::string(dtype_name(t0.dtype())));
  }

  // Builds the whole file in memory (HDF5 core driver, no backing store) and returns its bytes. HDF5
  // itself never writes to disk: a full disk cannot leave a half-closed HDF5 file behind.
  std::vector<uint8_t> build(const Checkpoint& ck) const {
    Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    check(fapl.ok() && H5Pset_libver_bounds(fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18) >= 0 &&
              H5Pset_fapl_core(fapl, size_t{16} << 20, /*backing_store=*/0) >= 0,
          "file access properties");
    Id f(H5Fcreate((tmp + ".image").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);
    check(f.ok(), "creating the file image");
    {
      Id root(H5Gopen2(f, "/", H5P_DEFAULT), H5Gclose);
      check(root.ok(), "opening /");
      attr_string(root, "format", kCheckpointFormat);
      attr_scalar<int64_t>(root, "format_version", H5T_STD_I64LE, H5T_NATIVE_INT64, kCheckpointFormatVersion);
      attr_scalar<int64_t>(root, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, ck.step);
      Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
      check(lcpl.ok() && H5Pset_create_intermediate_group(lcpl, 1) >= 0, "link properties");
      Id tensors = group(f, "tensors");
      for (const auto& [name, t] : ck.tensors) tensor(tensors, lcpl, name, t);
      Id strings = group(f, "strings"), ints = group(f, "ints"), reals = group(f, "reals");
      auto key_ok = [](const std::string& k, const char* kind) {
        GRAFT_CHECK_FIX(!k.empty() && k != "." && k.find('/') == std::string::npos, "use a non-empty name without '/'",
                        "checkpoint {} key '{}' is not a valid name", kind, k);
      };
      for (const auto& [k, v] : ck.strings) key_ok(k, "string"), dataset_string(strings, k, v);
      for (const auto& [k, v] : ck.ints) key_ok(k, "int"), attr_scalar<int64_t>(ints, k, H5T_STD_I64LE, H5T_NATIVE_INT64, v);
      for (const auto& [k, v] : ck.reals) key_ok(k, "real"), attr_scalar<double>(reals, k, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v);
      // Objects close here, before the file image is taken.
    }
    check(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "flushing");
    const ssize_t n = H5Fget_file_image(f, nullptr, 0);
    check(n > 0, "sizing the file image");
    std::vector<uint8_t> image(static_cast<size_t>(n));
    check(H5Fget_file_image(f, image.data(), image.size()) == n, "copying the file image");
    check(f.close(), "closing the file image");
    return image;
  }
};

// ---- reading ----

struct Reader {
  std::string path;

  [[noreturn]] void fail(const std::string& what) const {
    GRAFT_FAIL(kFixLoad, "checkpoint '{}' is corrupt or not a graft checkpoint: {}", path, what);
  }
  void check(bool ok, const std::string& what) const {
    if (!ok) fail(what + ": " + hdf5_error());
  }

  std::string attr_string(hid_t a, const std::string& name) const { return read_string(a, name, false); }
  std::string read_string(hid_t a, const std::string& name, bool dataset) const {
    Id type(dataset ? H5Dget_type(a) : H5Aget_type(a), H5Tclose);
    Id space(dataset ? H5Dget_space(a) : H5Aget_space(a), H5Sclose);
    check(type.ok() && space.ok(), "attribute '" + name + "'");
    if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) > 0)
      fail(fmt::format("attribute '{}' is not a fixed-length string", name));
    const H5S_class_t sc = H5Sget_simple_extent_type(space);
    if (sc == H5S_NULL) return {};
    if (sc != H5S_SCALAR) fail(fmt::format("attribute '{}' is not a scalar string", name));
    const size_t n = H5Tget_size(type);
    std::string s(n, '\0');
    Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    check(mem.ok() && H5Tset_size(mem, n) >= 0 && H5Tset_strpad(mem, H5T_STR_NULLPAD) >= 0, "string type");
    check((dataset ? H5Dread(a, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.data()) : H5Aread(a, mem, s.data())) >= 0,
          "reading '" + name + "'");
    return s;
  }
  template <class T>
  T attr_scalar(hid_t a, const std::string& name, H5T_class_t cls, hid_t mem_type) const {
    Id type(H5Aget_type(a), H5Tclose);
    Id space(H5Aget_space(a), H5Sclose);
    check(type.ok() && space.ok(), "attribute '" + name + "'");
    if (H5Tget_class(type) != cls || H5Tget_size(type) != sizeof(T) ||
        H5Sget_simple_extent_type(space) != H5S_SCALAR)
      fail(fmt::format("attribute '{}' has the wrong type (expected a scalar {})", name,
                       cls == H5T_INTEGER ? "int64" : "float64"));
    T v{};
    check(H5Aread(a, mem_type, &v) >= 0, "reading attribute '" + name + "'");
    return v;
  }
  Id open_attr(hid_t obj, const std::string& name) const {
    if (H5Aexists(obj, name.c_str()) <= 0) fail(fmt::format("attribute '{}' is missing", name));
    Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
    check(a.ok(), "opening attribute '" + name + "'");
    return a;
  }
  Id open_group(hid_t f, const char* name) const {
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) fail(fmt::format("group '/{}' is missing", name));
    Id g(H5Gopen2(f, name, H5P_DEFAULT), H5Gclose);
    check(g.ok(), std::string("opening group '/") + name + "'");
    return g;
  }
  std::vector<std::string> attr_names(hid_t obj) const {
    std::vector<std::string> names;
    hsize_t idx = 0;
    const herr_t s = H5Aiterate2(
        obj, H5_INDEX_NAME, H5_ITER_INC, &idx,
        [](hid_t, const char* n, const H5A_info_t*, void* p) -> herr_t {
          static_cast<std::vector<std::string>*>(p)->push_back(n);
          return 0;
        },
        &names);
    check(s >= 0, "listing attributes");
    return names;
  }

  Tensor dataset(hid_t tensors, const std::string& name) const {
    Id ds(H5Dopen2(tensors, name.c_str(), H5P_DEFAULT), H5Dclose);
    check(ds.ok(), "opening tensor '" + name + "'");
    Id a = open_attr(ds, "dtype");
    const std::string dn = attr_string(a, "dtype of " + name);
    auto dt = dtype_from_name(dn);
    if (!dt || !h5_types(*dt)) fail(fmt::format("tensor '{}' has unsupported dtype '{}'", name, dn));
    Id ftype(H5Dget_type(ds), H5Tclose);
    check(ftype.ok(), "type of '" + name + "'");
    const H5T_class_t cls = H5Tget_class(ftype);
    const bool want_float = *dt == DType::F32 || *dt == DType::F64;
    if ((want_float ? cls != H5T_FLOAT : cls != H5T_INTEGER) || H5Tget_size(ftype) != dtype_size(*dt))
      fail(fmt::format("tensor '{}' is stored with a type that does not match its dtype {}", name, dn));
    Id space(H5Dget_space(ds), H5Sclose);
    check(space.ok(), "dataspace of '" + name + "'");
    const int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 0 || nd > kMaxDims) fail(fmt::format("tensor '{}' has {} dimensions", name, nd));
    std::vector<hsize_t> dims(static_cast<size_t>(nd));
    if (nd > 0) check(H5Sget_simple_extent_dims(space, dims.data(), nullptr) == nd, "dims of '" + name + "'");
    Dims shape;
    for (hsize_t d : dims) {
      if (d > (hsize_t{1} << 40)) fail(fmt::format("tensor '{}' has an implausible dimension {}", name, d));
      shape.push_back(static_cast<int64_t>(d));
    }
    Tensor t = Tensor::empty(shape, *dt);
    if (t.numel() > 0)
      check(H5Dread(ds, h5_types(*dt)->mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw()) >= 0,
            "reading tensor '" + name + "' (checksum or I/O error)");
    return t;
  }

  Checkpoint read() const {
    Checkpoint ck;
    const htri_t is = H5Fis_hdf5(path.c_str());
    if (is <= 0) fail("not an HDF5 file (truncated or overwritten?)");
    Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    check(f.ok(), "cannot open");
    {
      Id root(H5Gopen2(f, "/", H5P_DEFAULT), H5Gclose);
      check(root.ok(), "opening /");
      const std::string fmt_name = attr_string(open_attr(root, "format"), "format");
      if (fmt_name != kCheckpointFormat) fail(fmt::format("format attribute is '{}', expected '{}'", fmt_name, kCheckpointFormat));
      const auto ver = attr_scalar<int64_t>(open_attr(root, "format_version"), "format_version", H5T_INTEGER, H5T_NATIVE_INT64);
      if (ver < 1 || ver > kCheckpointFormatVersion)
        GRAFT_FAIL("update graft to read this checkpoint", "checkpoint '{}' has format_version {}, this graft reads 1..{}",
                   path, ver, kCheckpointFormatVersion);
      ck.step = attr_scalar<int64_t>(open_attr(root, "step"), "step", H5T_INTEGER, H5T_NATIVE_INT64);
    }
    {
      Id tensors = open_group(f, "tensors");
      struct Visit {
        std::vector<std::string> names;
        bool bad = false;
      } v;
      const herr_t s = H5Lvisit(
          tensors, H5_INDEX_NAME, H5_ITER_INC,
          [](hid_t g, const char* n, const H5L_info_t* info, void* p) -> herr_t {
            auto* vv = static_cast<Visit*>(p);
            if (info->type != H5L_TYPE_HARD) {
              vv->bad = true;
              return 0;
            }
            const hid_t o = H5Oopen(g, n, H5P_DEFAULT);
            if (o < 0) return -1;
            if (H5Iget_type(o) == H5I_DATASET) vv->names.push_back(n);
            H5Oclose(o);
            return 0;
          },
          &v);
      check(s >= 0, "listing /tensors");
      if (v.bad) fail("/tensors holds a soft or external link");
      for (const auto& n : v.names) ck.tensors.emplace(n, dataset(tensors, n));
    }
    {
      Id g = open_group(f, "strings");
      std::vector<std::string> names;
      hsize_t idx = 0;
      check(H5Literate(
                g, H5_INDEX_NAME, H5_ITER_INC, &idx,
                [](hid_t, const char* n, const H5L_info_t*, void* p) -> herr_t {
                  static_cast<std::vector<std::string>*>(p)->push_back(n);
                  return 0;
                },
                &names) >= 0,
            "listing /strings");
      for (const auto& n : names) {
        Id d(H5Dopen2(g, n.c_str(), H5P_DEFAULT), H5Dclose);
        check(d.ok(), "opening string '" + n + "'");
        ck.strings[n] = read_string(d, "strings/" + n, true);
      }
    }
    {
      Id g = open_group(f, "ints");
      for (const auto& n : attr_names(g))
        ck.ints[n] = attr_scalar<int64_t>(open_attr(g, n), "ints/" + n, H5T_INTEGER, H5T_NATIVE_INT64);
    }
    {
      Id g = open_group(f, "reals");
      for (const auto& n : attr_names(g))
        ck.reals[n] = attr_scalar<double>(open_attr(g, n), "reals/" + n, H5T_FLOAT, H5T_NATIVE_DOUBLE);
    }
    check(f.close(), "closing");
    return ck;
  }
};

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ck) {
  QuietHdf5 quiet;
  const fs::path p(path);
  GRAFT_CHECK_FIX(!p.filename().empty(), "pass a file path such as out/checkpoint-100.h5", "checkpoint path '{}' names no file",
                  path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  GRAFT_CHECK_FIX(fs::is_directory(dir, ec), "create the output directory first", "cannot write checkpoint '{}': directory '{}' does not exist",
                  path, dir.string());
  GRAFT_CHECK_FIX(::access(dir.c_str(), W_OK | X_OK) == 0, kFixSave, "cannot write checkpoint '{}': directory '{}' is not writable: {}",
                  path, dir.string(), std::strerror(errno));
  Writer w;
  w.tmp = path;
  const std::vector<uint8_t> image = w.build(ck);
  // Temp file in the same directory, fsync, rename, fsync the directory; the temp file is removed on failure.
  try {
    write_file_atomic(path, image.data(), image.size());
  } catch (const graft::Error& e) {
    GRAFT_FAIL(e.fix().empty() ? kFixSave : e.fix(), "cannot write checkpoint '{}' ({} bytes): {}", path, image.size(),
               e.message());
  }
}

Checkpoint load_checkpoint(const std::string& path) {
  QuietHdf5 quiet;
  std::error_code ec;
  GRAFT_CHECK_FIX(fs::exists(path, ec), "pass the path of an existing checkpoint file", "checkpoint '{}' not found", path);
  GRAFT_CHECK_FIX(fs::is_regular_file(path, ec), "pass a checkpoint file, not a directory", "checkpoint '{}' is not a file", path);
  Reader r{path};
  return r.read();
}

std::vector<std::string> remove_stale_checkpoint_temps(const std::string& dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return removed;
  // write_file_atomic's temp names: "." + target name + ".tmp." + 6 mkstemp characters.
  auto is_temp = [](const std::string& n) {
    const size_t at = n.rfind(".h5.tmp.");
    if (n.size() < 2 || n[0] != '.' || at == std::string::npos || at < 2 || n.size() - (at + 8) != 6) return false;
    for (size_t i = at + 8; i < n.size(); ++i)
      if (!std::isalnum(static_cast<unsigned char>(n[i]))) return false;
    return true;
  };
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!is_temp(name) || !it->is_regular_file(ec) || it->is_symlink(ec)) continue;
    if (fs::remove(it->path(), ec)) removed.push_back(it->path().string());
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

}  // namespace graft::train
