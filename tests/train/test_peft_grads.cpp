// One training step's LoRA gradients against transformers + PEFT autograd (tools/ref/peft_lora_grads.py in
// the reference venv), fp32, for every family: the checkpoints transformers writes itself
// (tools/ref/hf_logits.py cases: rope scaling variants, biases, sliding window, MLA, DeepSeek routers, Llama 4
// chunked/NoPE layers), PEFT's LoraConfig on every attention, dense-MLP and shared-expert projection
// (target_modules) and on the fused routed experts (target_parameters "experts.gate_up_proj" /
// "experts.down_proj": transformers 5 stores every MoE family fused), PEFT's lora_A init and a random
// non-zero lora_B written to both sides. A fused gate_up LoRA is graft's gate and up LoRAs with one shared A,
// so its gradients are dA_gate + dA_up and [dB_gate; dB_up]. Loss and every gradient tensor agree within
// 1e-4 relative (‖g − want‖ / ‖want‖). The hand-written fp64 torch checks stay in test_lora_grads.cpp.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <unistd.h>

#include "../common/reference_python.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/train/lora_train.hpp"

using namespace graft;
namespace fs = std::filesystem;
using model::ExpertProj;
using model::Module;

namespace {

const std::map<std::string, Module> kModules = {
    {"q", Module::Q},       {"k", Module::K},         {"v", Module::V},         {"o", Module::O},
    {"qa", Module::QA},     {"qb", Module::QB},       {"kva", Module::KVA},     {"kvb", Module::KVB},
    {"gate", Module::Gate}, {"up", Module::Up},       {"down", Module::Down},   {"sgate", Module::SharedGate},
    {"sup", Module::SharedUp}, {"sdown", Module::SharedDown}};

std::vector<float> values(const Tensor& t) {
  Tensor c = t.to(DType::F32).contiguous();
  return {c.data<float>(), c.data<float>() + c.numel()};
}
void fill(Tensor& dst, const std::vector<float>& v, int64_t row0 = 0) {  // rows [row0, ..) of v
  const int64_t n = dst.numel();
  ASSERT_LE(row0 * dst.size(1) + n, static_cast<int64_t>(v.size()));
  std::copy(v.begin() + row0 * dst.size(1), v.begin() + row0 * dst.size(1) + n, dst.data<float>());
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);  // an expert no token chose: zero on both sides
}

// Returns the largest relative gradient error of one case.
double check_case(const fs::path& dir) {
  const std::string name = dir.filename().string();
  auto j = nlohmann::json::parse(std::ifstream(dir / "peft.json"));
  auto m = model::Model::load(dir.string());
  const auto init = io::SafetensorsFile::open((dir / "lora_init.safetensors").string());
  const auto want = io::SafetensorsFile::open((dir / "lora_grads.safetensors").string());
  const int64_t I = m.config().expert_intermediate_size();

  train::TrainableAdapter ad;
  std::mt19937_64 rng(1);
  struct Site {
    train::LoraParam* p;
    train::LoraParam* up = nullptr;  // fused gate_up: p = gate, up = up (shared A)
  };
  std::map<std::string, Site> sites;  // PEFT key prefix -> graft parameters
  for (auto& [key, scale_j] : j["scales"].items()) {
    const float scale = scale_j.get<float>();
    const Tensor a = init.tensor(key + ".a"), b = init.tensor(key + ".b");
    const int64_t r = a.size(0), in = a.size(1), out = b.size(0);
    const auto va = values(a), vb = values(b);
    const int layer = std::stoi(key.substr(0, key.find('.')));
    const std::string rest = key.substr(key.find('.') + 1);
    auto set = [&](train::LoraParam& p, int64_t row0) {
      fill(p.f.a, va);
      fill(p.f.b, vb, row0);
      p.f.scale = scale;
    };
    if (rest.size() > 1 && rest[0] == 'e' && std::isdigit(static_cast<unsigned char>(rest[1]))) {  // "eE.proj"
      const int e = std::stoi(rest.substr(1));
      const std::string proj = rest.substr(rest.find('.') + 1);
      if (proj == "gate_up") {
        EXPECT_EQ(out, 2 * I) << name << " " << key;
        auto& g = ad.add_expert(layer, ExpertProj::Gate, e, in, I, r, 1.0f, rng);
        auto& u = ad.add_expert(layer, ExpertProj::Up, e, in, I, r, 1.0f, rng);
        set(g, 0);
        set(u, I);
        sites[key] = {&g, &u};
      } else {
        EXPECT_EQ(proj, "down") << name << " " << key;
        auto& d = ad.add_expert(layer, ExpertProj::Down, e, in, out, r, 1.0f, rng);
        set(d, 0);
        sites[key] = {&d};
      }
    } else {
      auto it = kModules.find(rest);
      EXPECT_NE(it, kModules.end()) << name << ": unknown LoRA site " << key;
      if (it == kModules.end()) continue;
      auto& p = ad.add(layer, it->second, in, out, r, 1.0f, rng);
      set(p, 0);
      sites[key] = {&p};
    }
  }
  // The batch: two rows of the same length, packed as two segments.
  std::vector<int32_t> ids, labels, pos, seg;
  for (size_t row = 0; row < j["ids"].size(); ++row)
    for (size_t t = 0; t < j["ids"][row].size(); ++t) {
      ids.push_back(j["ids"][row][t].get<int32_t>());
      labels.push_back(j["labels"][row][t].get<int32_t>());
      pos.push_back(static_cast<int32_t>(t));
      seg.push_back(static_cast<int32_t>(row));
    }
  const double loss = train::forward_backward(m, ids, labels, ad, pos, seg);
  const double ref_loss = j["loss"].get<double>();
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::fabs(ref_loss)) << name;

  double worst = 0;
  size_t tensors = 0;
  for (auto& [key, s] : sites) {
    std::vector<float> da = values(s.p->da), db = values(s.p->db);
    if (s.up) {  // fused gate_up: shared A, stacked B
      const auto ua = values(s.up->da), ub = values(s.up->db);
      for (size_t i = 0; i < da.size(); ++i) da[i] += ua[i];
      db.insert(db.end(), ub.begin(), ub.end());
    }
    for (auto [got, suffix] : {std::pair{&da, ".a"}, std::pair{&db, ".b"}}) {
      const auto w = values(want.tensor(key + suffix));
      EXPECT_EQ(got->size(), w.size()) << name << " " << key << suffix;
      if (got->size() != w.size()) continue;
      const double e = rel_err(*got, w);
      EXPECT_LT(e, 1e-4) << name << " " << key << suffix;
      worst = std::max(worst, e);
      ++tensors;
    }
  }
  EXPECT_EQ(tensors, want.tensors().size()) << name << ": graft did not produce every PEFT gradient";
  std::printf("  %-20s loss %.6f (peft %.6f), max rel grad err %.3g over %zu LoRA tensors\n", name.c_str(), loss,
              ref_loss, worst, tensors);
  return worst;
}

}  // namespace

TEST(PeftGrads, LoraGradientsMatchTransformersPeftAutograd) {
  GRAFT_REQUIRE_REFERENCE("torch, transformers, peft");
  const fs::path root = fs::temp_directory_path() / ("graft_peft_grads_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  const std::string cmd = "HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 " + graft::testing::ref_python() + " " +
                          GRAFT_SOURCE_DIR "/tools/ref/peft_lora_grads.py " + root.string() + " --make-hf 2>&1";
  auto [rc, out] = graft::testing::ref_run(cmd);
  ASSERT_EQ(rc, 0) << cmd << "\n" << out;
  size_t cases = 0;
  for (const auto& e : fs::directory_iterator(root))
    if (fs::exists(e.path() / "peft.json")) {
      check_case(e.path());
      ++cases;
    }
  EXPECT_EQ(cases, 10u) << "cases of tools/ref/hf_logits.py --list";
  if (!HasFailure()) fs::remove_all(root);
  else std::printf("kept %s for inspection\n", root.c_str());
}
