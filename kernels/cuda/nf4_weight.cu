// nf4_weight.cu — device copies of NF4 weights (no kernels).
// Contract: Nf4WeightBuffer(q) uploads q (2-d [n, k]) with cudaMalloc + synchronous cudaMemcpy on
// the current device: packed bytes (allocation padded with zeros to a multiple of 16 bytes so
// 16-byte vector loads of the last chunk stay inside it), absmax as stored (fp32, or u8 codes +
// fp32 nested absmax + offset when double-quantized: decoded on device by the kernels). The
// signed dynamic map lives once per device (nf4_dynamic_map_device()).
#include <mutex>
#include <vector>

#include "graft/cuda/check.hpp"
#include "graft/cuda/nf4_matmul.hpp"

namespace graft::cuda {

const float* nf4_dynamic_map_device() {
  static std::mutex mu;
  static std::vector<float*> maps;  // per device index
  int dev = 0;
  GRAFT_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<int>(maps.size()) <= dev) maps.resize(static_cast<size_t>(dev) + 1, nullptr);
  if (!maps[static_cast<size_t>(dev)]) {
    float* p = nullptr;
    GRAFT_CUDA_CHECK(cudaMalloc(&p, 256 * sizeof(float)));
    GRAFT_CUDA_CHECK(cudaMemcpy(p, nf4::dynamic_map_signed().data(), 256 * sizeof(float), cudaMemcpyHostToDevice));
    maps[static_cast<size_t>(dev)] = p;  // lives for the process
  }
  return maps[static_cast<size_t>(dev)];
}

void Nf4Weight::validate(const char* who) const {
  GRAFT_CHECK(n > 0 && k > 0, "{}: NF4 weight shape [{}, {}] must be positive", who, n, k);
  GRAFT_CHECK(packed != nullptr, "{}: NF4 weight has no packed data (w.packed == nullptr)", who);
  GRAFT_CHECK(blocksize > 0 && blocksize % 32 == 0, "{}: NF4 blocksize {} must be a positive multiple of 32", who,
              blocksize);
  if (double_quant) {
    GRAFT_CHECK(absmax_q != nullptr && nested_absmax != nullptr && dmap != nullptr,
                "{}: double-quantized NF4 weight needs absmax_q, nested_absmax and dmap", who);
    GRAFT_CHECK(nested_blocksize > 0, "{}: nested_blocksize {} must be positive", who, nested_blocksize);
  } else {
    GRAFT_CHECK(absmax != nullptr, "{}: NF4 weight without double quantization needs fp32 absmax", who);
  }
}

Nf4WeightBuffer::Nf4WeightBuffer(const nf4::QuantizedWeight& q) {
  GRAFT_CHECK(q.shape.size() == 2, "Nf4WeightBuffer: weight must be 2-d, got {}", q.shape.str());
  view_.n = q.shape[0];
  view_.k = q.shape[1];
  view_.blocksize = static_cast<int>(q.blocksize);
  view_.nested_blocksize = static_cast<int>(q.nested_blocksize);
  view_.double_quant = q.double_quant;
  view_.nested_offset = q.nested_offset;
  const size_t nb = static_cast<size_t>(q.num_blocks());
  GRAFT_CHECK(q.packed.size() == static_cast<size_t>((q.numel() + 1) / 2), "Nf4WeightBuffer: packed has {} bytes, expected {}",
              q.packed.size(), (q.numel() + 1) / 2);
  try {
    const size_t pb = (q.packed.size() + 15) / 16 * 16;
    GRAFT_CUDA_CHECK(cudaMalloc(&packed_, pb));
    GRAFT_CUDA_CHECK(cudaMemset(packed_, 0, pb));
    GRAFT_CUDA_CHECK(cudaMemcpy(packed_, q.packed.data(), q.packed.size(), cudaMemcpyHostToDevice));
    bytes_ = pb;
    view_.packed = static_cast<const uint8_t*>(packed_);
    if (q.double_quant) {
      GRAFT_CHECK(q.absmax_q.size() == nb, "Nf4WeightBuffer: absmax_q has {} entries, expected {}", q.absmax_q.size(), nb);
      const size_t nn = (nb + static_cast<size_t>(q.nested_blocksize) - 1) / static_cast<size_t>(q.nested_blocksize);
      GRAFT_CHECK(q.nested_absmax.size() == nn, "Nf4WeightBuffer: nested_absmax has {} entries, expected {}",
                  q.nested_absmax.size(), nn);
      GRAFT_CUDA_CHECK(cudaMalloc(&absmax_, nb));
      GRAFT_CUDA_CHECK(cudaMemcpy(absmax_, q.absmax_q.data(), nb, cudaMemcpyHostToDevice));
      GRAFT_CUDA_CHECK(cudaMalloc(&nested_, nn * sizeof(float)));
      GRAFT_CUDA_CHECK(cudaMemcpy(nested_, q.nested_absmax.data(), nn * sizeof(float), cudaMemcpyHostToDevice));
      bytes_ += nb + nn * sizeof(float);
      view_.absmax_q = static_cast<const uint8_t*>(absmax_);
      view_.nested_absmax = static_cast<const float*>(nested_);
      view_.dmap = nf4_dynamic_map_device();
    } else {
      GRAFT_CHECK(q.absmax.size() == nb, "Nf4WeightBuffer: absmax has {} entries, expected {}", q.absmax.size(), nb);
      GRAFT_CUDA_CHECK(cudaMalloc(&absmax_, nb * sizeof(float)));
      GRAFT_CUDA_CHECK(cudaMemcpy(absmax_, q.absmax.data(), nb * sizeof(float), cudaMemcpyHostToDevice));
      bytes_ += nb * sizeof(float);
      view_.absmax = static_cast<const float*>(absmax_);
    }
  } catch (...) {
    release();
    throw;
  }
}

void Nf4WeightBuffer::release() noexcept {
  if (packed_) cudaFree(packed_);
  if (absmax_) cudaFree(absmax_);
  if (nested_) cudaFree(nested_);
  packed_ = absmax_ = nested_ = nullptr;
  view_ = Nf4Weight{};
  bytes_ = 0;
}

Nf4WeightBuffer::~Nf4WeightBuffer() { release(); }

Nf4WeightBuffer::Nf4WeightBuffer(Nf4WeightBuffer&& o) noexcept
    : view_(o.view_), packed_(o.packed_), absmax_(o.absmax_), nested_(o.nested_), bytes_(o.bytes_) {
  o.packed_ = o.absmax_ = o.nested_ = nullptr;
  o.view_ = Nf4Weight{};
  o.bytes_ = 0;
}

Nf4WeightBuffer& Nf4WeightBuffer::operator=(Nf4WeightBuffer&& o) noexcept {
  if (this != &o) {
    release();
    view_ = o.view_;
    packed_ = o.packed_;
    absmax_ = o.absmax_;
    nested_ = o.nested_;
    bytes_ = o.bytes_;
    o.packed_ = o.absmax_ = o.nested_ = nullptr;
    o.view_ = Nf4Weight{};
    o.bytes_ = 0;
  }
  return *this;
}

}  // namespace graft::cuda
