// The training step (train::forward_backward: forward, cross-entropy, hand-written backward) on the CUDA
// backend against the CPU backend: loss and every LoRA gradient (attention, dense MLP, routed experts,
// shared experts), with packed samples, ignored labels and LoRA dropout, for every family. Built twice like
// test_backend_ops: label cuda (skips without a GPU) and label simt.
// Tolerances: the CUDA step keeps bf16 activations (each op's output rounded once, 2^-9) through the
// forward and the backward of a tiny model, fp32 LoRA gradients from bf16 inputs. Measured on SIMT
// (2026-12-06, every family): loss rel 8e-5 .. 8.6e-4, all LoRA gradients together rel 6.9e-3 .. 1.1e-2;
// held to 5e-3 and 3e-2.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "../cuda_common/cuda_test_util.hpp"
#include "../../common/random_lora.hpp"
#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/cuda/cuda_backend.hpp"
#include "graft/cuda/device_info.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/lora_train.hpp"

namespace graft {
namespace {

using namespace testing::cudatest;
using model::ExpertProj;
using model::Module;

#define GRAFT_NEED_GPU() \
  if (!kSimt && cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device: " << cuda::no_device_reason()

// LoRA on every projection and expert; B non-zero so every gradient path carries signal.
train::TrainableAdapter adapter_for(const model::Model& m) { return testing::random_lora(m); }

// ‖a − b‖ / ‖b‖ over every dA and dB of two adapters with the same modules.
double grad_rel(train::TrainableAdapter& a, train::TrainableAdapter& b) {
  double num = 0, den = 0;
  auto acc = [&](const Tensor& x, const Tensor& y) {
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double d = double(x.data<float>()[i]) - y.data<float>()[i];
      num += d * d;
      den += double(y.data<float>()[i]) * y.data<float>()[i];
    }
  };
  for (auto& [k, p] : b.params()) {
    acc(a.params().at(k).da, p.da);
    acc(a.params().at(k).db, p.db);
  }
  for (auto& [k, p] : b.expert_params()) {
    acc(a.expert_params().at(k).da, p.da);
    acc(a.expert_params().at(k).db, p.db);
  }
  return std::sqrt(num / den);
}

class TrainOnDevice : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainOnDevice, LossAndLoraGradientsMatchCpu) {
  GRAFT_NEED_GPU();
  const auto cfg = config::parse_model_config_text(model::preset_config(GetParam(), "tiny", 300, 1, 2).dump(), "tiny");
  const auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 8, 0.2f));
  // Two packed samples; prompt tokens masked with -100.
  const std::vector<int32_t> ids = {5, 77, 140, 9, 250, 33, 1, 60, 61, 62, 299}, pos = {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4},
                             seg = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1},
                             labels = {-100, -100, 9, 250, 33, -100, -100, 61, 62, 299, -100};
  auto cpu_be = cpu::make_backend();
  auto gpu_be = cuda::make_cuda_backend(0);
  train::StepOptions so;
  so.lora_dropout = 0.1;
  so.dropout_seed = 1234;
  so.dropout_draw = 7;
  train::TrainableAdapter a_cpu = adapter_for(m), a_gpu = adapter_for(m);
  so.backend = cpu_be.get();
  const double l_cpu = train::forward_backward(m, ids, labels, a_cpu, pos, seg, so);
  so.backend = gpu_be.get();
  const double l_gpu = train::forward_backward(m, ids, labels, a_gpu, pos, seg, so);
  const double g = grad_rel(a_gpu, a_cpu);
  std::printf("[ CUDA     ] %s: loss %.6f vs cpu %.6f (rel %.2e), LoRA grads rel %.2e\n", GetParam().c_str(), l_gpu, l_cpu,
              std::abs(l_gpu - l_cpu) / l_cpu, g);
  EXPECT_NEAR(l_gpu, l_cpu, 5e-3 * l_cpu);
  EXPECT_LT(g, 3e-2);
}

INSTANTIATE_TEST_SUITE_P(Families, TrainOnDevice,
                         ::testing::Values("llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2",
                                           "deepseek_v3", "llama4"));

}  // namespace
}  // namespace graft
