// `graft init-model --arch ARCH --preset tiny|small --out DIR [--seed S] [--tokenizer DIR] [--dtype f32|bf16]
//  [--embed-std X]`
// Writes a deterministic random-weight model in real Hugging Face layout: config.json,
// generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json. The tokenizer
// is copied from --tokenizer DIR (e.g. the real Qwen3 tokenizer in ../shared/assets/tokenizers/qwen3)
// or is graft's tiny byte-level one.
#include <cstdio>

#include "command.hpp"
#include "graft/model/init_model.hpp"

namespace {
graft::cli::Registration reg{"init-model", 15, [](CLI::App& app) {
  auto a = std::make_shared<graft::model::InitModelOptions>();
  auto* sub = app.add_subcommand("init-model", "Write a deterministic random-weight model in Hugging Face layout");
  sub->add_option("--arch", a->arch, "Architecture (model_type): llama, qwen2, qwen3, qwen2_moe, qwen3_moe, mixtral, "
                                     "deepseek_v2, deepseek_v3, llama4")->required();
  sub->add_option("--preset", a->preset, "Size preset: tiny (hidden 64) or small (~100M parameters)");
  sub->add_option("--out", a->out, "Output directory")->required();
  sub->add_option("--seed", a->seed, "Random seed (same seed, same bytes)");
  sub->add_option("--tokenizer", a->tokenizer_dir, "Directory with tokenizer.json (+ tokenizer_config.json) to use");
  sub->add_option("--dtype", a->dtype, "Weight dtype in model.safetensors: f32 (default) or bf16");
  sub->add_option("--embed-std", a->embed_std, "Std of embeddings / lm_head (default 0.02)");
  sub->callback([a] {
    auto r = graft::model::write_random_model(*a);
    std::printf("wrote %s: %s (%s preset), %lld parameters in %lld tensors, vocab %lld, seed %llu\n", a->out.c_str(),
                a->arch.c_str(), a->preset.c_str(), static_cast<long long>(r.params), static_cast<long long>(r.tensors),
                static_cast<long long>(r.vocab), static_cast<unsigned long long>(a->seed));
  });
}};
}  // namespace
