#include "graft/tensor.hpp"

#include "graft/huge_pages.hpp"

#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

namespace graft {

Dims::Dims(std::initializer_list<int64_t> v) {
  GRAFT_CHECK(v.size() <= kMaxDims, "{} dims exceed the maximum of {}", v.size(), kMaxDims);
  for (int64_t x : v) d_[static_cast<size_t>(n_++)] = x;
}
Dims::Dims(std::span<const int64_t> v) {
  GRAFT_CHECK(v.size() <= kMaxDims, "{} dims exceed the maximum of {}", v.size(), kMaxDims);
  for (int64_t x : v) d_[static_cast<size_t>(n_++)] = x;
}
void Dims::push_back(int64_t v) {
  GRAFT_CHECK(n_ < kMaxDims, "{} dims exceed the maximum of {}", n_ + 1, kMaxDims);
  d_[static_cast<size_t>(n_++)] = v;
}
int64_t Dims::numel() const {
  int64_t p = 1;
  for (int i = 0; i < n_; ++i) p *= d_[static_cast<size_t>(i)];
  return p;
}
bool Dims::operator==(const Dims& o) const {
  if (n_ != o.n_) return false;
  for (int i = 0; i < n_; ++i)
    if (d_[static_cast<size_t>(i)] != o.d_[static_cast<size_t>(i)]) return false;
  return true;
}
std::string Dims::str() const { return fmt::format("[{}]", fmt::join(begin(), end(), ", ")); }

std::string Device::str() const { return kind == DeviceKind::CPU ? "cpu" : fmt::format("cuda:{}", index); }

Dims contiguous_strides(const Dims& shape) {
  Dims s = shape;
  int64_t acc = 1;
  for (int i = shape.size() - 1; i >= 0; --i) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

static void check_shape(const Dims& shape) {
  for (int64_t d : shape) GRAFT_CHECK(d >= 0, "negative dimension in shape {}", shape.str());
}

Tensor Tensor::empty(const Dims& shape, DType dtype) {
  check_shape(shape);
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  // Large buffers (weights, KV caches) start on a 2 MiB boundary and are advised for huge pages before any touch.
  const bool huge = bytes >= 2 * kHugePageBytes;
  const size_t align = huge ? kHugePageBytes : 64;
  size_t alloc = (bytes + align - 1) / align * align;
  void* p = alloc ? std::aligned_alloc(align, alloc) : nullptr;
  if (huge && p) advise_huge_pages(p, alloc);
  GRAFT_CHECK_FIX(alloc == 0 || p, "free host memory or use a smaller model", "out of host memory allocating {} bytes for {}{}",
                  bytes, dtype_name(dtype), shape.str());
  Tensor t;
  t.storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  t.data_ = p;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(const Dims& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.nbytes()) std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::from_f32(const Dims& shape, std::span<const float> values) {
  GRAFT_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "{} values given for shape {} ({} elements)",
              values.size(), shape.str(), shape.numel());
  Tensor t = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(t.data_, values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::wrap(void* data, const Dims& shape, DType dtype, Device device, std::shared_ptr<void> keepalive) {
  check_shape(shape);
  Tensor t;
  t.storage_ = std::move(keepalive);
  t.data_ = data;
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.device_ = device;
  return t;
}

static int norm_dim(int dim, int ndim) {
  int d = dim < 0 ? dim + ndim : dim;
  GRAFT_CHECK(d >= 0 && d < ndim, "dimension {} out of range for a {}-d tensor", dim, ndim);
  return d;
}

int64_t Tensor::size(int dim) const { return shape_[norm_dim(dim, ndim())]; }
int64_t Tensor::stride(int dim) const { return strides_[norm_dim(dim, ndim())]; }

bool Tensor::is_contiguous() const {
  int64_t expect = 1;
  for (int i = ndim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != expect) return false;
    expect *= shape_[i];
  }
  return true;
}

uint16_t* Tensor::data_u16() const {
  GRAFT_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16, "tensor {} accessed as 16-bit float", describe());
  return static_cast<uint16_t*>(data_);
}

Tensor Tensor::reshape(const Dims& shape) const {
  GRAFT_CHECK(is_contiguous(), "reshape of non-contiguous tensor {}: call contiguous() first", describe());
  Dims s = shape;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      GRAFT_CHECK(infer < 0, "reshape to {}: only one dimension may be -1", shape.str());
      infer = i;
    } else {
      GRAFT_CHECK(s[i] >= 0, "reshape to {}: negative dimension", shape.str());
      known *= s[i];
    }
  }
  if (infer >= 0) {
    GRAFT_CHECK(known != 0 && numel() % known == 0, "cannot reshape {} to {}", describe(), shape.str());
    s[infer] = numel() / known;
  }
  GRAFT_CHECK(s.numel() == numel(), "cannot reshape {} ({} elements) to {} ({} elements)", describe(), numel(),
              s.str(), s.numel());
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int dim, int64_t start, int64_t end) const {
  int d = norm_dim(dim, ndim());
  GRAFT_CHECK(0 <= start && start <= end && end <= shape_[d], "slice [{}, {}) out of range for dim {} of {}", start,
              end, dim, describe());
  Tensor t = *this;
  t.data_ = static_cast<char*>(data_) + start * strides_[d] * static_cast<int64_t>(dtype_size(dtype_));
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int dim, int64_t index) const {
  int d = norm_dim(dim, ndim());
  GRAFT_CHECK(0 <= index && index < shape_[d], "index {} out of range for dim {} of {}", index, dim, describe());
  Tensor t;
  t.storage_ = storage_;
  t.dtype_ = dtype_;
  t.device_ = device_;
  t.data_ = static_cast<char*>(data_) + index * strides_[d] * static_cast<int64_t>(dtype_size(dtype_));
  for (int i = 0; i < ndim(); ++i)
    if (i != d) {
      t.shape_.push_back(shape_[i]);
      t.strides_.push_back(strides_[i]);
    }
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  int a = norm_dim(d0, ndim()), b = norm_dim(d1, ndim());
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::contiguous() const {
  GRAFT_CHECK(device_.is_cpu(), "contiguous() of a {} tensor: copy it to the host first", device_.str());
  if (is_contiguous()) return *this;
  Tensor out = empty(shape_, dtype_);
  const size_t es = dtype_size(dtype_);
  const int nd = ndim();
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  char* dst = static_cast<char*>(out.data_);
  const char* src = static_cast<const char*>(data_);
  for (int64_t n = 0; n < numel(); ++n) {
    int64_t off = 0;
    for (int i = 0; i < nd; ++i) off += idx[static_cast<size_t>(i)] * strides_[i];
    std::memcpy(dst + n * static_cast<int64_t>(es), src + off * static_cast<int64_t>(es), es);
    for (int i = nd - 1; i >= 0; --i) {
      if (++idx[static_cast<size_t>(i)] < shape_[i]) break;
      idx[static_cast<size_t>(i)] = 0;
    }
  }
  return out;
}

Tensor Tensor::clone() const {
  Tensor c = contiguous();
  if (c.data_ != data_) return c;
  Tensor out = empty(shape_, dtype_);
  if (nbytes()) std::memcpy(out.data_, data_, nbytes());
  return out;
}

Tensor Tensor::to(DType dtype) const {
  Tensor src = contiguous();
  if (dtype == dtype_) return src.data_ == data_ ? clone() : src;
  Tensor out = empty(shape_, dtype);
  const size_t n = static_cast<size_t>(numel());
  if (dtype == DType::F32) {
    convert_to_f32(dtype_, src.data_, static_cast<float*>(out.data_), n);
  } else {
    std::vector<float> tmp(n);
    convert_to_f32(dtype_, src.data_, tmp.data(), n);
    convert_from_f32(dtype, tmp.data(), out.data_, n);
  }
  return out;
}

std::string Tensor::describe() const {
  return fmt::format("{}{} {}{}", dtype_name(dtype_), shape_.str(), device_.str(),
                     is_contiguous() ? "" : " strided");
}

}  // namespace graft
