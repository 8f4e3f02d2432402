// PEFT modules_to_save in the training step (modules_to_save.cpp): the adapter's trainable copies of
// the embedding table and lm_head replace the base's, and get full gradients. Internal to
// train/src/backward; forward_backward.cpp calls these four functions.
#pragma once

#include <cstdint>
#include <span>

#include "graft/train/lora_train.hpp"

namespace graft::train::detail {

// The embedding table the step reads: the adapter's copy, else the base's.   [vocab, hidden]
const Tensor& step_embedding(const model::Model& m, const TrainableAdapter& ad);
// The lm_head the step uses: the adapter's copy, else the base's.   [vocab, hidden]
const LinearWeight& step_lm_head(const model::Model& m, const TrainableAdapter& ad);
// lm_head copy: grad += dlogitsᵀ · xf.   xf [T, hidden], dlogits [T, vocab]
void lm_head_grad(TrainableAdapter& ad, const Tensor& xf, const Tensor& dlogits);
// Embedding copy: grad[ids[t]] += dh[t] (the gradient of the embedding output).   dh [T, hidden]
void embedding_grad(TrainableAdapter& ad, std::span<const int32_t> ids, const Tensor& dh);

}  // namespace graft::train::detail
