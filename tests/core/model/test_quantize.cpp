// `graft quantize` output: bitsandbytes key layout, and loading it gives exactly the model that
// quantize-on-load gives.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "graft/cpu/cpu_backend.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"

using namespace graft;
namespace fs = std::filesystem;

TEST(Quantize, BnbLayoutRoundTripsExactly) {
  const fs::path tmp = fs::temp_directory_path() / ("graft_quant_" + std::to_string(::getpid()));
  const fs::path src = tmp / "src", dst = tmp / "nf4";
  fs::create_directories(src);
  auto cfg_json = model::preset_config("qwen3_moe", "tiny", 300, 1, 2);
  {
    std::ofstream(src / "config.json") << cfg_json.dump(2);
    auto cfg = config::parse_model_config_text(cfg_json.dump());
    io::NamedTensors t;
    for (auto& [n, x] : model::random_checkpoint(cfg, 11)) t.emplace_back(n, x);
    io::save_safetensors((src / "model.safetensors").string(), t);
  }
  auto qc = model::quantize_checkpoint(src.string());
  model::write_bnb_checkpoint(qc, src.string(), dst.string());
  auto st = io::SafetensorsModel::open(dst.string());
  const std::string p = "model.layers.1.mlp.experts.3.down_proj.weight";
  ASSERT_TRUE(st.contains(p));
  EXPECT_EQ(st.info(p).dtype, DType::U8);
  EXPECT_EQ(st.info(p).shape, (Dims{64 * 32 / 2, 1}));
  EXPECT_EQ(st.info(p + ".absmax").dtype, DType::U8);
  EXPECT_EQ(st.info(p + ".quant_map").shape, (Dims{16}));
  EXPECT_EQ(st.info(p + ".nested_quant_map").shape, (Dims{256}));
  Tensor qs = st.tensor(p + ".quant_state.bitsandbytes__nf4");
  auto js = nlohmann::json::parse(std::string(static_cast<const char*>(qs.raw()), qs.nbytes()));
  EXPECT_EQ(js["quant_type"], "nf4");
  EXPECT_EQ(js["blocksize"], 64);
  EXPECT_EQ(js["shape"], (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(js["nested_blocksize"], 256);
  EXPECT_TRUE(st.contains("model.layers.1.mlp.gate.weight"));  // router kept dense
  EXPECT_EQ(st.info("model.layers.1.mlp.gate.weight").dtype, DType::F32);
  auto cfg2 = nlohmann::json::parse(std::ifstream(dst / "config.json"));
  EXPECT_EQ(cfg2["quantization_config"]["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(cfg2["quantization_config"]["bnb_4bit_use_double_quant"], true);

  model::LoadOptions q4;
  q4.load_in_4bit = true;
  auto a = model::Model::load(src.string(), q4);
  auto b = model::Model::load(dst.string());
  auto be = cpu::make_backend();
  std::vector<int32_t> ids = {5, 17, 200, 3, 99, 42, 7};
  model::Batch bt;
  bt.ids = ids;
  Tensor la = a.forward(*be, bt), lb = b.forward(*be, bt);
  for (int64_t i = 0; i < la.numel(); ++i) ASSERT_EQ(la.data<float>()[i], lb.data<float>()[i]) << i;
  EXPECT_THROW(model::write_bnb_checkpoint(qc, src.string(), src.string()), Error);
  fs::remove_all(tmp);
}
