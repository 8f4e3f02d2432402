// Tensor views: a typed, strided window onto storage that lives on the host (owned or mmapped)
// or on a device. A Tensor is cheap to copy (it shares its storage); copying data is explicit.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "graft/dtype.hpp"
#include "graft/error.hpp"

namespace graft {

inline constexpr int kMaxDims = 8;

// Shape or strides: up to kMaxDims int64 values.
class Dims {
 public:
  Dims() = default;
  Dims(std::initializer_list<int64_t> v);
  explicit Dims(std::span<const int64_t> v);
  int size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t operator[](int i) const { return d_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return d_[static_cast<size_t>(i)]; }
  void push_back(int64_t v);
  const int64_t* begin() const { return d_.data(); }
  const int64_t* end() const { return d_.data() + n_; }
  int64_t numel() const;  // product (1 for a scalar)
  bool operator==(const Dims& o) const;
  std::string str() const;  // "[2, 3, 4]"

 private:
  std::array<int64_t, kMaxDims> d_{};
  int n_ = 0;
};

enum class DeviceKind : uint8_t { CPU, CUDA };
struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  bool is_cpu() const { return kind == DeviceKind::CPU; }
  bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:0"
};

// Maps C++ element types to DType for checked typed access.
template <class T> struct dtype_of;
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int16_t> { static constexpr DType value = DType::I16; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::I8; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };

class Tensor {
 public:
  Tensor() = default;

  // New contiguous host tensor, 64-byte aligned, uninitialised / zero-filled.
  static Tensor empty(const Dims& shape, DType dtype);
  static Tensor zeros(const Dims& shape, DType dtype);
  // Contiguous host f32 tensor holding `values` (size must equal shape.numel()).
  static Tensor from_f32(const Dims& shape, std::span<const float> values);
  // Wraps memory owned elsewhere; `keepalive` holds it alive (may be null for borrowed memory
  // that the caller guarantees outlives every view).
  static Tensor wrap(void* data, const Dims& shape, DType dtype, Device device = {},
                     std::shared_ptr<void> keepalive = nullptr);

  bool defined() const { return data_ != nullptr || shape_.numel() == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Dims& shape() const { return shape_; }
  const Dims& strides() const { return strides_; }  // in elements
  int ndim() const { return shape_.size(); }
  int64_t size(int dim) const;    // negative dims count from the end
  int64_t stride(int dim) const;
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const { return data_; }
  template <class T> T* data() const {
    GRAFT_CHECK(dtype_of<std::remove_const_t<T>>::value == dtype_, "tensor {} accessed as {}", describe(),
                dtype_name(dtype_of<std::remove_const_t<T>>::value));
    return static_cast<T*>(data_);
  }
  // Raw 16-bit access for bf16/f16 storage.
  uint16_t* data_u16() const;

  // Views (share storage).
  Tensor reshape(const Dims& shape) const;           // contiguous only; one dim may be -1
  Tensor slice(int dim, int64_t start, int64_t end) const;  // [start, end) along dim
  Tensor select(int dim, int64_t index) const;        // drops dim
  Tensor transpose(int d0, int d1) const;

  // Copies (host only).
  Tensor contiguous() const;   // same dtype, contiguous
  Tensor to(DType dtype) const;  // converted via f32 for float types; contiguous result
  Tensor clone() const;

  // "f32[2, 3] cpu" (plus " strided" when not contiguous)
  std::string describe() const;
  const std::shared_ptr<void>& storage() const { return storage_; }

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Dims shape_, strides_;
  Device device_;
};

Dims contiguous_strides(const Dims& shape);

}  // namespace graft
