// PEFT adapter I/O: byte-stable round trips, PEFT's fused-expert packing (rank-major B columns), scale
// rules (rslora, rank/alpha patterns), and clear errors for configs and keys graft does not accept.
#include <gtest/gtest.h>

#include <cstring>

#include <fmt/format.h>

#include "adapter_test_util.hpp"
#include "graft/adapters/combine.hpp"
#include "graft/adapters/merge.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"

using namespace graft;
using namespace graft::testutil;
using adapters::Adapter;
using adapters::PeftConfig;
using model::ExpertProj;
using model::Module;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const graft::Error& e) {
    return e.what();
  }
  return "";
}

void expect_same_adapter(const Adapter& a, const Adapter& b) {
  ASSERT_EQ(a.modules.size(), b.modules.size());
  ASSERT_EQ(a.experts.size(), b.experts.size());
  for (auto& [k, f] : a.modules) {
    const LoraFactors* g = b.find(k.first, k.second);
    ASSERT_NE(g, nullptr);
    EXPECT_TRUE(same_tensor(f.a, g->a));
    EXPECT_TRUE(same_tensor(f.b, g->b));
    EXPECT_FLOAT_EQ(f.scale, g->scale);
  }
  for (auto& [k, f] : a.experts) {
    const LoraFactors* g = b.find_expert(std::get<0>(k), std::get<1>(k), std::get<2>(k));
    ASSERT_NE(g, nullptr);
    EXPECT_TRUE(same_tensor(f.a, g->a));
    EXPECT_TRUE(same_tensor(f.b, g->b));
    EXPECT_FLOAT_EQ(f.scale, g->scale);
  }
}

void expect_same_files(const fs::path& a, const fs::path& b) {
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
    EXPECT_EQ(read_text_file((a / f).string()), read_text_file((b / f).string())) << f;
}

// PEFT-packed fused factors: A [E·r, in] expert-major rows, B [out, E·r] rank-major columns.
struct Packed {
  Tensor a, b;
};
Packed random_packed(int64_t E, int64_t r, int64_t in, int64_t out, std::mt19937& g) {
  return {rnd({E * r, in}, g, 0.2f), rnd({out, E * r}, g, 0.2f)};
}
// Reference delta of expert e (PEFT's get_delta_weight), rows [row0, row0 + rows) of out.
std::vector<double> peft_delta(const Packed& p, int64_t E, int64_t r, int64_t e, int64_t row0, int64_t rows, bool rank_major = true) {
  const int64_t in = p.a.size(1), ER = E * r;
  std::vector<double> d(static_cast<size_t>(rows * in), 0.0);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t k = 0; k < r; ++k) {
        const int64_t col = rank_major ? k * E + e : e * r + k;
        d[static_cast<size_t>(o * in + i)] +=
            double(p.b.data<float>()[(row0 + o) * ER + col]) * p.a.data<float>()[(e * r + k) * in + i];
      }
  return d;
}
std::vector<double> factor_delta(const LoraFactors& f) {
  const int64_t out = f.b.size(0), in = f.a.size(1), r = f.rank();
  std::vector<double> d(static_cast<size_t>(out * in), 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t k = 0; k < r; ++k)
        d[static_cast<size_t>(o * in + i)] += double(f.b.data<float>()[o * r + k]) * f.a.data<float>()[k * in + i];
  return d;
}
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

class Peft : public TmpDir {};

}  // namespace

TEST_F(Peft, GraftWrittenRoundTripIsByteStable) {
  auto cfg = tiny_config();
  Adapter ad = random_adapter(cfg, 4, 8, 1);
  // Patterns: o_proj gets rank 2 and alpha 3.
  ad.config.rank_pattern["o_proj"] = 2;
  ad.config.alpha_pattern["o_proj"] = 3;
  ad.config.base_model_name_or_path = "tiny/qwen3_moe";
  std::mt19937 g(5);
  for (int l = 0; l < cfg.num_hidden_layers; ++l)
    ad.modules[{l, Module::O}] = LoraFactors{rnd({2, 64}, g, 0.1f), rnd({64, 2}, g, 0.1f), 1.5f};
  adapters::save_peft((dir_ / "a").string(), ad, cfg);
  Adapter back = adapters::load_peft((dir_ / "a").string(), cfg);
  expect_same_adapter(ad, back);
  EXPECT_EQ(back.max_rank(), 4);
  EXPECT_GT(back.bytes(), 0u);
  adapters::save_peft((dir_ / "b").string(), back, cfg);
  expect_same_files(dir_ / "a", dir_ / "b");
  // PEFT key names and shapes.
  auto f = io::SafetensorsFile::open((dir_ / "a" / "adapter_model.safetensors").string());
  EXPECT_EQ(f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape, (Dims{4, 64}));
  EXPECT_EQ(f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").shape, (Dims{64, 4}));
  EXPECT_EQ(f.info("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight").shape, (Dims{4, 64}));
  EXPECT_EQ(f.info("base_model.model.model.layers.2.mlp.experts.3.down_proj.lora_A.weight").shape, (Dims{4, 32}));
  EXPECT_EQ(f.info("base_model.model.model.layers.2.mlp.experts.3.down_proj.lora_B.weight").shape, (Dims{64, 4}));
  EXPECT_EQ(f.info("base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight").shape, (Dims{2, 64}));
  // The config is PEFT-shaped: sorted keys, LORA, CAUSAL_LM.
  auto j = nlohmann::json::parse(read_text_file((dir_ / "a" / "adapter_config.json").string()));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 4);
  EXPECT_EQ(j["lora_alpha"], 8);
  EXPECT_EQ(j["rank_pattern"]["o_proj"], 2);
  EXPECT_EQ(j["base_model_name_or_path"], "tiny/qwen3_moe");
}

TEST_F(Peft, FusedExpertsRoundTripUsesPeftPackingAndNesting) {
  auto cfg = tiny_config();
  const int64_t E = 8, r = 2, H = 64, I = 32;
  Adapter ad;
  ad.config = adapters::make_config(r, 4, {"q_proj"}, {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"});
  std::mt19937 g(3);
  ad.modules[{1, Module::Q}] = LoraFactors{rnd({r, H}, g, 0.1f), rnd({64, r}, g, 0.1f), 2.0f};
  for (int l = 1; l < 4; ++l)
    for (int e = 0; e < E; ++e) {
      Tensor a = rnd({r, H}, g, 0.1f);
      ad.experts[{l, ExpertProj::Gate, e}] = LoraFactors{a, rnd({I, r}, g, 0.1f), 2.0f};
      ad.experts[{l, ExpertProj::Up, e}] = LoraFactors{a, rnd({I, r}, g, 0.1f), 2.0f};
      ad.experts[{l, ExpertProj::Down, e}] = LoraFactors{rnd({r, I}, g, 0.1f), rnd({H, r}, g, 0.1f), 2.0f};
    }
  adapters::save_peft((dir_ / "a").string(), ad, cfg);
  auto f = io::SafetensorsFile::open((dir_ / "a" / "adapter_model.safetensors").string());
  const std::string p = "base_model.model.model.layers.2.mlp.experts.";
  EXPECT_EQ(f.info(p + "base_layer.lora_A.weight").shape, (Dims{E * r, H}));  // gate_up (inner wrapper)
  EXPECT_EQ(f.info(p + "base_layer.lora_B.weight").shape, (Dims{2 * I, E * r}));
  EXPECT_EQ(f.info(p + "lora_A.weight").shape, (Dims{E * r, I}));  // down
  EXPECT_EQ(f.info(p + "lora_B.weight").shape, (Dims{H, E * r}));
  EXPECT_FALSE(f.contains("base_model.model.model.layers.2.mlp.experts.0.gate_proj.lora_A.weight"));
  // The packed B is rank-major: column k·E + e holds expert e's rank-k column.
  Tensor B = f.tensor(p + "base_layer.lora_B.weight");
  const LoraFactors* up5 = ad.find_expert(2, ExpertProj::Up, 5);
  for (int64_t k = 0; k < r; ++k)
    EXPECT_EQ(B.data<float>()[(I + 7) * E * r + k * E + 5], up5->b.data<float>()[7 * r + k]);
  Adapter back = adapters::load_peft((dir_ / "a").string(), cfg);
  expect_same_adapter(ad, back);
  adapters::save_peft((dir_ / "b").string(), back, cfg);
  expect_same_files(dir_ / "a", dir_ / "b");
  // Gate and Up with different A cannot be written fused.
  ad.experts[{2, ExpertProj::Up, 1}].a = rnd({r, H}, g, 0.1f);
  auto err = error_of([&] { adapters::save_peft((dir_ / "c").string(), ad, cfg); });
  EXPECT_NE(err.find("different A"), std::string::npos) << err;
}

// A file laid out as PEFT writes it (not by graft): fused experts with the wrappers in the other order
// (down is base_layer), bf16 tensors, extra config keys. Unpacking must follow PEFT's formula.
TEST_F(Peft, HandBuiltPeftFusedFileUnpacksRankMajor) {
  auto cfg = tiny_config();
  const int64_t E = 8, r = 3, H = 64, I = 32;
  std::mt19937 g(9);
  Packed gu = random_packed(E, r, H, 2 * I, g), dn = random_packed(E, r, I, H, g);
  io::NamedTensors t;
  const std::string p = "base_model.model.model.layers.";
  for (int l : {1, 3}) {
    const std::string q = p + std::to_string(l) + ".mlp.experts.";
    t.emplace_back(q + "lora_A.weight", gu.a);  // gate_up as the outer wrapper this time
    t.emplace_back(q + "lora_B.weight", gu.b);
    t.emplace_back(q + "base_layer.lora_A.weight", dn.a);
    t.emplace_back(q + "base_layer.lora_B.weight", dn.b);
  }
  Tensor qa = rnd({r, H}, g, 0.1f), qb = rnd({64, r}, g, 0.1f);
  t.emplace_back(p + "0.self_attn.q_proj.lora_A.weight", qa.to(DType::BF16));
  t.emplace_back(p + "0.self_attn.q_proj.lora_B.weight", qb.to(DType::BF16));
  fs::create_directories(dir_ / "peft");
  io::save_safetensors((dir_ / "peft" / "adapter_model.safetensors").string(), t);
  write_text(dir_ / "peft" / "adapter_config.json", R"({
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "Qwen/Qwen3-30B-A3B",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "lora_alpha": 6,
  "lora_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "LORA",
  "peft_version": "0.17.1",
  "r": 3,
  "rank_pattern": {},
  "target_modules": ["q_proj"],
  "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": true
})");
  Adapter ad = adapters::load_peft((dir_ / "peft").string(), cfg);
  EXPECT_EQ(ad.config.extra["peft_version"], "0.17.1");
  const float want_scale = static_cast<float>(6.0 / std::sqrt(3.0));
  EXPECT_EQ(ad.experts.size(), 2u * 3u * E);
  for (int64_t e = 0; e < E; ++e) {
    const LoraFactors* gate = ad.find_expert(3, ExpertProj::Gate, static_cast<int>(e));
    const LoraFactors* up = ad.find_expert(3, ExpertProj::Up, static_cast<int>(e));
    const LoraFactors* down = ad.find_expert(1, ExpertProj::Down, static_cast<int>(e));
    ASSERT_TRUE(gate && up && down);
    EXPECT_FLOAT_EQ(gate->scale, want_scale);
    EXPECT_LT(max_diff(factor_delta(*gate), peft_delta(gu, E, r, e, 0, I)), 1e-5) << "gate expert " << e;
    EXPECT_LT(max_diff(factor_delta(*up), peft_delta(gu, E, r, e, I, I)), 1e-5) << "up expert " << e;
    EXPECT_LT(max_diff(factor_delta(*down), peft_delta(dn, E, r, e, 0, H)), 1e-5) << "down expert " << e;
    // Not vacuous: the expert-major (wrong) reading of B gives a different delta.
    EXPECT_GT(max_diff(factor_delta(*down), peft_delta(dn, E, r, e, 0, H, /*rank_major=*/false)), 1e-3);
  }
  const LoraFactors* q = ad.find(0, Module::Q);
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(same_tensor(q->a, qa.to(DType::BF16).to(DType::F32)));
  // Saving a foreign file keeps it tensor-equal (f32, graft's wrapper order).
  adapters::save_peft((dir_ / "out").string(), ad, cfg);
  Adapter again = adapters::load_peft((dir_ / "out").string(), cfg);
  expect_same_adapter(ad, again);
  auto f = io::SafetensorsFile::open((dir_ / "out" / "adapter_model.safetensors").string());
  EXPECT_TRUE(same_tensor(f.tensor(p + "3.mlp.experts.base_layer.lora_B.weight"), gu.b));
  EXPECT_TRUE(same_tensor(f.tensor(p + "3.mlp.experts.lora_A.weight"), dn.a));
}

TEST(PeftScale, RsloraAndPatterns) {
  PeftConfig c;
  c.r = 16;
  c.lora_alpha = 32;
  EXPECT_DOUBLE_EQ(adapters::lora_scale(c, "model.layers.0.self_attn.q_proj", 16), 2.0);
  c.use_rslora = true;
  EXPECT_DOUBLE_EQ(adapters::lora_scale(c, "model.layers.0.self_attn.q_proj", 16), 8.0);
  c.use_rslora = false;
  c.rank_pattern = {{"q_proj", 4}, {"layers\\.[12]\\.self_attn\\.v_proj", 2}};
  c.alpha_pattern = {{"self_attn.k_proj", 64}};
  EXPECT_EQ(adapters::expected_rank(c, "model.layers.3.self_attn.q_proj"), 4);
  EXPECT_EQ(adapters::expected_rank(c, "model.layers.2.self_attn.v_proj"), 2);
  EXPECT_EQ(adapters::expected_rank(c, "model.layers.3.self_attn.v_proj"), 16);
  EXPECT_EQ(adapters::expected_rank(c, "model.layers.3.mlp.experts.4.down_proj"), 16);
  EXPECT_DOUBLE_EQ(adapters::lora_scale(c, "model.layers.0.self_attn.k_proj", 16), 4.0);
  EXPECT_DOUBLE_EQ(adapters::lora_scale(c, "model.layers.0.self_attn.q_proj", 4), 8.0);
  // Patterns match whole dot-separated suffixes only.
  EXPECT_EQ(adapters::match_pattern_key({"proj"}, "model.layers.0.self_attn.q_proj"), "");
  EXPECT_EQ(adapters::match_pattern_key({"_proj"}, "model.layers.0.self_attn.q_proj"), "");
  EXPECT_EQ(adapters::match_pattern_key({"q_proj"}, "model.layers.0.self_attn.q_proj"), "q_proj");
  EXPECT_EQ(adapters::match_pattern_key({"model.layers.0.self_attn.q_proj"}, "model.layers.0.self_attn.q_proj"),
            "model.layers.0.self_attn.q_proj");
  // target_modules: list = exact or suffix; string = full-match regex; layers_to_transform filters.
  PeftConfig t;
  t.target_modules = {"q_proj", "experts.3.gate_proj"};
  EXPECT_TRUE(adapters::targets_module(t, "model.layers.0.self_attn.q_proj", 0));
  EXPECT_TRUE(adapters::targets_module(t, "model.layers.1.mlp.experts.3.gate_proj", 1));
  EXPECT_FALSE(adapters::targets_module(t, "model.layers.1.mlp.experts.13.gate_proj", 1));
  EXPECT_FALSE(adapters::targets_module(t, "model.layers.0.self_attn.k_proj", 0));
  t.layers_to_transform = {1};
  EXPECT_FALSE(adapters::targets_module(t, "model.layers.0.self_attn.q_proj", 0));
  PeftConfig x;
  x.target_modules_regex = ".*\\.(q|v)_proj";
  EXPECT_TRUE(adapters::targets_module(x, "model.layers.0.self_attn.v_proj", 0));
  EXPECT_FALSE(adapters::targets_module(x, "model.layers.0.self_attn.o_proj", 0));
}

TEST(PeftConfigJson, RoundTripAndRejections) {
  PeftConfig c = adapters::make_config(8, 16, {"q_proj", "v_proj"});
  c.use_rslora = true;
  c.alpha_pattern["v_proj"] = 2.5;
  c.layers_to_transform = {0, 2};
  const std::string s = adapters::peft_config_json(c);
  PeftConfig d = adapters::parse_peft_config(s, "cfg");
  EXPECT_EQ(adapters::peft_config_json(d), s);
  EXPECT_EQ(d.r, 8);
  EXPECT_EQ(d.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(d.use_rslora);
  EXPECT_DOUBLE_EQ(d.alpha_pattern["v_proj"], 2.5);
  EXPECT_EQ(d.layers_to_transform, (std::vector<int64_t>{0, 2}));
  EXPECT_TRUE(adapters::parse_peft_config(R"({"r": 4, "target_modules": "all-linear"})", "x").all_linear);
  EXPECT_EQ(adapters::parse_peft_config(R"({"r": 4, "target_modules": ".*q_proj"})", "x").target_modules_regex, ".*q_proj");
  EXPECT_EQ(adapters::parse_peft_config(R"({"r": 4, "layers_to_transform": 3})", "x").layers_to_transform,
            (std::vector<int64_t>{3}));

  auto bad = [](const std::string& json, const std::string& needle) {
    std::string err = error_of([&] { adapters::parse_peft_config(json, "adapter_config.json"); });
    EXPECT_NE(err.find(needle), std::string::npos) << "for " << json << ": " << err;
    EXPECT_NE(err.find("adapter_config.json"), std::string::npos) << err;
  };
  bad(R"({"r": 8, "use_dora": true})", "DoRA");
  bad(R"({"r": 8, "bias": "all"})", "bias");
  bad(R"({"r": 8, "modules_to_save": ["score"]})", "modules_to_save entry 'score' is not supported");
  bad(R"({"r": 8, "modules_to_save": "lm_head"})", "modules_to_save");
  bad(R"({"r": 8, "peft_type": "PREFIX_TUNING"})", "peft_type");
  bad(R"({"r": "8"})", "'r'");
  bad(R"({"r": 0})", "'r'");
  bad(R"({"r": 8, "target_modules": [1]})", "target_modules");
  bad(R"({"r": 8, "rank_pattern": {"q_proj": "x"}})", "rank_pattern");
  bad(R"({"r": 8, "rank_pattern": {"(": 2}})", "regular expression");
  bad(R"({"r": 8, "target_parameters": ["mlp.experts.down_proj"], "lora_dropout": 0.1})", "lora_dropout");
  bad(R"({"r": 8, "fan_in_fan_out": true})", "fan_in_fan_out");
  bad(R"({"r": 8,)", "not valid JSON");
  bad(R"([1, 2])", "JSON object");
}

// modules_to_save copies (embed_tokens, lm_head): PEFT's saved keys, byte-stable round trip, and the
// errors for a copy the config does not name, a named copy that is missing, and a wrong shape.
TEST_F(Peft, ModulesToSaveCopiesRoundTripUnderPeftKeys) {
  auto cfg = tiny_config();
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size;
  Adapter ad = random_adapter(cfg, 4, 8, 1);
  std::mt19937 g(7);
  ad.config.modules_to_save = {"model.embed_tokens", "lm_head"};
  ad.embed_tokens_weight = rnd({V, H}, g, 0.1f);
  ad.lm_head_weight = LinearWeight{V, H, rnd({V, H}, g, 0.1f), nullptr, {}};
  adapters::save_peft((dir_ / "a").string(), ad, cfg);
  auto f = io::SafetensorsFile::open((dir_ / "a" / "adapter_model.safetensors").string());
  EXPECT_EQ(f.info("base_model.model.model.embed_tokens.weight").shape, (Dims{V, H}));
  EXPECT_EQ(f.info("base_model.model.lm_head.weight").shape, (Dims{V, H}));
  auto j = nlohmann::json::parse(read_text_file((dir_ / "a" / "adapter_config.json").string()));
  EXPECT_EQ(j["modules_to_save"], nlohmann::json({"model.embed_tokens", "lm_head"}));
  Adapter back = adapters::load_peft((dir_ / "a").string(), cfg);
  expect_same_adapter(ad, back);
  ASSERT_NE(back.embed_tokens(), nullptr);
  ASSERT_NE(back.lm_head(), nullptr);
  EXPECT_TRUE(same_tensor(*back.embed_tokens(), ad.embed_tokens_weight));
  EXPECT_TRUE(same_tensor(back.lm_head()->dense, ad.lm_head_weight.dense));
  EXPECT_EQ(back.bytes(), ad.bytes());
  EXPECT_GE(back.bytes(), static_cast<size_t>(2 * V * H * 4));
  adapters::save_peft((dir_ / "b").string(), back, cfg);
  expect_same_files(dir_ / "a", dir_ / "b");
  // graft generate's combine keeps the copies of one adapter at scale 1 and refuses to scale or sum them;
  // graft merge refuses them.
  const Adapter* one[] = {&back};
  const float w1[] = {1.0f}, wh[] = {0.5f};
  Adapter c1 = adapters::combine(one, w1);
  ASSERT_NE(c1.embed_tokens(), nullptr);
  EXPECT_TRUE(same_tensor(*c1.embed_tokens(), *back.embed_tokens()));
  ASSERT_NE(c1.lm_head(), nullptr);
  EXPECT_NE(error_of([&] { adapters::combine(one, wh); }).find("cannot be scaled"), std::string::npos);
  Adapter plain = random_adapter(cfg, 4, 8, 2);
  const Adapter* two[] = {&back, &plain};
  const float w2[] = {1.0f, 1.0f};
  EXPECT_NE(error_of([&] { adapters::combine(two, w2); }).find("cannot be combined"), std::string::npos);
  EXPECT_NE(error_of([&] { adapters::merge_into(dir_.string(), back, (dir_ / "m").string()); }).find("modules_to_save"),
            std::string::npos);
  // A copy the config does not name, and a named copy that the file lacks.
  Adapter unnamed = ad;
  unnamed.config.modules_to_save = {"lm_head"};
  EXPECT_NE(error_of([&] { adapters::save_peft((dir_ / "c").string(), unnamed, cfg); }).find("embed_tokens"),
            std::string::npos);
  std::string cj = read_text_file((dir_ / "a" / "adapter_config.json").string());
  write_text(dir_ / "a" / "adapter_config.json", nlohmann::json::parse(cj).dump());  // still both named
  io::NamedTensors only_lora;
  for (const auto& ti : f.tensors())
    if (ti.name.find(".layers.") != std::string::npos) only_lora.emplace_back(ti.name, f.tensor(ti.name).clone());
  io::save_safetensors((dir_ / "a" / "adapter_model.safetensors").string(), only_lora);
  std::string err = error_of([&] { adapters::load_peft((dir_ / "a").string(), cfg); });
  EXPECT_NE(err.find("modules_to_save"), std::string::npos) << err;
  EXPECT_NE(err.find("base_model.model.model.embed_tokens.weight"), std::string::npos) << err;
  only_lora.emplace_back("base_model.model.model.embed_tokens.weight", rnd({V, H - 1}, g, 0.1f));
  only_lora.emplace_back("base_model.model.lm_head.weight", rnd({V, H}, g, 0.1f));
  io::save_safetensors((dir_ / "a" / "adapter_model.safetensors").string(), only_lora);
  err = error_of([&] { adapters::load_peft((dir_ / "a").string(), cfg); });
  EXPECT_NE(err.find(fmt::format("expected [{}, {}]", V, H)), std::string::npos) << err;
}

TEST_F(Peft, BadKeysAndShapesNameTheKey) {
  auto cfg = tiny_config();
  auto write = [&](const io::NamedTensors& t, const std::string& config) {
    fs::remove_all(dir_ / "x");
    fs::create_directories(dir_ / "x");
    io::save_safetensors((dir_ / "x" / "adapter_model.safetensors").string(), t);
    write_text(dir_ / "x" / "adapter_config.json", config);
    return error_of([&] { adapters::load_peft((dir_ / "x").string(), cfg); });
  };
  std::mt19937 g(1);
  const std::string cfg4 = R"({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "gate_proj"], "peft_type": "LORA"})";
  const std::string q = "base_model.model.model.layers.0.self_attn.q_proj.";
  auto ok = [&] { return io::NamedTensors{{q + "lora_A.weight", rnd({4, 64}, g, 1)}, {q + "lora_B.weight", rnd({64, 4}, g, 1)}}; };
  EXPECT_EQ(write(ok(), cfg4), "");

  auto t = ok();
  t.emplace_back("base_model.model.lm_head.lora_A.weight", rnd({4, 64}, g, 1));
  auto err = write(t, cfg4);
  EXPECT_NE(err.find("base_model.model.lm_head.lora_A.weight"), std::string::npos) << err;

  t = ok();
  t[0].second = rnd({3, 64}, g, 1);  // rank 3, config says 4
  err = write(t, cfg4);
  EXPECT_NE(err.find(q + "lora_A.weight"), std::string::npos) << err;
  EXPECT_NE(err.find("expected [4, 64]"), std::string::npos) << err;

  t = ok();
  t[1].second = rnd({63, 4}, g, 1);
  err = write(t, cfg4);
  EXPECT_NE(err.find("expected [64, 4]"), std::string::npos) << err;

  t = ok();
  t.pop_back();
  err = write(t, cfg4);
  EXPECT_NE(err.find("lora_B"), std::string::npos) << err;

  t = {{"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", rnd({4, 64}, g, 1)},
       {"base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight", rnd({32, 4}, g, 1)}};
  err = write(t, cfg4);
  EXPECT_NE(err.find("target_modules"), std::string::npos) << err;

  t = {{"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", rnd({4, 64}, g, 1)},
       {"base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight", rnd({64, 4}, g, 1)}};
  err = write(t, cfg4);
  EXPECT_NE(err.find("layer 9"), std::string::npos) << err;

  t = {{"base_model.model.model.layers.1.mlp.experts.8.gate_proj.lora_A.weight", rnd({4, 64}, g, 1)},
       {"base_model.model.model.layers.1.mlp.experts.8.gate_proj.lora_B.weight", rnd({32, 4}, g, 1)}};
  err = write(t, cfg4);
  EXPECT_NE(err.find("expert 8"), std::string::npos) << err;

  // A dense MLP key on an MoE layer.
  t = {{"base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight", rnd({4, 64}, g, 1)},
       {"base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight", rnd({128, 4}, g, 1)}};
  err = write(t, cfg4);
  EXPECT_NE(err.find("does not have"), std::string::npos) << err;

  // Fused tensors that fit neither parameter.
  const std::string cfgf =
      R"({"r": 2, "lora_alpha": 2, "target_parameters": ["mlp.experts.gate_up_proj"], "peft_type": "LORA"})";
  t = {{"base_model.model.model.layers.1.mlp.experts.lora_A.weight", rnd({16, 50}, g, 1)},
       {"base_model.model.model.layers.1.mlp.experts.lora_B.weight", rnd({64, 16}, g, 1)}};
  err = write(t, cfgf);
  EXPECT_NE(err.find("gate_up_proj (lora_A [E·r, 64], lora_B [64, E·r])"), std::string::npos) << err;
  // Fused with the wrong rank.
  t = {{"base_model.model.model.layers.1.mlp.experts.lora_A.weight", rnd({24, 64}, g, 1)},
       {"base_model.model.model.layers.1.mlp.experts.lora_B.weight", rnd({64, 24}, g, 1)}};
  err = write(t, cfgf);
  EXPECT_NE(err.find("expected [16, 64]"), std::string::npos) << err;
  // Fused parameter not named in target_parameters.
  t = {{"base_model.model.model.layers.1.mlp.experts.lora_A.weight", rnd({16, 32}, g, 1)},
       {"base_model.model.model.layers.1.mlp.experts.lora_B.weight", rnd({64, 16}, g, 1)}};
  err = write(t, cfgf);
  EXPECT_NE(err.find("target_parameters"), std::string::npos) << err;

  // Missing files.
  fs::create_directories(dir_ / "empty");
  err = error_of([&] { adapters::load_peft((dir_ / "empty").string(), cfg); });
  EXPECT_NE(err.find("adapter_config.json"), std::string::npos) << err;
}
