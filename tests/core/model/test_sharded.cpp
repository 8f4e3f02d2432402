// A checkpoint split into shards with model.safetensors.index.json (and stored in bf16) loads to the
// same model as the single-file f32 original rounded to bf16.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "graft/config/model_config.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;
namespace fs = std::filesystem;

TEST(ModelLoad, ShardedBf16CheckpointEqualsInMemoryModel) {
  const fs::path dir = fs::temp_directory_path() / ("graft_sharded_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto cj = model::preset_config("qwen2_moe", "tiny", 300, 1, 2);
  std::ofstream(dir / "config.json") << cj.dump(2);
  auto cfg = config::parse_model_config_text(cj.dump());
  auto ckpt = model::random_checkpoint(cfg, 4);
  io::NamedTensors shard[3];
  nlohmann::json wm = nlohmann::json::object();
  std::vector<std::pair<std::string, Tensor>> rounded;
  for (size_t i = 0; i < ckpt.size(); ++i) {
    Tensor b = ckpt[i].second.to(DType::BF16);
    const std::string file = "model-0000" + std::to_string(i % 3 + 1) + "-of-00003.safetensors";
    shard[i % 3].emplace_back(ckpt[i].first, b);
    wm[ckpt[i].first] = file;
    rounded.emplace_back(ckpt[i].first, b.to(DType::F32));
  }
  for (int s = 0; s < 3; ++s)
    io::save_safetensors((dir / ("model-0000" + std::to_string(s + 1) + "-of-00003.safetensors")).string(), shard[s]);
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump();
  auto a = model::Model::load(dir.string());
  auto b = model::Model::from_tensors(cfg, rounded);
  auto be = cpu::make_backend();
  std::vector<int32_t> ids = {1, 2, 3, 250, 17};
  model::Batch bt;
  bt.ids = ids;
  Tensor la = a.forward(*be, bt), lb = b.forward(*be, bt);
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]);
  fs::remove_all(dir);
}
