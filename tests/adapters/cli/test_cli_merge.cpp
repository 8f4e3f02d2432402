// End to end: `graft init-model` a tiny qwen3_moe, write an adapter, `graft merge` it, and check the merged
// model computes what the base computes with the adapter at runtime.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "../../common/run_graft.hpp"
#include "../adapter_test_util.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/cpu/cpu_backend.hpp"

using namespace graft;
using namespace graft::testutil;

namespace {
using Run = graft::testing::RunResult;
Run run(const std::string& args) { return graft::testing::run_graft(args); }
class CliMerge : public TmpDir {};
}  // namespace

TEST_F(CliMerge, MergedModelEqualsRuntimeAdapter) {
  const std::string base = (dir_ / "base").string(), ad_dir = (dir_ / "ad").string(), out = (dir_ / "merged").string();
  auto r = run("init-model --arch qwen3_moe --preset tiny --seed 3 --out " + base);
  ASSERT_EQ(r.rc, 0) << r.err;
  auto cfg = config::load_model_config(base);
  adapters::save_peft(ad_dir, random_adapter(cfg, 4, 8, 2), cfg);
  r = run("merge " + base + " --adapter " + ad_dir + " --out " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("wrote"), std::string::npos) << r.out;
  auto ad = adapters::load_peft(ad_dir, cfg);
  auto mb = model::Model::load(base), mm = model::Model::load(out);
  auto be = cpu::make_backend();
  std::vector<int32_t> ids = {104, 101, 108, 108, 111, 32, 119};
  std::vector<const model::LoraSource*> slots = {&ad};
  model::Batch with;
  with.ids = ids;
  with.adapters = slots;
  model::Batch plain;
  plain.ids = ids;
  Tensor a = mb.forward(*be, with), b = mm.forward(*be, plain);
  EXPECT_LT(rel(b.data<float>(), a.data<float>(), a.numel()), 2e-5);
  // The merged model generates through the CLI like any model.
  r = run("generate " + out + " --prompt hi --max-tokens 3 --json");
  EXPECT_EQ(r.rc, 0) << r.err;

  // Errors: a missing adapter names the directory and exits non-zero.
  r = run("merge " + base + " --adapter " + (dir_ / "nope").string() + " --out " + (dir_ / "m2").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
}
