// `graft merge MODEL_DIR --adapter DIR --out DIR`: writes a copy of MODEL_DIR with a PEFT LoRA adapter
// merged into its weights (W + scale·B·A; per-expert and fused expert layouts; config, tokenizer and
// other files copied). The result loads anywhere the base does, without the adapter.
#include <cstdio>

#include "command.hpp"
#include "graft/adapters/merge.hpp"
#include "graft/adapters/peft.hpp"
#include "graft/config/model_config.hpp"

namespace {
graft::cli::Registration reg{"merge", 25, [](CLI::App& app) {
  struct Args {
    std::string dir, adapter, out;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("merge", "Merge a PEFT LoRA adapter into a copy of its base model");
  sub->add_option("model_dir", a->dir, "Hugging Face model directory (unquantized base)")->required();
  sub->add_option("--adapter", a->adapter, "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
      ->required();
  sub->add_option("--out", a->out, "Output directory")->required();
  sub->callback([a] {
    const auto cfg = graft::config::load_model_config(a->dir);
    const auto ad = graft::adapters::load_peft(a->adapter, cfg);
    graft::adapters::merge_into(a->dir, ad, a->out);
    std::printf("wrote %s: %s merged with %s (%zu modules, %zu expert projections, max rank %lld)\n", a->out.c_str(),
                a->dir.c_str(), a->adapter.c_str(), ad.modules.size(), ad.experts.size(),
                static_cast<long long>(ad.max_rank()));
  });
}};
}  // namespace
