#!/usr/bin/env bash
# Training step time, graft vs PyTorch autograd (Debian python3-torch, float32, CPU), side by side on
# the same model files: the tiny Qwen3-MoE demo base and the ~100M "small" Qwen3-MoE preset (graft's
# byte-level tokenizer), one sequence of T tokens, LoRA r=8 on attention and every expert.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target graft bench_train_step >/dev/null
work=build/bench-train
for preset in tiny small; do
  [[ -f "$work/$preset/model.safetensors" ]] || ./build/bin/graft init-model --arch qwen3_moe --preset "$preset" --seed 1 --embed-std 0.125 --out "$work/$preset" >/dev/null
  for T in 128 512; do
    g=$(GRAFT_BENCH_TRAIN_DIR="$work/$preset" ./build/bench/bench_train_step --benchmark_filter="T:$T/R:8/C:0" --benchmark_min_time=2 2>/dev/null | awk '/BM_TrainStep/ {print $2}')
    t=$(tools/.venv/bin/python bench/train/torch_step.py "$work/$preset" "$T" 8 5 | awk '{print $2}')
    printf "qwen3_moe %-5s T=%-4s graft %8.1f ms   torch %8.1f ms   torch/graft %.2fx\n" "$preset" "$T" "$g" "$t" "$(awk -v a="$t" -v b="$g" 'BEGIN {print a / b}')"
  done
done
# Activation checkpointing: step time and peak saved-activation memory (StepStats), off (C:0) vs on (C:1).
for T in 128 512; do
  GRAFT_BENCH_TRAIN_DIR="$work/small" ./build/bench/bench_train_step --benchmark_filter="T:$T/" --benchmark_min_time=2 2>/dev/null |
    awk '/BM_TrainStep/ {for (i = 1; i <= NF; ++i) if ($i ~ /^saved_MiB=/) s = $i; printf "qwen3_moe small %s  %8.1f ms  %s\n", $1, $2, s}'
done
