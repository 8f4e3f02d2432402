// Merge an adapter into a copy of its base checkpoint.
#include <filesystem>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "graft/adapters/merge.hpp"
#include "graft/config/model_config.hpp"
#include "graft/error.hpp"
#include "graft/io/safetensors.hpp"
#include "graft/mmap_file.hpp"
#include "graft/parallel.hpp"
#include "naming.hpp"

namespace graft::adapters {

namespace fs = std::filesystem;
using model::ExpertProj;

namespace {
// W(o, i) = w[o·so + i·si] += scale · Σ_k B[o, k] A[k, i], for o in [0, out), i in [0, in).
void add_delta_strided(float* w, int64_t so, int64_t si, int64_t out, int64_t in, const LoraFactors& f) {
  const int64_t r = f.rank();
  GRAFT_CHECK(f.a.dtype() == DType::F32 && f.b.dtype() == DType::F32 && f.a.is_contiguous() && f.b.is_contiguous() &&
                  f.a.size(1) == in && f.b.size(0) == out && f.b.size(1) == r,
              "LoRA factors {} / {} do not fit a [{}, {}] weight", f.a.describe(), f.b.describe(), out, in);
  const float* A = f.a.data<float>();
  const float* B = f.b.data<float>();
  const double s = f.scale;
#pragma omp parallel for schedule(static) if (graft::parallel_worth(out * in * r))
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      double d = 0;
      for (int64_t k = 0; k < r; ++k) d += double(B[o * r + k]) * A[k * in + i];
      float& x = w[o * so + i * si];
      x = static_cast<float>(x + s * d);
    }
}

// One contribution to a stored tensor.
struct Delta {
  const LoraFactors* f;
  int64_t expert = -1;    // fused 3-D tensors: the expert slice
  int64_t row0 = 0;       // fused gate_up: 0 (gate) or I (up), in the out dimension
  bool in_out = false;    // Llama 4 fused layout [E, in, out]
  std::string what;       // for errors
};

bool weight_file(const fs::path& p) {
  static const std::vector<std::string> skip = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".onnx", ".ckpt"};
  const std::string ext = p.extension().string();
  for (auto& s : skip)
    if (ext == s) return true;
  return false;
}
}  // namespace

void add_lora_delta(Tensor& w, const LoraFactors& f) {
  GRAFT_CHECK(w.dtype() == DType::F32 && w.ndim() == 2 && w.is_contiguous(), "add_lora_delta: weight {} must be contiguous f32 2-D",
              w.describe());
  add_delta_strided(w.data<float>(), w.size(1), 1, w.size(0), w.size(1), f);
}

void merge_into(const std::string& base_dir, const Adapter& adapter, const std::string& out_dir) {
  GRAFT_CHECK_FIX(fs::is_directory(base_dir), "pass the base model directory", "base model directory '{}' not found", base_dir);
  GRAFT_CHECK_FIX(!adapter.embed_tokens() && !adapter.lm_head(),
                  "use the adapter unmerged (graft eval / generate / serve load it with its copies)",
                  "the adapter carries trained copies of embed_tokens/lm_head (PEFT modules_to_save): graft merge does not "
                  "write them into the base");
  const config::ModelConfig cfg = config::load_model_config(base_dir);
  GRAFT_CHECK_FIX(cfg.quantization.method.empty(),
                  "merge into the unquantized (bf16/fp16/fp32) base model and quantize the result afterwards",
                  "'{}' is a pre-quantized ({}) checkpoint: merging into quantized weights would lose the adapter",
                  base_dir, cfg.quantization.method);
  std::error_code ec;
  if (fs::exists(out_dir)) {
    GRAFT_CHECK_FIX(!fs::equivalent(base_dir, out_dir, ec), "choose a different --out directory",
                    "merge output '{}' is the base model directory itself", out_dir);
  }
  auto st = io::SafetensorsModel::open(base_dir);
  const std::string pre = st.contains("language_model.model.embed_tokens.weight") ? "language_model." : "";

  // Where every factor goes.
  std::map<std::string, std::vector<Delta>> deltas;
  for (auto& [k, f] : adapter.modules) {
    const std::string name = pre + module_key(cfg, k.first, k.second) + ".weight";
    GRAFT_CHECK_FIX(st.contains(name), "merge the adapter into the base model it was trained on",
                    "the adapter adapts '{}', which base model '{}' does not have", name, base_dir);
    deltas[name].push_back({&f, -1, 0, false, name});
  }
  const int64_t I = cfg.expert_intermediate_size();
  for (auto& [k, f] : adapter.experts) {
    const auto [l, p, e] = k;
    const std::string per = pre + expert_key(cfg, l, p, e) + ".weight";
    if (st.contains(per)) {
      deltas[per].push_back({&f, -1, 0, false, per});
      continue;
    }
    // Fused 3-D layouts: [E, 2I, H] / [E, H, I], Llama 4 [E, H, 2I] / [E, I, H].
    bool found = false;
    for (const std::string& block : {detail::fused_block(cfg), detail::experts_block(cfg)}) {
      const std::string name = fmt::format("{}model.layers.{}.{}.{}", pre, l, block,
                                           p == ExpertProj::Down ? "down_proj" : "gate_up_proj");
      if (!st.contains(name)) continue;
      deltas[name].push_back({&f, e, p == ExpertProj::Up ? I : 0, cfg.family == config::Family::Llama4,
                              fmt::format("{} (expert {})", name, e)});
      found = true;
      break;
    }
    GRAFT_CHECK_FIX(found, "merge the adapter into the base model it was trained on",
                    "the adapter adapts '{}', which base model '{}' has neither per expert nor fused", per, base_dir);
  }

  fs::create_directories(out_dir, ec);
  GRAFT_CHECK_FIX(!ec && fs::is_directory(out_dir), "choose a writable output directory", "cannot create '{}': {}", out_dir,
                  ec.message());
  size_t applied = 0;
  for (const auto& file : st.files()) {
    io::NamedTensors named;
    for (const auto& ti : file.tensors()) {
      auto it = deltas.find(ti.name);
      if (it == deltas.end()) {
        named.emplace_back(ti.name, file.tensor(ti.name));
        continue;
      }
      GRAFT_CHECK_FIX(ti.dtype == DType::F32 || ti.dtype == DType::BF16 || ti.dtype == DType::F16,
                      "merge into a bf16/fp16/fp32 base model", "cannot merge into '{}' of dtype {} in {}", ti.name,
                      dtype_name(ti.dtype), file.path());
      Tensor w = file.tensor(ti.name).to(DType::F32);
      for (const Delta& d : it->second) {
        if (d.expert < 0) {
          GRAFT_CHECK_FIX(w.ndim() == 2, "", "'{}' is not a 2-D weight ({})", ti.name, w.shape().str());
          const int64_t out = w.size(0), in = w.size(1);
          GRAFT_CHECK_FIX(d.f->b.size(0) == out && d.f->a.size(1) == in, "merge the adapter into the base model it was trained on",
                          "adapter factors for '{}' ({} / {}) do not fit its shape {}", ti.name, d.f->a.describe(),
                          d.f->b.describe(), w.shape().str());
          add_delta_strided(w.data<float>(), in, 1, out, in, *d.f);
        } else {
          GRAFT_CHECK_FIX(w.ndim() == 3 && d.expert < w.size(0), "", "'{}' is not a fused [E, ., .] expert tensor ({})",
                          ti.name, w.shape().str());
          const int64_t d1 = w.size(1), d2 = w.size(2);
          const int64_t out = d.f->b.size(0), in = d.f->a.size(1);
          float* base = w.data<float>() + d.expert * d1 * d2;
          if (!d.in_out) {  // [E, out_total, in]
            GRAFT_CHECK_FIX(in == d2 && d.row0 + out <= d1, "", "adapter factors for {} do not fit {}", d.what, w.shape().str());
            add_delta_strided(base + d.row0 * d2, d2, 1, out, in, *d.f);
          } else {  // [E, in, out_total]
            GRAFT_CHECK_FIX(in == d1 && d.row0 + out <= d2, "", "adapter factors for {} do not fit {}", d.what, w.shape().str());
            add_delta_strided(base + d.row0, 1, d2, out, in, *d.f);
          }
        }
        ++applied;
      }
      named.emplace_back(ti.name, ti.dtype == DType::F32 ? w : w.to(ti.dtype));
    }
    const std::string fname = fs::path(file.path()).filename().string();
    io::save_safetensors((fs::path(out_dir) / fname).string(), named, file.metadata(), io::WriteOrder::Given);
  }
  GRAFT_CHECK(applied == adapter.modules.size() + adapter.experts.size(), "merge applied {} of {} factors", applied,
              adapter.modules.size() + adapter.experts.size());
  // Everything else (config, generation config, tokenizer files, shard index) is copied as is.
  for (const auto& ent : fs::directory_iterator(base_dir)) {
    if (!ent.is_regular_file() || weight_file(ent.path())) continue;
    const std::string text = read_text_file(ent.path().string());
    write_file_atomic((fs::path(out_dir) / ent.path().filename()).string(), text.data(), text.size());
  }
}

}  // namespace graft::adapters
