#include "graft/quant/nf4.hpp"
#include "graft/huge_pages.hpp"

#include <cmath>

#include "graft/error.hpp"
#include "graft/parallel.hpp"

namespace graft::nf4 {

const std::array<float, 16>& code() {
  static const std::array<float, 16> kCode = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
      0.7229568362236023f, 1.0f};
  return kCode;
}

// The decision tree of bitsandbytes' dQuantizeNF4 (thresholds are the midpoints between codes; a
// value exactly on a threshold goes to the lower code because every comparison is strict `>`).
uint8_t quantize_value(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111 : 0b1110;
      return x > 0.5016634166240692f ? 0b1101 : 0b1100;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011 : 0b1010;
    return x > 0.1202552504837513f ? 0b1001 : 0b1000;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111 : 0b0110;
    return x > -0.23460740596055984f ? 0b0101 : 0b0100;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011 : 0b0010;
  return x > -0.8480964004993439f ? 0b0001 : 0b0000;
}

// bitsandbytes' dQuantize<0>: 7-step binary search from pivot 127, then a midpoint decision
// between the final pivot and the last bracket on the side x lies (ties keep the final pivot).
uint8_t quantize_dynamic(const std::array<float, 256>& map, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f;
  float val = map[127];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = map[static_cast<size_t>(pivot)];
  }
  if (upper_pivot == 255) upper = map[255];
  if (lower_pivot == 0) lower = map[0];
  if (x > val) {
    const float mid = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > mid ? upper_pivot : pivot);
  }
  const float mid = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < mid ? lower_pivot : pivot);
}

size_t QuantizedWeight::bytes() const {
  return packed.size() + absmax.size() * 4 + absmax_q.size() + nested_absmax.size() * 4 + (double_quant ? 4 : 0);
}

QuantizedWeight quantize(std::span<const float> x, const Dims& shape, bool double_quant, int64_t blocksize,
                         DType orig_dtype) {
  GRAFT_CHECK(static_cast<int64_t>(x.size()) == shape.numel(), "nf4::quantize: {} values for shape {}", x.size(),
              shape.str());
  GRAFT_CHECK_FIX(blocksize >= 2 && blocksize % 2 == 0 && blocksize <= 4096, "use blocksize 64 (bitsandbytes default)",
                  "nf4::quantize: unsupported blocksize {}", blocksize);
  QuantizedWeight q;
  q.shape = shape;
  q.orig_dtype = orig_dtype;
  q.blocksize = blocksize;
  q.double_quant = double_quant;
  const int64_t n = shape.numel();
  const int64_t nb = q.num_blocks();
  resize_huge(q.packed, static_cast<size_t>((n + 1) / 2));  // zeros; streamed every token (graft/huge_pages.hpp)
  std::vector<float> absmax(static_cast<size_t>(nb));
#pragma omp parallel for schedule(static) if (graft::parallel_worth(n * 8))
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * blocksize, hi = std::min(n, lo + blocksize);
    float m = -INFINITY;  // bitsandbytes starts from -FLT_MAX and pads with zeros
    for (int64_t i = lo; i < hi; ++i) m = std::fmax(m, std::fabs(x[static_cast<size_t>(i)]));
    if (hi - lo < blocksize) m = std::fmax(m, 0.0f);
    absmax[static_cast<size_t>(b)] = m;
    const float inv = 1.0f / m;
    for (int64_t i = lo; i < lo + blocksize && i < ((n + 1) / 2) * 2; i += 2) {
      const float v0 = x[static_cast<size_t>(i)];
      const float v1 = i + 1 < n ? x[static_cast<size_t>(i + 1)] : 0.0f;
      q.packed[static_cast<size_t>(i / 2)] =
          static_cast<uint8_t>(quantize_value(v0 * inv) << 4 | quantize_value(v1 * inv));
    }
  }
  if (!double_quant) {
    q.absmax = std::move(absmax);
    return q;
  }
  double sum = 0.0;
  for (float a : absmax) sum += a;
  q.nested_offset = nb ? static_cast<float>(sum / static_cast<double>(nb)) : 0.0f;
  const auto& dmap = dynamic_map_signed();
  const int64_t nnb = (nb + q.nested_blocksize - 1) / q.nested_blocksize;
  q.absmax_q.assign(static_cast<size_t>(nb), 0);
  q.nested_absmax.assign(static_cast<size_t>(nnb), 0.0f);
  for (int64_t b = 0; b < nnb; ++b) {
    const int64_t lo = b * q.nested_blocksize, hi = std::min(nb, lo + q.nested_blocksize);
    float m = -INFINITY;
    for (int64_t i = lo; i < hi; ++i) m = std::fmax(m, std::fabs(absmax[static_cast<size_t>(i)] - q.nested_offset));
    if (hi - lo < q.nested_blocksize) m = std::fmax(m, 0.0f);
    q.nested_absmax[static_cast<size_t>(b)] = m;
    const float inv = 1.0f / m;
    for (int64_t i = lo; i < hi; ++i)
      q.absmax_q[static_cast<size_t>(i)] = quantize_dynamic(dmap, (absmax[static_cast<size_t>(i)] - q.nested_offset) * inv);
  }
  return q;
}

QuantizedWeight quantize(const Tensor& w, bool double_quant, int64_t blocksize) {
  GRAFT_CHECK(w.device().is_cpu(), "nf4::quantize: tensor {} must be on the host", w.describe());
  Tensor f = w.dtype() == DType::F32 ? w.contiguous() : w.to(DType::F32);
  DType orig = w.dtype() == DType::F32 || w.dtype() == DType::BF16 || w.dtype() == DType::F16 ? w.dtype() : DType::BF16;
  return quantize(std::span<const float>(f.data<float>(), static_cast<size_t>(f.numel())), w.shape(), double_quant,
                  blocksize, orig);
}

float decode_absmax(float map_value, float nested_absmax, float offset) {
  const float scaled = map_value * nested_absmax;
  return scaled + offset;
}

std::vector<float> block_absmax(const QuantizedWeight& q) {
  const int64_t nb = q.num_blocks();
  if (!q.double_quant) {
    GRAFT_CHECK(static_cast<int64_t>(q.absmax.size()) == nb, "NF4 weight {}: {} absmax values for {} blocks",
                q.shape.str(), q.absmax.size(), nb);
    return q.absmax;
  }
  GRAFT_CHECK(static_cast<int64_t>(q.absmax_q.size()) == nb, "NF4 weight {}: {} absmax codes for {} blocks",
              q.shape.str(), q.absmax_q.size(), nb);
  GRAFT_CHECK(static_cast<int64_t>(q.nested_absmax.size()) == (nb + q.nested_blocksize - 1) / q.nested_blocksize,
              "NF4 weight {}: {} nested absmax values for {} blocks of {}", q.shape.str(), q.nested_absmax.size(), nb,
              q.nested_blocksize);
  const auto& dmap = dynamic_map_signed();
  std::vector<float> out(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) {
    out[static_cast<size_t>(b)] = decode_absmax(dmap[q.absmax_q[static_cast<size_t>(b)]],
                                                q.nested_absmax[static_cast<size_t>(b / q.nested_blocksize)], q.nested_offset);
  }
  return out;
}

void dequantize(const QuantizedWeight& q, std::span<float> out) {
  const int64_t n = q.numel();
  GRAFT_CHECK(static_cast<int64_t>(out.size()) == n, "nf4::dequantize: output has {} values, weight {} has {}",
              out.size(), q.shape.str(), n);
  GRAFT_CHECK(static_cast<int64_t>(q.packed.size()) == (n + 1) / 2, "NF4 weight {}: {} packed bytes, expected {}",
              q.shape.str(), q.packed.size(), (n + 1) / 2);
  const std::vector<float> am = block_absmax(q);
  const auto& c = code();
#pragma omp parallel for schedule(static) if (graft::parallel_worth(n * 4))
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = q.packed[static_cast<size_t>(i / 2)];
    const uint8_t nib = (i & 1) ? (byte & 0x0f) : (byte >> 4);
    out[static_cast<size_t>(i)] = c[nib] * am[static_cast<size_t>(i / q.blocksize)];
  }
}

Tensor dequantize(const QuantizedWeight& q) {
  Tensor t = Tensor::empty(q.shape, DType::F32);
  dequantize(q, std::span<float>(t.data<float>(), static_cast<size_t>(t.numel())));
  return t;
}

}  // namespace graft::nf4
