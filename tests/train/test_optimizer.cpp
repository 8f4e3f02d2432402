// AdamW + gradient clipping against torch.optim.AdamW (torch in the reference venv tools/.venv), and LR schedules
// against transformers' formulas.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "graft/train/optimizer.hpp"

using namespace graft;
using namespace graft::train;

TEST(AdamW, MatchesTorchWithClippingAndScheduledLr) {
  const int n = 37, steps = 12;
  std::mt19937 r(1);
  std::normal_distribution<float> g(0, 1);
  Tensor p = Tensor::empty({n}, DType::F32), grad = Tensor::empty({n}, DType::F32);
  for (int i = 0; i < n; ++i) p.data<float>()[i] = g(r);
  nlohmann::json in = {{"p", std::vector<float>(p.data<float>(), p.data<float>() + n)}, {"betas", {0.9, 0.95}},
                       {"eps", 1e-8}, {"wd", 0.1}, {"max_norm", 1.0}};
  std::vector<std::vector<float>> grads;
  std::vector<double> lrs;
  for (int s = 0; s < steps; ++s) {
    std::vector<float> gs(n);
    for (auto& x : gs) x = g(r) * (s % 3 == 0 ? 5.0f : 0.1f);  // some steps clip, some do not
    grads.push_back(gs);
    lrs.push_back(lr_at(Schedule::Cosine, 1e-2, s, 3, steps));
  }
  in["grads"] = grads;
  in["lr"] = lrs;
  const auto tmp = std::filesystem::temp_directory_path() / ("graft_adamw_" + std::to_string(::getpid()) + ".json");
  std::ofstream(tmp) << in.dump();
  FILE* pp = popen((std::string(GRAFT_REF_PYTHON) + " " + std::string(GRAFT_SOURCE_DIR) + "/tools/ref/torch_adamw.py < " + tmp.string() + " 2>/dev/null").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  size_t k;
  while ((k = fread(buf.data(), 1, buf.size(), pp)) > 0) out.append(buf.data(), k);
  const int rc = pclose(pp);
  std::filesystem::remove(tmp);
  if (rc != 0 || out.empty()) GTEST_SKIP() << "the reference venv (tools/.venv, scripts/setup.sh) with torch is unavailable";
  auto ref = nlohmann::json::parse(out);
  AdamW opt({1e-2, 0.9, 0.95, 1e-8, 0.1});
  opt.add({&p, &grad});
  for (int s = 0; s < steps; ++s) {
    std::copy(grads[static_cast<size_t>(s)].begin(), grads[static_cast<size_t>(s)].end(), grad.data<float>());
    const double norm = clip_grad_norm(opt.params(), 1.0);
    EXPECT_NEAR(norm, ref["norms"][s].get<double>(), 1e-5 * norm);
    opt.step(lrs[static_cast<size_t>(s)]);
    auto want = ref["params"][s].get<std::vector<float>>();
    for (int i = 0; i < n; ++i) ASSERT_NEAR(p.data<float>()[i], want[static_cast<size_t>(i)], 2e-6f) << "step " << s << " i " << i;
  }
  EXPECT_EQ(opt.steps(), steps);
}

TEST(Schedules, WarmupThenDecay) {
  // transformers: warmup lr = base·step/warmup; linear decays to 0 at `total`; cosine: 0.5(1+cos(pi·progress)).
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Linear, 1.0, 0, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Linear, 1.0, 5, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Linear, 1.0, 10, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Linear, 1.0, 60, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Linear, 1.0, 110, 10, 110), 0.0);
  EXPECT_NEAR(lr_at(Schedule::Cosine, 2.0, 60, 10, 110), 1.0, 1e-12);
  EXPECT_NEAR(lr_at(Schedule::Cosine, 2.0, 110, 10, 110), 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(Schedule::Constant, 3.0, 1000, 0, 10), 3.0);
  EXPECT_THROW(parse_schedule("polynomial"), Error);
}
