// The training loop (see trainer.hpp).
#include "graft/train/trainer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "graft/adapters/peft.hpp"
#include "graft/chat_template/chat_template.hpp"
#include "graft/backend/make_backend.hpp"
#include "graft/cpu/reference_bwd.hpp"
#include "graft/error.hpp"
#include "graft/mmap_file.hpp"
#include "graft/tokenizer/tokenizer.hpp"
#include "graft/train/chat_templates.hpp"
#include "graft/train/checkpoint.hpp"
#include "graft/train/data.hpp"
#include "graft/train/data_parallel.hpp"
#include "graft/dist/expert_group.hpp"
#include "graft/model/expert_parallel.hpp"
#include "graft/train/lora_train.hpp"
#include "graft/train/optimizer.hpp"
#include "graft/train/plot.hpp"

namespace graft::train {
namespace fs = std::filesystem;
using model::ExpertProj;
using model::Module;

namespace {

adapters::PeftConfig peft_config_of(const Recipe& r) {
  std::vector<std::string> mods(r.lora_target_modules().begin(), r.lora_target_modules().end());
  std::vector<std::string> params(r.lora_target_parameters().begin(), r.lora_target_parameters().end());
  auto c = adapters::make_config(r.lora_r(), r.lora_alpha(), mods, params);
  c.target_modules_regex = r.lora_target_modules_regex();
  c.all_linear = r.lora_target_linear();
  c.use_rslora = r.peft_use_rslora();
  c.lora_dropout = r.lora_dropout();
  for (auto& [k, v] : r.rank_pattern()) c.rank_pattern[k] = v;
  for (auto& [k, v] : r.alpha_pattern()) c.alpha_pattern[k] = v;
  c.base_model_name_or_path = r.base_model();
  for (const auto& n : r.lora_modules_to_save()) c.modules_to_save.push_back(adapters::saved_module_name(n));
  if (!c.modules_to_save.empty()) c.extra["modules_to_save"] = c.modules_to_save;
  return c;
}

DatasetSpec spec_of(const Dataset& d) {
  DatasetSpec s;
  s.path = d.path();
  s.type = d.type();
  s.field_messages = d.field_messages();
  for (auto& [k, v] : d.message_property_mappings()) s.message_property_mappings[k] = v;
  for (auto& [canon, aliases] : d.roles())
    for (const auto& a : aliases.values()) s.roles[a] = canon;
  if (d.roles_to_train_size()) s.roles_to_train.assign(d.roles_to_train().begin(), d.roles_to_train().end());
  s.train_on_eos = d.train_on_eos();
  return s;
}

PackedSequence single(const Sample& s) {
  PackedSequence p;
  p.ids = s.ids;
  p.labels = s.labels;
  p.positions.resize(s.ids.size());
  std::iota(p.positions.begin(), p.positions.end(), 0);
  p.segments.assign(s.ids.size(), 0);
  return p;
}

// Mean token loss of the adapter (or the base when `ad` is null) over `seqs`, forward only; each rank
// evaluates its shard and the (loss sum, token count) pair is summed over the ranks.
double eval_loss(const model::Model& m, Backend& be, const std::vector<PackedSequence>& seqs, const model::LoraSource* ad,
                 dist::Communicator& comm) {
  double sum = 0;
  int64_t n = 0;
  std::vector<const model::LoraSource*> slots;
  if (ad) slots.push_back(ad);
  const auto [first, last] = shard_range(static_cast<int64_t>(seqs.size()), comm.rank(), comm.size());
  // Expert parallel: every forward also serves the group's rows for this rank's experts, so each rank
  // runs as many forwards as rank 0; a rank with a sequence fewer runs one token and ignores it.
  if (const auto* ep = m.expert_parallel(); ep && ep->size() > 1 &&
                                             last - first < shard_range(static_cast<int64_t>(seqs.size()), 0, comm.size()).second) {
    model::Batch b;
    const int32_t id0 = 0;
    b.ids = std::span<const int32_t>(&id0, 1);
    b.adapters = slots;
    m.forward(be, b);
  }
  for (int64_t i = first; i < last; ++i) {
    const auto& s = seqs[static_cast<size_t>(i)];
    model::Batch b;
    b.ids = s.ids;
    b.positions = s.positions;
    b.segments = s.segments;
    b.adapters = slots;
    Tensor lg = m.forward(be, b);
    const int64_t valid = std::count_if(s.labels.begin(), s.labels.end(), [](int32_t l) { return l != -100; });
    if (valid == 0) continue;
    sum += static_cast<float>(be.cross_entropy(lg, s.labels, nullptr)) * valid;
    n += valid;
  }
  if (comm.size() > 1) {
    double both[2] = {sum, static_cast<double>(n)};
    comm.allreduce_sum(both, 2);
    sum = both[0], n = static_cast<int64_t>(both[1]);
  }
  return n ? sum / static_cast<double>(n) : 0.0;
}

std::string fmt_time(double s) {
  const int64_t t = static_cast<int64_t>(s);
  return t >= 3600 ? fmt::format("{}h{:02}m", t / 3600, t % 3600 / 60) : fmt::format("{}m{:02}s", t / 60, t % 60);
}
}  // namespace

TrainSummary run_training(const LoadedRecipe& lr, const TrainOptions& opt) {
  const Recipe& r = lr.proto;
  TrainSummary sum;
  // Data parallel (docs/distributed.md): every rank runs this function; rank 0 alone writes files.
  const auto solo = dist::make_single_communicator();
  dist::Communicator& comm = opt.comm ? *opt.comm : *solo;
  const bool root = comm.is_root();
  check_same_run(comm, lr.hash, lr.text, GRAFT_VERSION);
  const ParallelLayout layout = resolve_parallel_layout(r, comm.size());
  GRAFT_CHECK_FIX(comm.size() == 1 || !opt.should_stop, "stop hooks are for single-process runs (graft serve's jobs)",
                  "TrainOptions::should_stop is not supported with {} ranks", comm.size());
  const fs::path out = r.output_dir();
  std::error_code ec;
  fs::create_directories(out / "checkpoints", ec);
  GRAFT_CHECK_FIX(!ec && ::access(out.c_str(), W_OK) == 0, "choose a writable output_dir",
                  "cannot write to output_dir '{}': {}", out.string(), ec ? ec.message() : "permission denied");
  // A save interrupted by a kill leaves its temp file behind; nothing of this run has been written yet.
  if (root)
    for (const auto& stale : remove_stale_checkpoint_temps((out / "checkpoints").string()))
      std::fprintf(stderr, "removed %s (left by an interrupted checkpoint save)\n", stale.c_str());
  // ---- model and tokenizer
  model::LoadOptions lo;
  lo.load_in_4bit = r.load_in_4bit();
  lo.double_quant = r.bnb_4bit_use_double_quant();
  lo.config_overrides_json = r.overrides_of_model_config();
  GRAFT_CHECK_FIX(!opt.base || lo.config_overrides_json.empty(), "remove overrides_of_model_config from this recipe",
                  "overrides_of_model_config ({}) needs graft to load base_model itself, but this run was given a loaded "
                  "base model", lo.config_overrides_json);
  // Expert parallel: this rank loads only its expert group's shard of the routed experts.
  const bool ep = layout.expert_parallel > 1;
  GRAFT_CHECK_FIX(!ep || !opt.base, "leave expert_parallel_size out for this run",
                  "expert_parallel_size: {} needs graft to load base_model itself (sharded), but this run was given a "
                  "loaded base model", layout.expert_parallel);
  if (ep) {
    lo.expert_shard_rank = comm.rank() % layout.expert_parallel;
    lo.expert_shard_count = layout.expert_parallel;
  }
  std::optional<model::Model> owned;
  if (!opt.base) owned.emplace(model::Model::load(r.base_model(), lo));
  const model::Model& m = opt.base ? *opt.base : *owned;
  const auto& cfg = m.config();
  if (ep) {
    GRAFT_CHECK_FIX(cfg.is_moe_model(), "leave expert_parallel_size out (or 1) for a dense model",
                    "expert_parallel_size: {}, but {} has no routed experts", layout.expert_parallel, r.base_model());
    owned->set_expert_parallel(dist::make_expert_parallel(comm, layout.expert_parallel));
    if (root) {
      const int64_t E = cfg.moe.num_experts, most = (E + layout.expert_parallel - 1) / layout.expert_parallel,
                    least = E / layout.expert_parallel;
      std::fprintf(stderr,
                   "expert parallel: %d group%s of %d ranks; each rank holds %s of %lld experts per MoE layer (rank 0: "
                   "%.1f MiB of base weights)\n",
                   layout.data_parallel, layout.data_parallel == 1 ? "" : "s", layout.expert_parallel,
                   (least == most ? std::to_string(most) : fmt::format("{}-{}", least, most)).c_str(),
                   static_cast<long long>(E), static_cast<double>(m.weight_bytes()) / (1 << 20));
    }
  }
  const std::string tok_dir = r.has_tokenizer() ? r.tokenizer() : r.base_model();
  auto tok = tokenizer::Tokenizer::from_file(tok_dir);
  std::string tok_json = read_text_file((fs::path(tok_dir) / "tokenizer.json").string());
  std::unique_ptr<chat_template::ChatTemplate> tpl = recipe_chat_template(r, tok, tok_dir);
  {
    const auto problems = special_token_problems(r, tok, tpl != nullptr);
    if (!problems.empty()) throw graft::Error(problems.front(), "", "");  // the text carries its fix
  }
  // special_tokens are template variables, not part of the template source: they key the data cache too.
  for (const auto& [k, v] : std::map<std::string, std::string>(r.special_tokens().begin(), r.special_tokens().end()))
    tok_json += fmt::format("\n#special_tokens.{}={}", k, v);
  // ---- data
  DataOptions dopt;
  dopt.sequence_len = r.sequence_len();
  dopt.train_on_inputs = r.train_on_inputs();
  set_model_token_ids(dopt, r.base_model(), cfg.vocab_size);
  const std::string cache = r.dataset_prepared_path().empty() ? (out / "prepared").string() : r.dataset_prepared_path();
  std::vector<Sample> train, val;
  if (!root) comm.barrier();  // rank 0 tokenizes and writes the cache first; the others then read it
  for (const auto& d : r.datasets()) {
    auto s = load_dataset_cached(spec_of(d), tok, tok_json, tpl.get(), dopt, cache);
    train.insert(train.end(), s.begin(), s.end());
  }
  for (const auto& d : r.test_datasets()) {
    auto s = load_dataset_cached(spec_of(d), tok, tok_json, tpl.get(), dopt, cache);
    val.insert(val.end(), s.begin(), s.end());
  }
  if (root) comm.barrier();
  if (r.val_set_size() > 0) {
    auto [t, v] = split_validation(std::move(train), r.val_set_size(), static_cast<uint64_t>(r.seed()));
    train = std::move(t);
    val.insert(val.end(), v.begin(), v.end());
  }
  GRAFT_CHECK_FIX(!train.empty(), "check the datasets' paths, types and sequence_len", "no training samples after loading {}",
                  r.datasets_size() ? r.datasets(0).path() : std::string("the datasets"));
  std::vector<PackedSequence> seqs, vseqs;
  if (r.sample_packing()) {
    seqs = pack(train, r.sequence_len());
    vseqs = pack(val, r.sequence_len());
  } else {
    for (const auto& s : train) seqs.push_back(single(s));
    for (const auto& s : val) vseqs.push_back(single(s));
  }
  sum.train_sequences = static_cast<int64_t>(seqs.size());
  sum.val_sequences = static_cast<int64_t>(vseqs.size());
  // ---- adapter on the recipe's targets
  const adapters::PeftConfig pc = peft_config_of(r);
  TrainableAdapter ad;
  std::vector<std::pair<LoraParam*, LoraParam*>> tied;  // (gate, up) sharing A
  std::mt19937_64 rng(static_cast<uint64_t>(r.seed()));
  std::vector<std::string> names;  // parameter names in optimizer order
  for (int l = 0; l < static_cast<int>(m.layers().size()); ++l) {
    const auto& L = m.layers()[static_cast<size_t>(l)];
    for (Module mod : model::kDenseModules) {
      const LinearWeight* w = model::dense_weight(L, mod);
      if (!w || !w->defined()) continue;
      const std::string key = fmt::format("model.layers.{}.{}", l, model::module_path(cfg.family, mod));
      if (!adapters::targets_module(pc, key, l)) continue;
      const int64_t rank = adapters::expected_rank(pc, key);
      auto& p = ad.add(l, mod, w->in, w->out, rank, 1.0f, rng);
      p.f.scale = static_cast<float>(adapters::lora_scale(pc, key, rank));
      names.push_back(key);
    }
    if (!L.kind.moe) continue;
    for (int e = 0; e < static_cast<int>(L.moe.experts.num_experts()); ++e)
      for (ExpertProj pj : {ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down}) {
        const std::string key = adapters::expert_key(cfg, l, pj, e);
        const std::string fused = adapters::fused_experts_key(cfg, l) + (pj == ExpertProj::Down ? ".down_proj" : ".gate_up_proj");
        const bool by_param = std::find_if(pc.target_parameters.begin(), pc.target_parameters.end(), [&](const std::string& t) {
                                return fused.size() >= t.size() && fused.compare(fused.size() - t.size(), t.size(), t) == 0;
                              }) != pc.target_parameters.end();
        if (!by_param && !adapters::targets_module(pc, key, l)) continue;
        const LinearWeight& w = pj == ExpertProj::Gate ? L.moe.experts.gate[static_cast<size_t>(e)]
                                : pj == ExpertProj::Up ? L.moe.experts.up[static_cast<size_t>(e)]
                                                       : L.moe.experts.down[static_cast<size_t>(e)];
        const int64_t rank = adapters::expected_rank(pc, by_param ? fused : key);
        auto& p = ad.add_expert(l, pj, e, w.in, w.out, rank, 1.0f, rng);
        p.f.scale = static_cast<float>(adapters::lora_scale(pc, by_param ? fused : key, rank));
        names.push_back(key);
        // A fused gate_up_proj LoRA (PEFT target_parameters) has one A for gate and up: tie them.
        if (by_param && pj == ExpertProj::Up)
          if (LoraParam* gp = ad.expert_param(l, ExpertProj::Gate, e)) {
            p.f.a = gp->f.a;  // shares storage
            tied.emplace_back(gp, &p);
          }
      }
  }
  GRAFT_CHECK_FIX(!names.empty(), "set lora_target_modules (e.g. [q_proj, v_proj]) or lora_target_linear: true",
                  "the recipe's LoRA targets match no module of this {} model", cfg.model_type);
  // Expert parallel: a rank keeps only its experts' LoRA (and so their gradients and optimizer state);
  // the replicas of one expert shard (the same rank of every expert group) reduce its gradients.
  std::vector<std::tuple<int, ExpertProj, int>> expert_keys;  // every expert LoRA of the run, map order
  std::unique_ptr<dist::Communicator> ep_comm, replica_comm;
  int64_t unheld_params = 0;  // trainable parameters held by the other ranks of the expert group
  if (ep) {
    const int P = layout.expert_parallel;
    ep_comm = comm.split(comm.rank() / P, comm.rank() % P);
    replica_comm = comm.split(comm.rank() % P, comm.rank() / P);
    for (auto it = ad.expert_params().begin(); it != ad.expert_params().end();) {
      expert_keys.push_back(it->first);
      if (model::expert_owner(std::get<2>(it->first), cfg.moe.num_experts, P) == comm.rank() % P) {
        ++it;
        continue;
      }
      LoraParam* p = &it->second;
      const bool tied_up = std::any_of(tied.begin(), tied.end(), [&](auto& t) { return t.second == p; });
      unheld_params += (tied_up ? 0 : p->f.a.numel()) + p->f.b.numel();
      tied.erase(std::remove_if(tied.begin(), tied.end(), [&](auto& t) { return t.first == p || t.second == p; }), tied.end());
      it = ad.expert_params().erase(it);
    }
  }
  // modules_to_save: fp32 copies of the embedding table / lm_head, trained fully (after the LoRA
  // parameters in the optimizer and checkpoint order).
  if (adapters::saves_module(pc, "embed_tokens")) ad.add_embed_tokens(m.embedding());
  if (adapters::saves_module(pc, "lm_head")) ad.add_lm_head(m.lm_head());
  std::vector<std::pair<std::string, FullParam*>> flist;
  if (FullParam* f = ad.embed_param()) flist.emplace_back("embed_tokens", f);
  if (FullParam* f = ad.lm_head_param()) flist.emplace_back("lm_head", f);
  AdamW adam({r.learning_rate(), r.adam_beta1(), r.adam_beta2(), r.adam_epsilon(), r.weight_decay()});
  // Parameters in a fixed order (map order): dense by (layer, module), then experts by (layer, proj, expert).
  std::vector<std::pair<std::string, LoraParam*>> plist;
  for (auto& [k, p] : ad.params()) plist.emplace_back(fmt::format("{}/{}", k.first, static_cast<int>(k.second)), &p);
  for (auto& [k, p] : ad.expert_params())
    plist.emplace_back(fmt::format("{}/e{}/{}", std::get<0>(k), std::get<2>(k), static_cast<int>(std::get<1>(k))), &p);
  std::deque<Tensor> shadows;  // stable addresses
  auto is_tied_up = [&](const LoraParam* p) {
    return std::any_of(tied.begin(), tied.end(), [&](auto& t) { return t.second == p; });
  };
  for (auto& [n, p] : plist) {
    // A tied (shared) A is optimised once, through the gate's parameter; the up's slot holds a
    // private copy that is never used, so the optimizer layout stays one (A, B) pair per module.
    if (is_tied_up(p)) {
      shadows.push_back(p->f.a.clone());
      adam.add({&shadows.back(), &p->da});
    } else {
      adam.add({&p->f.a, &p->da});
      sum.trainable_params += p->f.a.numel();
    }
    adam.add({&p->f.b, &p->db});
    sum.trainable_params += p->f.b.numel();
  }
  for (auto& [n, f] : flist) {
    adam.add({&f->w.dense, &f->grad});
    sum.trainable_params += f->w.dense.numel();
  }
  sum.trainable_params += unheld_params;
  const size_t full0 = 2 * plist.size();  // optimizer index of the first modules_to_save weight
  const size_t dense_params = ad.params().size();  // plist: dense modules first, then (held) experts
  // ---- schedule
  const int64_t per_step = static_cast<int64_t>(r.micro_batch_size()) * r.gradient_accumulation_steps();
  const int64_t total =
      r.has_max_steps() && r.max_steps() > 0
          ? r.max_steps()
          : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(r.num_epochs() * static_cast<double>(seqs.size()) /
                                                                 static_cast<double>(per_step))));
  const int64_t warmup = r.has_warmup_steps() ? r.warmup_steps()
                                              : static_cast<int64_t>(std::ceil(r.warmup_ratio() * static_cast<double>(total)));
  const Schedule sched = parse_schedule(r.lr_scheduler());
  // evals_per_epoch / saves_per_epoch as Axolotl: every ceil(total / (n * num_epochs)) steps (none
  // when that is the whole run or more).
  auto per_epoch_interval = [&](bool has, int32_t n, int32_t steps) -> int64_t {
    if (!has) return steps;
    const double frac = 1.0 / (static_cast<double>(n) * r.num_epochs());
    return frac < 1.0 ? std::max<int64_t>(1, static_cast<int64_t>(std::ceil(frac * static_cast<double>(total)))) : 0;
  };
  const int64_t eval_every = per_epoch_interval(r.has_evals_per_epoch(), r.evals_per_epoch(), r.eval_steps());
  const int64_t save_every = per_epoch_interval(r.has_saves_per_epoch(), r.saves_per_epoch(), r.save_steps());
  // ---- data order: a fixed permutation per epoch, so (epoch, cursor) is the whole data-loader state
  int64_t step = 0, epoch = 0, cursor = 0;
  std::vector<int64_t> order;
  auto shuffle_for = [&](int64_t ep) {
    order.resize(seqs.size());
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 g(static_cast<uint64_t>(r.seed()) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(ep));
    std::shuffle(order.begin(), order.end(), g);
  };
  std::string resume_path = r.resume_from_checkpoint();
  if (resume_path.empty() && opt.resume && fs::exists(out / "checkpoints")) {
    for (auto& e : fs::directory_iterator(out / "checkpoints"))
      if (e.path().extension() == ".h5" && e.path().string() > resume_path) resume_path = e.path().string();
  }
  resume_path = comm.broadcast_string(resume_path);  // every rank resumes from rank 0's choice
  const bool tty = ::isatty(2) != 0;
  if (!resume_path.empty()) {
    Checkpoint ck = load_checkpoint(resume_path);
    GRAFT_CHECK_FIX(ck.strings["recipe_hash"] == lr.hash, "resume with the recipe the checkpoint was made with",
                    "checkpoint '{}' was written by a different recipe (hash {} vs {})", resume_path,
                    ck.strings["recipe_hash"], lr.hash);
    for (size_t i = 0; i < plist.size(); ++i) {
      auto& [n, p] = plist[i];
      auto get = [&](const std::string& k, Tensor& dst) {
        auto it = ck.tensors.find(k);
        GRAFT_CHECK_FIX(it != ck.tensors.end() && it->second.shape() == dst.shape(),
                        "resume with the same recipe and base model", "checkpoint '{}' lacks tensor '{}' of shape {}",
                        resume_path, k, dst.shape().str());
        std::copy_n(it->second.data<float>(), dst.numel(), dst.data<float>());
      };
      get("lora/" + n + "/A", p->f.a);
      get("lora/" + n + "/B", p->f.b);
      get("adam_m/" + n + "/A", adam.m()[2 * i]);
      get("adam_v/" + n + "/A", adam.v()[2 * i]);
      get("adam_m/" + n + "/B", adam.m()[2 * i + 1]);
      get("adam_v/" + n + "/B", adam.v()[2 * i + 1]);
    }
    for (size_t j = 0; j < flist.size(); ++j)
      for (auto [k, dst] : {std::pair<std::string, Tensor*>{"full/", &flist[j].second->w.dense},
                            {"adam_m/full/", &adam.m()[full0 + j]}, {"adam_v/full/", &adam.v()[full0 + j]}}) {
        auto it = ck.tensors.find(k + flist[j].first);
        GRAFT_CHECK_FIX(it != ck.tensors.end() && it->second.shape() == dst->shape(),
                        "resume with the same recipe and base model", "checkpoint '{}' lacks tensor '{}' of shape {}",
                        resume_path, k + flist[j].first, dst->shape().str());
        std::copy_n(it->second.data<float>(), dst->numel(), dst->data<float>());
      }
    step = ck.step;
    adam.set_steps(step);
    epoch = ck.ints["epoch"];
    cursor = ck.ints["cursor"];
    sum.trained_tokens = ck.ints.count("tokens") ? ck.ints["tokens"] : 0;
    if (root) std::fprintf(stderr, "resumed from %s at step %lld\n", resume_path.c_str(), static_cast<long long>(step));
  }
  shuffle_for(epoch);
  // The step's gradient sum, over sequences and ranks, in double. Listed in the order the backward
  // finishes them (lm_head copy, layers last to first, embedding copy), so that during each rank's last
  // sequence of a step a bucket's all-reduce starts as soon as its layers are done (overlap).
  // Expert parallel: the experts' gradients have their own sum, reduced over the shard's replicas only.
  std::vector<std::pair<int, Tensor*>> staged, staged_experts;
  const int n_layers = static_cast<int>(m.layers().size());
  for (auto& [k, p] : ad.params()) staged.insert(staged.end(), {{k.first, &p.da}, {k.first, &p.db}});
  for (auto& [k, p] : ad.expert_params())
    (ep ? staged_experts : staged).insert((ep ? staged_experts : staged).end(), {{std::get<0>(k), &p.da}, {std::get<0>(k), &p.db}});
  for (auto& [n, f] : flist) staged.emplace_back(n == "lm_head" ? n_layers : -1, &f->grad);  // modules_to_save
  const auto accumulator = [](std::vector<std::pair<int, Tensor*>> v) {
    std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<Tensor*> grads;
    std::vector<int> stages;
    for (auto& [st, t] : v) grads.push_back(t), stages.push_back(st);
    return GradientAccumulator(grads, int64_t{1} << 21, stages);
  };
  GradientAccumulator grad_sum = accumulator(staged), expert_sum = accumulator(staged_experts);
  dist::Communicator& expert_reduce = ep ? *replica_comm : comm;  // over which expert_sum is reduced
  const std::function<void(int)> grads_ready = [&](int stage) {
    grad_sum.ready(stage);
    expert_sum.ready(stage);
  };
  // Expert parallel: each group of rows this rank's experts computed goes into the sum on its own.
  const std::function<void(LoraParam&)> flush = [&expert_sum](LoraParam& p) {
    expert_sum.add_and_zero(p.da);
    expert_sum.add_and_zero(p.db);
  };
  // Weights every replica holds (checked over all ranks) and this rank's experts (checked over the
  // shard's replicas).
  std::vector<const Tensor*> weights, expert_weights;
  for (size_t i = 0; i < adam.params().size(); ++i)
    (ep && i >= 2 * dense_params && i < full0 ? expert_weights : weights).push_back(adam.params()[i].value);
  // Expert parallel: rank 0 writes checkpoints and the export, so the expert group sends it the
  // experts it does not hold: (name, A, B, scale, Adam m/v of A and B) per held expert, in map order.
  const auto gather_experts = [&]() {
    std::vector<std::string> blobs;
    if (!ep) return blobs;
    std::string mine;
    const auto put_tensor = [&mine](const Tensor& t) {
      const int64_t n = t.numel();
      mine.append(reinterpret_cast<const char*>(&n), sizeof n);
      mine.append(reinterpret_cast<const char*>(t.data<float>()), static_cast<size_t>(n) * sizeof(float));
    };
    for (size_t i = dense_params; i < plist.size(); ++i) {
      const auto& [n, p] = plist[i];
      const int32_t len = static_cast<int32_t>(n.size());
      mine.append(reinterpret_cast<const char*>(&len), sizeof len);
      mine += n;
      mine.append(reinterpret_cast<const char*>(&p->f.scale), sizeof p->f.scale);
      for (const Tensor* t : {&p->f.a, &p->f.b, &adam.m()[2 * i], &adam.v()[2 * i], &adam.m()[2 * i + 1], &adam.v()[2 * i + 1]})
        put_tensor(*t);
    }
    return ep_comm->allgather(mine);
  };
  struct HeldElsewhere {
    std::string name;
    float scale;
    Tensor a, b, ma, va, mb, vb;
  };
  // The experts of ranks 1.. of the expert group, unpacked with the shapes of rank 0's copy of the key.
  const auto unpack_experts = [&](const std::vector<std::string>& blobs) {
    std::vector<HeldElsewhere> out;
    for (size_t r = 1; r < blobs.size(); ++r) {
      const std::string& b = blobs[r];
      size_t at = 0;
      const auto get = [&](void* dst, size_t bytes) {
        GRAFT_CHECK(at + bytes <= b.size(), "expert parallel: rank {}'s experts are truncated ({} bytes)", r, b.size());
        std::memcpy(dst, b.data() + at, bytes);
        at += bytes;
      };
      while (at < b.size()) {
        HeldElsewhere h;
        int32_t len = 0;
        get(&len, sizeof len);
        h.name.resize(static_cast<size_t>(len));
        get(h.name.data(), h.name.size());
        get(&h.scale, sizeof h.scale);
        for (Tensor* t : {&h.a, &h.b, &h.ma, &h.va, &h.mb, &h.vb}) {
          int64_t n = 0;
          get(&n, sizeof n);
          *t = Tensor::empty({n}, DType::F32);
          get(t->data<float>(), static_cast<size_t>(n) * sizeof(float));
        }
        out.push_back(std::move(h));
      }
    }
    return out;
  };
  // "layer/eE/proj" -> its key
  const auto expert_key_of = [](const std::string& n) {
    int l = 0, e = 0, pj = 0;
    GRAFT_CHECK(std::sscanf(n.c_str(), "%d/e%d/%d", &l, &e, &pj) == 3, "expert parallel: bad parameter name '{}'", n);
    return std::tuple<int, ExpertProj, int>{l, static_cast<ExpertProj>(pj), e};
  };
  // LoRA shapes of every expert key, from the model: A [r, in], B [out, r].
  const auto expert_shapes = [&](const std::tuple<int, ExpertProj, int>& k, int64_t numel_a, int64_t numel_b) {
    const auto& ex = m.layers()[static_cast<size_t>(std::get<0>(k))].moe.experts;
    const auto e = static_cast<size_t>(std::get<2>(k));
    const LinearWeight& w = std::get<1>(k) == ExpertProj::Gate ? ex.gate[e] : std::get<1>(k) == ExpertProj::Up ? ex.up[e] : ex.down[e];
    const int64_t r = numel_a / std::max<int64_t>(w.in, 1);
    GRAFT_CHECK(r * w.in == numel_a && numel_b == w.out * r, "expert parallel: expert LoRA sizes {} / {} do not fit {}x{}",
                numel_a, numel_b, w.out, w.in);
    return std::pair<Dims, Dims>{Dims{r, w.in}, Dims{w.out, r}};
  };
  // Rank 0 writes the checkpoint; every rank first checks that the replicas agree, then waits for it.
  auto save = [&](const fs::path& path) {
    check_replicas_agree(comm, fingerprint(weights), step);
    if (ep) check_replicas_agree(*replica_comm, fingerprint(expert_weights), step);
    const std::vector<std::string> blobs = gather_experts();
    if (!root) {
      comm.barrier();
      return;
    }
    Checkpoint ck;
    ck.step = step;
    for (size_t i = 0; i < plist.size(); ++i) {
      auto& [n, p] = plist[i];
      ck.tensors["lora/" + n + "/A"] = p->f.a.clone();
      ck.tensors["lora/" + n + "/B"] = p->f.b.clone();
      ck.tensors["adam_m/" + n + "/A"] = adam.m()[2 * i].clone();
      ck.tensors["adam_v/" + n + "/A"] = adam.v()[2 * i].clone();
      ck.tensors["adam_m/" + n + "/B"] = adam.m()[2 * i + 1].clone();
      ck.tensors["adam_v/" + n + "/B"] = adam.v()[2 * i + 1].clone();
    }
    for (auto& h : unpack_experts(blobs)) {  // expert parallel: the other ranks' experts
      const auto [da, db] = expert_shapes(expert_key_of(h.name), h.a.numel(), h.b.numel());
      ck.tensors["lora/" + h.name + "/A"] = h.a.reshape(da);
      ck.tensors["lora/" + h.name + "/B"] = h.b.reshape(db);
      ck.tensors["adam_m/" + h.name + "/A"] = h.ma.reshape(da);
      ck.tensors["adam_v/" + h.name + "/A"] = h.va.reshape(da);
      ck.tensors["adam_m/" + h.name + "/B"] = h.mb.reshape(db);
      ck.tensors["adam_v/" + h.name + "/B"] = h.vb.reshape(db);
    }
    for (size_t j = 0; j < flist.size(); ++j) {
      ck.tensors["full/" + flist[j].first] = flist[j].second->w.dense.clone();
      ck.tensors["adam_m/full/" + flist[j].first] = adam.m()[full0 + j].clone();
      ck.tensors["adam_v/full/" + flist[j].first] = adam.v()[full0 + j].clone();
    }
    ck.ints["epoch"] = epoch;
    ck.ints["cursor"] = cursor;
    ck.ints["tokens"] = sum.trained_tokens;
    ck.strings["recipe"] = lr.text;
    ck.strings["recipe_hash"] = lr.hash;
    ck.strings["graft_version"] = GRAFT_VERSION;
    save_checkpoint(path.string(), ck);
    comm.barrier();
  };
  auto be = make_backend(opt.device);
  GRAFT_CHECK_FIX(be->device().is_cpu() || (!ad.embed_param() && !ad.lm_head_param()), "train with --device cpu",
                  "lora_modules_to_save (embed_tokens / lm_head) trains on the CPU backend only, not on {}",
                  be->device().str());
  if (root && !be->device().is_cpu()) std::fprintf(stderr, "training on %s\n", be->device().str().c_str());
  if (!vseqs.empty() && step == 0) sum.base_eval_loss = eval_loss(m, *be, vseqs, nullptr, comm);
  // ---- steps
  std::ofstream metrics;
  if (root) metrics.open(out / "metrics.jsonl", step == 0 ? std::ios::trunc : std::ios::app);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens = 0, steps_run = 0;
  int64_t ep_sent = ep ? m.expert_parallel()->bytes_sent() : 0;  // eval before the first step is not a step's
  std::vector<std::pair<int64_t, double>> curve;
  while (step < total) {
    if (opt.should_stop && opt.should_stop()) {
      if (steps_run > 0) save(out / "checkpoints" / fmt::format("step-{:08}.h5", step));
      sum.steps = step;
      sum.stopped = true;
      return sum;
    }
    if (opt.before_step) opt.before_step();
    grad_sum.zero();
    expert_sum.zero();
    double loss = 0;
    // A stop requested during the step abandons it (no update) and rewinds the data cursor, so the run
    // stops within one micro-batch and a resume still continues bit-exactly.
    const int64_t epoch0 = epoch, cursor0 = cursor, trained0 = sum.trained_tokens, tokens0 = tokens;
    bool abandoned = false;
    // Every rank walks the whole global batch (the data position stays global); it computes only its
    // shard [mb_first, mb_last) of the step's sequences.
    const auto [mb_first, mb_last] = shard_range(per_step, comm.rank(), comm.size());
    // Expert parallel: a rank with a sequence fewer than rank 0 runs a filler pass (below).
    const bool needs_filler = ep && mb_last - mb_first < shard_range(per_step, 0, comm.size()).second;
    for (int64_t mb = 0; mb < per_step; ++mb) {
      if (opt.should_stop && opt.should_stop()) {
        abandoned = true;
        break;
      }
      if (cursor >= static_cast<int64_t>(order.size())) {
        ++epoch;
        cursor = 0;
        shuffle_for(epoch);
      }
      const PackedSequence& s = seqs[static_cast<size_t>(order[static_cast<size_t>(cursor++)])];
      tokens += static_cast<int64_t>(s.ids.size());
      sum.trained_tokens += static_cast<int64_t>(s.ids.size());
      if (mb < mb_first || mb >= mb_last) continue;
      StepOptions so;
      so.backend = be.get();
      so.gradient_checkpointing = r.gradient_checkpointing();
      so.lora_dropout = r.lora_dropout();
      so.dropout_seed = static_cast<uint64_t>(r.seed());
      so.dropout_draw = static_cast<uint64_t>(step * per_step + mb);  // restored by --resume with the step
      if (ep) so.flush_expert_grads = flush;
      const bool last = mb + 1 == mb_last && !needs_filler;  // this rank's last pass of the step
      if (last && comm.size() > 1) {
        grad_sum.begin_last(comm);
        if (ep) expert_sum.begin_last(expert_reduce);
        so.on_gradients_ready = grads_ready;
      }
      ad.zero_grad();  // this sequence's gradient alone, then added to the step's sum
      loss += forward_backward(m, s.ids, s.labels, ad, s.positions, s.segments, so);
      if (!last || comm.size() == 1) grad_sum.add(), expert_sum.add();
    }
    // Expert parallel: every rank of the group runs as many forward/backward passes as rank 0 (the
    // largest share), since each pass also computes the group's rows for this rank's experts. A rank
    // with one sequence fewer runs a one-token pass with no label: its own gradient is exactly zero.
    if (needs_filler && !abandoned) {
      StepOptions so;
      so.backend = be.get();
      so.gradient_checkpointing = r.gradient_checkpointing();
      so.lora_dropout = r.lora_dropout();
      so.dropout_seed = static_cast<uint64_t>(r.seed());
      so.flush_expert_grads = flush;
      grad_sum.begin_last(comm);  // the rank's last pass of the step
      expert_sum.begin_last(expert_reduce);
      so.on_gradients_ready = grads_ready;
      ad.zero_grad();
      const int32_t id0 = 0, no_label = -100;
      forward_backward(m, std::span<const int32_t>(&id0, 1), std::span<const int32_t>(&no_label, 1), ad, {}, {}, so);
    }
    if (abandoned) {
      if (epoch != epoch0) shuffle_for(epoch0);
      epoch = epoch0, cursor = cursor0, sum.trained_tokens = trained0, tokens = tokens0;
      if (steps_run > 0) save(out / "checkpoints" / fmt::format("step-{:08}.h5", step));
      sum.steps = step;
      sum.stopped = true;
      return sum;
    }
    // The step's sums over every rank's sequences. The last pass of each rank already started the
    // all-reduce of the buckets it finished; `reduce_wait_s` is what is left: waiting for the slowest
    // rank plus the part of the reduction the backward did not hide (rank 0's, in metrics.jsonl).
    double reduce_wait_s = 0;
    if (comm.size() > 1) {
      const auto c0 = std::chrono::steady_clock::now();
      grad_sum.finish(comm);  // the buckets the last pass did not start, then wait for all
      if (ep) expert_sum.finish(expert_reduce);
      comm.allreduce_sum(&loss, 1);
      reduce_wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count();
    }
    // Expert parallel: bytes every rank sent to the others in this step's expert all-to-alls (forward,
    // recompute and backward), summed over the ranks.
    double ep_bytes = 0;
    if (ep) {
      const int64_t now = m.expert_parallel()->bytes_sent();
      ep_bytes = static_cast<double>(now - ep_sent);
      ep_sent = now;
      comm.allreduce_sum(&ep_bytes, 1);
    }
    grad_sum.store();
    expert_sum.store();
    loss /= static_cast<double>(per_step);
    for (auto& [g, u] : tied) {  // the shared A gets the sum of both uses' gradients
      for (int64_t i = 0; i < g->da.numel(); ++i) g->da.data<float>()[i] += u->da.data<float>()[i];
      std::fill_n(u->da.data<float>(), u->da.numel(), 0.0f);
    }
    for (auto& [n, p] : plist) {  // mean over the sequences of the step
      for (Tensor* g : {&p->da, &p->db})
        for (int64_t i = 0; i < g->numel(); ++i) g->data<float>()[i] /= static_cast<float>(per_step);
    }
    for (auto& [n, f] : flist)
      for (int64_t i = 0; i < f->grad.numel(); ++i) f->grad.data<float>()[i] /= static_cast<float>(per_step);
    double gnorm = 0;
    if (!ep) {
      gnorm = clip_grad_norm(adam.params(), r.max_grad_norm());
    } else {  // Σ g² per tensor in the single-process order, the experts' from the ranks holding them
      double total = 0;
      for (size_t i = 0; i < 2 * dense_params; ++i) total += grad_sq_sum(*adam.params()[i].grad);
      std::vector<double> es(2 * expert_keys.size(), 0.0);
      for (size_t i = 0; i < expert_keys.size(); ++i)
        if (auto it = ad.expert_params().find(expert_keys[i]); it != ad.expert_params().end())
          es[2 * i] = grad_sq_sum(it->second.da), es[2 * i + 1] = grad_sq_sum(it->second.db);
      ep_comm->allreduce_sum(es.data(), static_cast<int64_t>(es.size()));  // one non-zero term each: exact
      for (double v : es) total += v;
      for (size_t i = full0; i < adam.params().size(); ++i) total += grad_sq_sum(*adam.params()[i].grad);
      gnorm = clip_grad_norm_given(adam.params(), r.max_grad_norm(), total);
    }
    const double lrate = lr_at(sched, r.learning_rate(), step, warmup, total);
    adam.step(lrate);
    ++step;
    ++steps_run;
    curve.emplace_back(step, loss);
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    StepLog log{step, total, loss, lrate, gnorm, static_cast<double>(tokens) / std::max(el, 1e-9), el,
                el / static_cast<double>(steps_run) * static_cast<double>(total - step)};
    if (eval_every > 0 && step % eval_every == 0 && !vseqs.empty()) log.eval_loss = eval_loss(m, *be, vseqs, &ad, comm);
    if (ep) ep_sent = m.expert_parallel()->bytes_sent();  // evaluation's exchanges are not the next step's
    nlohmann::json j = {{"step", step}, {"loss", loss}, {"lr", lrate}, {"grad_norm", gnorm}, {"tokens_per_s", log.tokens_per_s},
                        {"elapsed_s", el}};
    if (log.eval_loss >= 0) j["eval_loss"] = log.eval_loss;
    if (comm.size() > 1)  // rank 0's
      j["reduce_wait_s"] = reduce_wait_s, j["buckets"] = grad_sum.buckets(),
      j["buckets_overlapped"] = grad_sum.buckets_started_early();
    if (ep) j["expert_alltoall_bytes"] = ep_bytes, j["step_tokens"] = tokens - tokens0;
    if (root) metrics << j.dump() << "\n" << std::flush;
    if (root && opt.progress && (step % std::max(1, r.logging_steps()) == 0 || step == total || log.eval_loss >= 0)) {
      const int width = 24, filled = static_cast<int>(width * step / total);
      const std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.');
      std::fprintf(stderr, "%s[%s] step %lld/%lld loss %.4f lr %.2e %.0f tok/s ETA %s%s%s", tty ? "\r" : "", bar.c_str(),
                   static_cast<long long>(step), static_cast<long long>(total), loss, lrate, log.tokens_per_s,
                   fmt_time(log.eta_s).c_str(), log.eval_loss >= 0 ? fmt::format(" eval {:.4f}", log.eval_loss).c_str() : "",
                   tty && step != total && log.eval_loss < 0 ? "" : "\n");
    }
    if (opt.on_step) opt.on_step(log);
    sum.final_loss = loss;
    if (save_every > 0 && step % save_every == 0 && step < total)
      save(out / "checkpoints" / fmt::format("step-{:08}.h5", step));
    if (opt.stop_after_steps >= 0 && steps_run >= opt.stop_after_steps) {
      sum.steps = step;
      return sum;
    }
  }
  sum.steps = step;
  save(out / "checkpoints" / fmt::format("step-{:08}.h5", step));
  if (!vseqs.empty()) sum.eval_loss = eval_loss(m, *be, vseqs, &ad, comm);
  sum.adapter_dir = out.string();
  const std::vector<std::string> final_blobs = gather_experts();
  if (!root) {  // rank 0 exports; the others wait until the adapter and the plot are written
    comm.barrier();
    return sum;
  }
  // ---- export the PEFT adapter
  adapters::Adapter exported;
  exported.config = pc;
  for (auto& [k, p] : ad.params()) exported.modules[k] = LoraFactors{p.f.a.clone(), p.f.b.clone(), p.f.scale};
  for (auto& [k, p] : ad.expert_params()) exported.experts[k] = LoraFactors{p.f.a.clone(), p.f.b.clone(), p.f.scale};
  for (auto& h : unpack_experts(final_blobs)) {  // expert parallel: the other ranks' experts
    const auto k = expert_key_of(h.name);
    const auto [da, db] = expert_shapes(k, h.a.numel(), h.b.numel());
    exported.experts[k] = LoraFactors{h.a.reshape(da), h.b.reshape(db), h.scale};
  }
  if (const Tensor* e = ad.embed_tokens()) exported.embed_tokens_weight = e->clone();
  if (const LinearWeight* h = ad.lm_head()) exported.lm_head_weight = LinearWeight{h->out, h->in, h->dense.clone(), nullptr, {}};
  adapters::make_targets_explicit(exported, cfg);  // PEFT rewrites all-linear on MoE families (peft.hpp)
  adapters::save_peft(out.string(), exported, cfg);
  if (!curve.empty()) write_loss_plot((out / "loss.svg").string(), curve, fmt::format("graft train: {}", lr.source));
  comm.barrier();
  return sum;
}

}  // namespace graft::train
