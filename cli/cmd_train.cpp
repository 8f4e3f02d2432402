// `graft train RECIPE.yaml [--set key=value]... [--resume] [--print-recipe] [--check]`, also as
// `mpirun -np N graft train ...` (data parallel, docs/distributed.md).
// Fine-tunes LoRA adapters on the recipe's base model (CPU backend) and exports a PEFT adapter
// (adapter_config.json + adapter_model.safetensors) to output_dir, with metrics.jsonl, loss.svg and
// HDF5 checkpoints under output_dir/checkpoints. `--check` validates the recipe without loading the
// model (it reads config.json and the tokenizer when they are local) and exits 1 on any problem.
#include <cstdio>

#include "command.hpp"
#include "graft/dist/communicator.hpp"
#include "graft/error.hpp"
#include "graft/train/chat_templates.hpp"
#include "graft/train/trainer.hpp"

namespace {
graft::cli::Registration reg{"train", 50, [](CLI::App& app) {
  struct Args {
    std::string recipe;
    std::vector<std::string> set;
    bool resume = false, print = false, check = false;
    std::string device = "auto";
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand("train", "Fine-tune LoRA/QLoRA adapters from a YAML recipe");
  sub->add_option("recipe", a->recipe, "Recipe YAML (see docs/recipes.md)")->required();
  sub->add_option("--set", a->set, "Override a recipe key: --set lora_r=16 --set datasets.0.path=x.jsonl");
  sub->add_flag("--resume", a->resume, "Continue from the newest checkpoint in output_dir/checkpoints");
  sub->add_option("--device", a->device,
                  "Device of the training step: cpu, cuda, cuda:N, or auto (default: cuda:0 when a CUDA GPU is usable, "
                  "else cpu). Checkpoints and adapters are the same files on every device");
  sub->add_flag("--print-recipe", a->print, "Print the effective recipe (every key) and exit");
  sub->add_flag("--check", a->check,
                "Validate the recipe without loading the model: every problem at once, warnings for ignored keys; "
                "reads config.json / tokenizer files when local. Exit 0 = the recipe is valid");
  sub->callback([a] {
    auto r = graft::train::load_recipe(a->recipe, a->set);
    // Under mpirun every rank runs this (docs/distributed.md); rank 0 alone prints.
    graft::dist::Communicator* comm = a->print || a->check ? nullptr : &graft::dist::world();
    if (!comm || comm->is_root())
      for (const auto& w : r.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (a->print) {
      std::printf("%s", r.text.c_str());
      return;
    }
    if (a->check) {
      auto c = graft::train::check_recipe_files(r);
      for (const auto& n : c.notes) std::printf("note: %s\n", n.c_str());
      if (!c.problems.empty()) {
        std::string what = a->recipe + ": the recipe is valid, but training would fail:";
        for (size_t i = 0; i < c.problems.size(); ++i) what += "\n  " + std::to_string(i + 1) + ". " + c.problems[i];
        throw graft::Error(what, "", "fix each problem above and run --check again");
      }
      std::printf("%s: recipe OK (%zu warning%s); hash %s\n", a->recipe.c_str(), r.warnings.size(),
                  r.warnings.size() == 1 ? "" : "s", r.hash.c_str());
      return;
    }
    graft::train::TrainOptions o;
    o.resume = a->resume;
    o.device = a->device;
    o.comm = comm;
    auto s = graft::train::run_training(r, o);
    comm->finalize();
    if (!comm->is_root()) return;
    if (comm->size() > 1) std::printf("data parallel over %d ranks (%s)\n", comm->size(), comm->transport().c_str());
    std::printf("trained %lld steps on %lld sequences (%lld trainable parameters); final loss %.4f\n",
                static_cast<long long>(s.steps), static_cast<long long>(s.train_sequences),
                static_cast<long long>(s.trainable_params), s.final_loss);
    if (s.eval_loss >= 0)
      std::printf("held-out loss: base %.4f -> adapter %.4f (%lld sequences)\n", s.base_eval_loss, s.eval_loss,
                  static_cast<long long>(s.val_sequences));
    std::printf("adapter written to %s (adapter_config.json, adapter_model.safetensors)\n", s.adapter_dir.c_str());
  });
}};
}  // namespace
