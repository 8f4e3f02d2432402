// `graft train recipe.yaml`: the whole fine-tuning run on the CPU backend — load the (optionally
// NF4-quantized) base, tokenize and pack the data, build LoRA adapters on the recipe's targets, run
// AdamW steps with gradient accumulation, clipping and an LR schedule, evaluate, checkpoint (HDF5,
// atomic, resumable bit-exactly) and export a PEFT adapter to output_dir.
#pragma once

#include <functional>
#include <string>

#include "graft/dist/communicator.hpp"
#include "graft/model/model.hpp"
#include "graft/train/recipe.hpp"

namespace graft::train {

struct StepLog {
  int64_t step = 0, total = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, elapsed_s = 0, eta_s = 0;
  double eval_loss = -1;  // < 0: no evaluation at this step
};

struct TrainOptions {
  // The device the training step runs on (graft::make_backend names: cpu, cuda, cuda:N, auto). The base
  // stays host-side and is cached on the device; LoRA parameters, optimizer and checkpoints stay on the host.
  std::string device = "cpu";
  bool resume = false;          // continue from the newest checkpoint in output_dir/checkpoints
  bool progress = true;         // progress bar on a TTY, plain lines otherwise
  int64_t stop_after_steps = -1;  // for tests: stop (without export) after this many steps
  std::function<void(const StepLog&)> on_step;
  // Train on this already-loaded base instead of loading recipe.base_model (the server shares its
  // weights with fine-tuning jobs). It must be the recipe's base, loaded with its load_in_4bit.
  const model::Model* base = nullptr;
  std::function<void()> before_step;  // called before every optimizer step; may block (throttling)
  std::function<bool()> should_stop;  // polled before every step and micro-batch: true = abandon the
                                      // step in progress, checkpoint now and return with
                                      // TrainSummary::stopped (resume continues bit-exactly)
  // Data parallel: the process group this rank belongs to (null = one process). Every rank calls
  // run_training with the same recipe; each computes its share of every global batch, gradients are
  // summed over the ranks, and rank 0 alone writes files (docs/distributed.md).
  dist::Communicator* comm = nullptr;
};

struct TrainSummary {
  int64_t steps = 0, train_sequences = 0, val_sequences = 0, trainable_params = 0;
  double final_loss = 0, base_eval_loss = -1, eval_loss = -1;
  std::string adapter_dir;
  int64_t trained_tokens = 0;  // tokens of every sequence stepped over (all runs, resumes included)
  bool stopped = false;        // should_stop ended the run before the last step (nothing exported)
};

TrainSummary run_training(const LoadedRecipe& recipe, const TrainOptions& options = {});

}  // namespace graft::train
