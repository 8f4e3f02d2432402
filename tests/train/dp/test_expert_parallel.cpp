// Expert parallel layers against the unsharded model, in one process: P threads form an expert group
// (an in-memory ExpertParallel whose exchange is an all-to-all through shared slots), each thread
// holding a model loaded with only its shard of the experts (LoadOptions::expert_shard_*) and running
// its own sequence, as the ranks of `mpirun -np P graft train` with expert_parallel_size P do.
//  * training step (forward_backward): each rank's loss equals the single-process loss of its sequence
//    (bit for bit), and the group's LoRA gradients (every module, every expert) equal the single-process
//    sum over the sequences within 1e-6, with LoRA dropout on and with gradient checkpointing;
//  * inference (Model::forward through model::moe_experts_sharded): logits equal the unsharded ones;
//  * the sequences cover empty experts (a 1-token sequence), skewed routing (one token repeated) and a
//    rank with no sequence (a label-less token, as the trainer runs), for every MoE family: DeepSeek's
//    group-limited routing and shared expert, Qwen2-MoE's gated shared expert, Llama 4's input scaling.
#include <gtest/gtest.h>
#include <omp.h>

#include <barrier>
#include <cmath>
#include <filesystem>
#include <map>
#include <unistd.h>
#include <random>
#include <thread>

#include "../../common/random_lora.hpp"
#include "graft/adapters/combine.hpp"
#include "graft/adapters/origin.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"
#include "graft/model/generate.hpp"
#include "graft/cpu/cpu_backend.hpp"
#include "graft/model/expert_parallel.hpp"
#include "graft/model/model.hpp"
#include "graft/model/presets.hpp"
#include "graft/train/data_parallel.hpp"
#include "graft/train/lora_train.hpp"

namespace graft {
namespace {

using model::ExpertProj;
using model::Module;

// The group's shared mailbox: box[from][to].
struct Mailbox {
  explicit Mailbox(int p) : size(p), bar(p), box(static_cast<size_t>(p)) {}
  int size;
  std::barrier<> bar;
  std::vector<std::vector<std::string>> box;
  int64_t exchanges = 0;  // counted by rank 0
};
class ThreadGroup final : public model::ExpertParallel {
 public:
  ThreadGroup(Mailbox& m, int rank, bool driven = false) : m_(m), rank_(rank), driven_(driven) {}
  bool driven() const override { return driven_; }
  int rank() const override { return rank_; }
  int size() const override { return m_.size; }
  std::vector<std::string> exchange(const std::vector<std::string>& send) override {
    EXPECT_EQ(send.size(), static_cast<size_t>(m_.size));
    m_.box[static_cast<size_t>(rank_)] = send;
    m_.bar.arrive_and_wait();
    std::vector<std::string> got;
    for (int r = 0; r < m_.size; ++r) got.push_back(m_.box[static_cast<size_t>(r)][static_cast<size_t>(rank_)]);
    if (rank_ == 0) ++m_.exchanges;
    m_.bar.arrive_and_wait();  // nobody refills the box before everyone has read it
    return got;
  }

 private:
  Mailbox& m_;
  int rank_;
  bool driven_;
};

train::TrainableAdapter adapter_for(const model::Model& m) { return testing::random_lora(m); }

std::vector<Tensor*> grads_of(train::TrainableAdapter& ad) {
  std::vector<Tensor*> g;
  for (auto& [k, p] : ad.params()) g.insert(g.end(), {&p.da, &p.db});
  for (auto& [k, p] : ad.expert_params()) g.insert(g.end(), {&p.da, &p.db});
  return g;
}

struct Seq {
  std::vector<int32_t> ids, labels;
};
// Rank r's sequence: varied lengths, one token repeated (skewed routing), a single token (most experts
// empty), and for the last rank of 4 nothing at all (it runs the trainer's label-less token).
std::vector<Seq> sequences(int P) {
  std::vector<Seq> s = {{{5, 77, 140, 9, 250, 33, 1, 60, 61}, {77, 140, 9, 250, 33, -100, 60, 61, 62}},
                        {{42, 42, 42, 42, 42, 42}, {42, 42, 42, 42, 42, 42}},
                        {{17}, {3}},
                        {{0}, {-100}}};
  s.resize(static_cast<size_t>(P));
  return s;
}

struct Case {
  std::string arch;
  int ranks;
  bool checkpointing;
};

class ExpertParallelStep : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertParallelStep, EqualsTheUnshardedModel) {
  const Case cs = GetParam();
  const int P = cs.ranks;
  const auto cfg = config::parse_model_config_text(model::preset_config(cs.arch, "tiny", 300, 1, 2).dump(), "tiny");
  const auto tensors = model::random_checkpoint(cfg, 8, 0.2f);
  const auto full = model::Model::from_tensors(cfg, tensors);
  const auto seqs = sequences(P);
  train::StepOptions so;
  so.lora_dropout = 0.1;
  so.dropout_seed = 1234;
  so.gradient_checkpointing = cs.checkpointing;

  // ---- single process: each sequence alone, gradients summed in double
  auto be = cpu::make_backend();
  so.backend = be.get();
  train::TrainableAdapter ref = adapter_for(full);
  train::GradientAccumulator ref_sum(grads_of(ref));
  ref_sum.zero();
  std::vector<double> ref_loss;
  std::vector<Tensor> ref_logits;
  for (int r = 0; r < P; ++r) {
    const Seq& s = seqs[static_cast<size_t>(r)];
    so.dropout_draw = static_cast<uint64_t>(r);
    ref.zero_grad();
    ref_loss.push_back(train::forward_backward(full, s.ids, s.labels, ref, {}, {}, so));
    ref_sum.add();
    model::Batch b;
    b.ids = s.ids;
    const model::LoraSource* slot = &ref;
    b.adapters = std::span<const model::LoraSource* const>(&slot, 1);
    ref_logits.push_back(full.forward(*be, b).clone());
  }
  ref_sum.store();

  // ---- P threads, experts sharded
  Mailbox box(P);
  std::vector<model::Model> shard;
  std::vector<train::TrainableAdapter> ads;
  for (int r = 0; r < P; ++r) {
    model::LoadOptions o;
    o.expert_shard_rank = r;
    o.expert_shard_count = P;
    shard.push_back(model::Model::from_tensors(cfg, tensors, o));
    shard.back().set_expert_parallel(std::make_shared<ThreadGroup>(box, r));
    ads.push_back(adapter_for(shard.back()));
  }
  std::vector<double> loss(static_cast<size_t>(P));
  std::vector<Tensor> logits(static_cast<size_t>(P));
  std::vector<std::vector<float>> sums(static_cast<size_t>(P));
  std::vector<std::string> errors(static_cast<size_t>(P));
  std::vector<std::thread> th;
  for (int r = 0; r < P; ++r)
    th.emplace_back([&, r] {
      try {
        omp_set_num_threads(1);
        auto tbe = cpu::make_backend();
        train::StepOptions o = so;
        o.backend = tbe.get();
        o.dropout_draw = static_cast<uint64_t>(r);
        auto& ad = ads[static_cast<size_t>(r)];
        const auto g = grads_of(ad);
        train::GradientAccumulator acc(g);
        acc.zero();
        o.flush_expert_grads = [&acc](train::LoraParam& p) {
          acc.add_and_zero(p.da);
          acc.add_and_zero(p.db);
        };
        const Seq& s = seqs[static_cast<size_t>(r)];
        ad.zero_grad();
        loss[static_cast<size_t>(r)] = train::forward_backward(shard[static_cast<size_t>(r)], s.ids, s.labels, ad, {}, {}, o);
        acc.add();
        acc.store();
        for (Tensor* t : g) sums[static_cast<size_t>(r)].insert(sums[static_cast<size_t>(r)].end(), t->data<float>(), t->data<float>() + t->numel());
        model::Batch b;
        b.ids = s.ids;
        const model::LoraSource* slot = &ad;
        b.adapters = std::span<const model::LoraSource* const>(&slot, 1);
        logits[static_cast<size_t>(r)] = shard[static_cast<size_t>(r)].forward(*tbe, b).clone();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();  // a failed rank would leave the others waiting: abort
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
        std::abort();
      }
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < P; ++r) ASSERT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;

  // every MoE layer exchanged twice forward (+ twice again when recomputed) and twice backward, then
  // twice per MoE layer for the inference forward
  int moe_layers = 0;
  for (const auto& L : full.layers()) moe_layers += L.kind.moe;
  EXPECT_EQ(box.exchanges, moe_layers * ((cs.checkpointing ? 4 : 2) + 2 + 2));
  for (int r = 0; r < P; ++r) {
    EXPECT_EQ(loss[static_cast<size_t>(r)], ref_loss[static_cast<size_t>(r)]) << "rank " << r;
    const Tensor& a = logits[static_cast<size_t>(r)];
    const Tensor& b = ref_logits[static_cast<size_t>(r)];
    ASSERT_EQ(a.numel(), b.numel());
    double num = 0, den = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      const double d = double(a.data<float>()[i]) - b.data<float>()[i];
      num += d * d;
      den += double(b.data<float>()[i]) * b.data<float>()[i];
    }
    EXPECT_LE(std::sqrt(num / den), 1e-6) << "logits of rank " << r;
  }
  // The group's gradient = Σ over ranks of what each holds (the trainer's all-reduce).
  const auto rg = grads_of(ref);
  double num = 0, den = 0, max_abs = 0;
  size_t at = 0;
  for (Tensor* t : rg)
    for (int64_t i = 0; i < t->numel(); ++i, ++at) {
      double s = 0;
      for (int r = 0; r < P; ++r) s += sums[static_cast<size_t>(r)][at];
      const double d = s - t->data<float>()[i];
      num += d * d;
      den += double(t->data<float>()[i]) * t->data<float>()[i];
      max_abs = std::max(max_abs, std::abs(d));
    }
  ASSERT_EQ(at, sums[0].size());
  ASSERT_GT(den, 0.0);
  std::printf("%s, %d ranks%s: LoRA gradients rel %.3g (max abs %.3g), %lld exchanges\n", cs.arch.c_str(), P,
              cs.checkpointing ? ", checkpointing" : "", std::sqrt(num / den), max_abs, static_cast<long long>(box.exchanges));
  EXPECT_LE(std::sqrt(num / den), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(
    Families, ExpertParallelStep,
    ::testing::Values(Case{"qwen3_moe", 2, false}, Case{"qwen3_moe", 4, true}, Case{"mixtral", 4, false},
                      Case{"qwen2_moe", 2, false}, Case{"qwen2_moe", 4, false}, Case{"deepseek_v2", 4, false},
                      Case{"deepseek_v3", 2, true}, Case{"deepseek_v3", 4, false}, Case{"llama4", 2, false},
                      Case{"llama4", 4, false}),
    [](const auto& info) {
      return info.param.arch + "_" + std::to_string(info.param.ranks) + (info.param.checkpointing ? "_ckpt" : "");
    });

TEST(ExpertShard, ContiguousShardsCoverEveryExpertOnce) {
  for (int64_t E : {1, 3, 8, 64, 257})
    for (int P : {1, 2, 3, 4, 7}) {
      if (E < P) continue;
      int64_t next = 0;
      for (int r = 0; r < P; ++r) {
        const auto [first, last] = model::expert_shard(E, r, P);
        EXPECT_EQ(first, next);
        EXPECT_GE(last - first, E / P);
        EXPECT_LE(last - first, E / P + 1);
        for (int64_t e = first; e < last; ++e) EXPECT_EQ(model::expert_owner(e, E, P), r) << E << " " << P << " " << e;
        next = last;
      }
      EXPECT_EQ(next, E);
    }
}

TEST(ExpertShard, ShardedLoadHoldsOnlyItsExperts) {
  const auto cfg = config::parse_model_config_text(model::preset_config("qwen3_moe", "tiny", 300, 1, 2).dump(), "tiny");
  const auto tensors = model::random_checkpoint(cfg, 8, 0.2f);
  const auto full = model::Model::from_tensors(cfg, tensors);
  model::LoadOptions o;
  o.expert_shard_rank = 1;
  o.expert_shard_count = 2;
  auto half = model::Model::from_tensors(cfg, tensors, o);
  const model::LayerWeights* moe = nullptr;
  for (const auto& L : half.layers())
    if (L.kind.moe && !moe) moe = &L;
  ASSERT_NE(moe, nullptr);
  const auto& ex = moe->moe.experts;
  ASSERT_EQ(ex.num_experts(), 8);
  for (int e = 0; e < 8; ++e) {
    EXPECT_EQ(ex.gate[static_cast<size_t>(e)].defined(), e >= 4) << e;
    EXPECT_EQ(ex.down[static_cast<size_t>(e)].out, cfg.hidden_size) << "shape kept for " << e;
  }
  EXPECT_LT(half.weight_bytes(), full.weight_bytes());
  // An expert-parallel inference worker: its experts and nothing else; it cannot run the model.
  o.experts_only = true;
  auto worker = model::Model::from_tensors(cfg, tensors, o);
  size_t expert_bytes = 0;
  for (const auto& L : half.layers())
    for (const auto* v : {&L.moe.experts.gate, &L.moe.experts.up, &L.moe.experts.down})
      for (const auto& w : *v) expert_bytes += w.bytes();
  EXPECT_EQ(worker.weight_bytes(), expert_bytes);
  EXPECT_TRUE(worker.experts_only());
  auto be = cpu::make_backend();
  const std::vector<int32_t> ids = {1, 2};
  model::Batch b;
  b.ids = ids;
  try {
    worker.forward(*be, b);
    FAIL() << "a worker model ran a forward";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds only routed experts"), std::string::npos) << e.what();
  }
  // A group whose rank or size differs from the loaded shard is refused, naming both.
  Mailbox box(2);
  try {
    half.set_expert_parallel(std::make_shared<ThreadGroup>(box, 0));
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds expert shard 1 of 2, but the expert group is rank 0 of 2"), std::string::npos)
        << e.what();
  }
}


// A PEFT adapter on disk with LoRA on o_proj, the dense MLPs and every expert (random A and B), loaded back so that
// it carries its origin ("peft:<dir>").
adapters::Adapter saved_adapter(const model::Model& m, const std::string& dir, uint64_t seed) {
  adapters::Adapter a;
  a.config = adapters::make_config(4, 8.0, {"o_proj", "gate_proj", "up_proj", "down_proj"});
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0, 0.1f);
  auto factors = [&](int64_t in, int64_t out) {
    LoraFactors f;
    f.a = Tensor::empty({4, in}, DType::F32);
    f.b = Tensor::empty({out, 4}, DType::F32);
    for (Tensor* t : {&f.a, &f.b})
      for (int64_t i = 0; i < t->numel(); ++i) t->data<float>()[i] = nd(rng);
    f.scale = 2.0f;
    return f;
  };
  for (int l = 0; l < static_cast<int>(m.layers().size()); ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    a.modules[{l, Module::O}] = factors(L.attn.o.in, L.attn.o.out);
    if (!L.kind.moe) {
      for (Module mod : {Module::Gate, Module::Up, Module::Down}) {
        const LinearWeight* w = model::dense_weight(L, mod);
        if (w && w->defined()) a.modules[{l, mod}] = factors(w->in, w->out);
      }
      continue;
    }
    const auto& ex = L.moe.experts;
    for (int e = 0; e < static_cast<int>(ex.num_experts()); ++e) {
      a.experts[{l, ExpertProj::Gate, e}] = factors(ex.gate[static_cast<size_t>(e)].in, ex.gate[static_cast<size_t>(e)].out);
      a.experts[{l, ExpertProj::Up, e}] = factors(ex.up[static_cast<size_t>(e)].in, ex.up[static_cast<size_t>(e)].out);
      a.experts[{l, ExpertProj::Down, e}] = factors(ex.down[static_cast<size_t>(e)].in, ex.down[static_cast<size_t>(e)].out);
    }
  }
  adapters::save_peft(dir, a, m.config());
  return adapters::load_peft(dir, m.config());
}

double rel_diff(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double d = double(a.data<float>()[i]) - b.data<float>()[i];
    num += d * d;
    den += double(b.data<float>()[i]) * b.data<float>()[i];
  }
  return std::sqrt(num / den);
}

// Driven group (expert-parallel inference): rank 0 alone runs the model — a batch mixing the base, an
// adapter and a weighted combination of two adapters per row, then greedy generation — while ranks 1
// and 2 answer their experts' rows, rebuilding the adapters from their origins.
TEST(ExpertParallelInference, DrivenGroupEqualsTheUnshardedModel) {
  for (const std::string arch : {"qwen3_moe", "llama4", "deepseek_v3"}) {
    SCOPED_TRACE(arch);
    const int P = 3;
    const auto cfg = config::parse_model_config_text(model::preset_config(arch, "tiny", 300, 1, 2).dump(), "tiny");
    const auto tensors = model::random_checkpoint(cfg, 8, 0.2f);
    const auto full = model::Model::from_tensors(cfg, tensors);
    const auto dir = std::filesystem::temp_directory_path() / ("graft_ep_infer_" + std::to_string(::getpid()) + "_" + arch);
    std::filesystem::create_directories(dir);
    const adapters::Adapter a1 = saved_adapter(full, (dir / "a1").string(), 1);
    const adapters::Adapter a2 = saved_adapter(full, (dir / "a2").string(), 2);
    ASSERT_EQ(a1.origin(), "peft:" + (dir / "a1").string());
    const std::vector<const adapters::Adapter*> both = {&a1, &a2};
    const std::vector<float> ws = {0.5f, 1.5f};
    const adapters::Adapter mix = adapters::combine(both, ws);
    ASSERT_EQ(mix.origin().rfind("combine:", 0), 0u) << mix.origin();
    const std::vector<int32_t> ids = {5, 77, 140, 9, 250, 33, 42, 42, 42, 1};
    const std::vector<int32_t> row_adapter = {-1, 0, 1, 1, 0, -1, 1, 1, 0, 1};
    const std::vector<const model::LoraSource*> slots = {&a1, &mix};
    model::Batch b;
    b.ids = ids;
    b.adapters = slots;
    b.row_adapter = row_adapter;
    auto be = cpu::make_backend();
    const Tensor want = full.forward(*be, b).clone();
    model::GenerateOptions go;
    go.max_tokens = 12;
    go.adapter = &mix;
    const auto want_gen = model::generate(full, *be, std::span<const int32_t>(ids).first(4), go);

    Mailbox box(P);
    std::vector<model::Model> shard;
    for (int r = 0; r < P; ++r) {
      model::LoadOptions o;
      o.expert_shard_rank = r;
      o.expert_shard_count = P;
      o.experts_only = r > 0;  // the workers hold their experts only
      shard.push_back(model::Model::from_tensors(cfg, tensors, o));
      shard.back().set_expert_parallel(std::make_shared<ThreadGroup>(box, r, /*driven=*/true));
    }
    Tensor got;
    std::vector<int32_t> got_gen;
    std::string refusal;
    std::vector<int64_t> served(static_cast<size_t>(P), 0);
    std::vector<std::thread> th;
    for (int r = 0; r < P; ++r)
      th.emplace_back([&, r] {
        try {
          omp_set_num_threads(1);
          auto tbe = cpu::make_backend();
          model::Model& m = shard[static_cast<size_t>(r)];
          if (r > 0) {
            std::map<std::string, adapters::Adapter> cache;
            served[static_cast<size_t>(r)] = model::serve_expert_rows(m, *tbe, *m.expert_parallel(), [&](const std::string& o) {
              auto it = cache.find(o);
              if (it == cache.end()) it = cache.emplace(o, adapters::load_origin(o, cfg)).first;
              return static_cast<const model::LoraSource*>(&it->second);
            });
            return;
          }
          got = m.forward(*tbe, b).clone();
          got_gen = model::generate(m, *tbe, std::span<const int32_t>(ids).first(4), go);
          // An adapter built in memory has no origin: the workers could not load its expert LoRA.
          adapters::Adapter anon = a1;
          anon.source.clear();
          const std::vector<const model::LoraSource*> s1 = {&anon};
          model::Batch bb;
          bb.ids = ids;
          bb.adapters = s1;
          try {
            m.forward(*tbe, bb);
          } catch (const Error& e) {
            refusal = e.what();
          }
          model::stop_expert_workers(*m.expert_parallel());
        } catch (const std::exception& e) {
          std::fprintf(stderr, "rank %d: %s\n", r, e.what());
          std::abort();
        }
      });
    for (auto& t : th) t.join();
    std::filesystem::remove_all(dir);
    ASSERT_TRUE(got.defined());
    EXPECT_LE(rel_diff(got, want), 1e-6);
    EXPECT_EQ(got_gen, want_gen);
    EXPECT_NE(refusal.find("has expert LoRA but no origin the other ranks can load it from"), std::string::npos) << refusal;
    int moe_layers = 0;
    for (const auto& L : full.layers()) moe_layers += L.kind.moe;
    // one forward, then the prompt and 11 decode steps (the 12th token needs no forward)
    EXPECT_EQ(served[1], moe_layers * (1 + 1 + 11));
    EXPECT_EQ(served[2], served[1]);
    std::printf("%s: driven group of %d, logits rel %.3g, %zu generated ids equal, %lld MoE layers served per worker\n",
                arch.c_str(), P, rel_diff(got, want), got_gen.size(), static_cast<long long>(served[1]));
  }
}

}  // namespace
}  // namespace graft
