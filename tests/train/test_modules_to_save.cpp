// PEFT modules_to_save (trained copies of embed_tokens / lm_head, issue 17): the training step's
// gradients of both copies against central finite differences of its own loss (tiny qwen3 tied and
// untied, mixtral's lm_head), the copies starting equal to the base's and training separately when
// the base ties them, and Model::forward / forward_paged running each row with its adapter's copies.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "graft/backend/make_backend.hpp"
#include "graft/config/model_config.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/lora_train.hpp"

using namespace graft;

namespace {

struct MtsCase {
  model::Model m;
  train::TrainableAdapter ad;
  std::vector<int32_t> ids, labels;
};

MtsCase make(const std::string& arch, bool untie = false) {
  auto cj = model::preset_config(arch, "tiny", 300, 1, 2);
  if (untie) cj["tie_word_embeddings"] = false;
  auto cfg = config::parse_model_config_text(cj.dump());
  MtsCase s{model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 5, 0.125f)), {}, {}, {}};
  std::mt19937_64 rng(9);
  const auto& L = s.m.layers()[0];
  auto& q = s.ad.add(0, model::Module::Q, L.attn.q.in, L.attn.q.out, 4, 8.0f, rng);
  std::normal_distribution<float> n(0.0f, 0.05f);
  for (int64_t i = 0; i < q.f.b.numel(); ++i) q.f.b.data<float>()[i] = n(rng);
  s.ad.add_embed_tokens(s.m.embedding());
  s.ad.add_lm_head(s.m.lm_head());
  // Move both copies away from the base (and from each other when the base ties them).
  for (auto* f : {s.ad.embed_param(), s.ad.lm_head_param()})
    for (int64_t i = 0; i < f->w.dense.numel(); ++i) f->w.dense.data<float>()[i] += n(rng);
  std::uniform_int_distribution<int32_t> tok(3, 299);
  for (int i = 0; i < 24; ++i) s.ids.push_back(tok(rng) % 40 + 3);  // a few tokens repeat: rows accumulate
  s.labels.assign(s.ids.begin() + 1, s.ids.end());
  s.labels.push_back(-100);
  s.labels[5] = -100;
  return s;
}

double loss_of(MtsCase& s) {
  s.ad.zero_grad();
  return train::forward_backward(s.m, s.ids, s.labels, s.ad);
}

// <grad, D> against (L(W + eps D) - L(W - eps D)) / 2 eps along a random direction D of the whole copy.
void check_directional(MtsCase& s, train::FullParam& f, const char* what) {
  std::vector<float> g(f.grad.data<float>(), f.grad.data<float>() + f.grad.numel());
  std::vector<float> w0(f.w.dense.data<float>(), f.w.dense.data<float>() + f.w.dense.numel());
  std::mt19937_64 rng(17);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> d(w0.size());
  for (auto& x : d) x = n(rng);
  double analytic = 0;
  for (size_t i = 0; i < g.size(); ++i) analytic += double{g[i]} * d[i];
  const float eps = 2e-3f;
  auto at = [&](float sign) {
    for (size_t i = 0; i < w0.size(); ++i) f.w.dense.data<float>()[i] = w0[i] + sign * eps * d[i];
    return loss_of(s);
  };
  const double fd = (at(1.0f) - at(-1.0f)) / (2.0 * eps);
  std::copy(w0.begin(), w0.end(), f.w.dense.data<float>());
  EXPECT_GT(std::fabs(analytic), 1e-2) << what;
  EXPECT_NEAR(fd, analytic, 1e-2 * std::fabs(analytic)) << what;
  std::printf("%s: <grad, D> %.6f, finite difference %.6f\n", what, analytic, fd);
}

}  // namespace

// qwen3 tied and untied: both copies. mixtral: lm_head only — a finite difference through the embedding
// crosses top-k routing boundaries of this tiny model (the loss jumps by ~3e-4 however small the step),
// and the gradient below the first layer is the one test_lora_grads checks against torch for mixtral.
TEST(ModulesToSave, GradientsMatchFiniteDifferences) {
  struct C {
    const char* arch;
    bool untie, embed;
  };
  for (const C c : {C{"qwen3", false, true}, C{"qwen3", true, true}, C{"mixtral", false, false}}) {
    MtsCase s = make(c.arch, c.untie);
    const std::string name = std::string(c.arch) + (s.m.config().tie_word_embeddings ? " (tied)" : " (untied)");
    SCOPED_TRACE(name);
    EXPECT_EQ(s.m.config().tie_word_embeddings, std::string(c.arch) == "qwen3" && !c.untie);
    loss_of(s);
    auto& e = *s.ad.embed_param();
    auto& h = *s.ad.lm_head_param();
    // Embedding rows of tokens not in the batch get no gradient; the batch's rows do.
    const int64_t H = e.grad.size(1);
    for (int32_t t : {0, 1, 2, 250}) {
      double nrm = 0;
      for (int64_t j = 0; j < H; ++j) nrm += std::fabs(e.grad.data<float>()[t * H + j]);
      EXPECT_EQ(nrm, 0.0) << "row " << t;
    }
    double row_used = 0;
    for (int64_t j = 0; j < H; ++j) row_used += std::fabs(e.grad.data<float>()[int64_t{s.ids[0]} * H + j]);
    EXPECT_GT(row_used, 0.0);
    if (c.embed) check_directional(s, e, (name + " embed_tokens").c_str());
    loss_of(s);
    check_directional(s, h, (name + " lm_head").c_str());
    // The copies are separate tensors; a tied base stays tied.
    EXPECT_NE(e.w.dense.raw(), h.w.dense.raw());
    if (s.m.config().tie_word_embeddings) {
      EXPECT_EQ(s.m.lm_head().dense.raw(), s.m.embedding().raw());
    }
  }
}

TEST(ModulesToSave, CopiesStartEqualToTheBase) {
  auto cfg = config::parse_model_config_text(model::preset_config("qwen3", "tiny", 300, 1, 2).dump());
  auto m = model::Model::from_tensors(cfg, model::random_checkpoint(cfg, 5, 0.125f));
  train::TrainableAdapter ad, plain;
  ad.add_embed_tokens(m.embedding());
  ad.add_lm_head(m.lm_head());
  std::vector<int32_t> ids = {5, 9, 11, 5, 40}, labels = {9, 11, 5, 40, -100};
  std::mt19937_64 rng(1);
  ad.add(0, model::Module::V, m.layers()[0].attn.v.in, m.layers()[0].attn.v.out, 2, 4.0f, rng);
  std::mt19937_64 rng2(1);
  plain.add(0, model::Module::V, m.layers()[0].attn.v.in, m.layers()[0].attn.v.out, 2, 4.0f, rng2);
  EXPECT_EQ(train::forward_backward(m, ids, labels, ad), train::forward_backward(m, ids, labels, plain));
}

TEST(ModulesToSave, ForwardAndPagedForwardRunEachRowWithItsAdaptersCopies) {
  MtsCase s = make("mixtral");
  auto be = make_backend("cpu");
  const int64_t V = s.m.vocab_size();
  const double train_loss = loss_of(s);
  std::vector<const model::LoraSource*> slots = {&s.ad};
  model::Batch b;
  b.ids = s.ids;
  b.adapters = slots;
  Tensor with = s.m.forward(*be, b);
  EXPECT_NEAR(be->cross_entropy(with, s.labels, nullptr), train_loss, 1e-5);
  model::Batch base_b;
  base_b.ids = s.ids;
  Tensor base = s.m.forward(*be, base_b);
  EXPECT_GT(std::fabs(be->cross_entropy(base, s.labels, nullptr) - train_loss), 1e-3);
  // One paged batch: sequence 0 runs the adapter (slot 0), sequence 1 the base (-1).
  auto cache = s.m.new_paged_cache(16, 4);
  std::vector<int32_t> t0(8), t1(8);
  std::iota(t0.begin(), t0.end(), 0);
  std::iota(t1.begin(), t1.end(), 8);
  const int64_t T = static_cast<int64_t>(s.ids.size());
  std::vector<int32_t> ids(s.ids), rows(static_cast<size_t>(2 * T));
  ids.insert(ids.end(), s.ids.begin(), s.ids.end());
  std::iota(rows.begin(), rows.end(), 0);
  std::vector<model::SeqChunk> chunks(2);
  chunks[0] = {0, T, 0, t0, 0};
  chunks[1] = {T, T, 0, t1, -1};
  Tensor l = s.m.forward_paged(*be, ids, chunks, slots, cache, rows);
  double d_with = 0, d_base = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    d_with = std::max(d_with, double{std::fabs(l.data<float>()[i] - with.data<float>()[i])});
    d_base = std::max(d_base, double{std::fabs(l.data<float>()[T * V + i] - base.data<float>()[i])});
  }
  EXPECT_LT(d_with, 1e-4);
  EXPECT_LT(d_base, 1e-4);
}
