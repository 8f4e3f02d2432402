#!/usr/bin/env bash
# CPU model throughput, graft vs llama.cpp, interleaved in one run on the same models:
#   stories260K (../shared/assets) and the 134M "small" Qwen3-MoE preset (graft init-model --seed 1, real Qwen3
#   tokenizer from ../shared/assets). llama.cpp is built from the source in PyPI's llama-cpp-python sdist
#   (bench/llamacpp/build.sh); models are converted with bench/llamacpp/hf_to_gguf.py (f32) and quantized with
#   llama-quantize (Q4_0, Q4_K_M). graft runs f32 and NF4 (load_in_4bit) weights, and on the MoE NF4 with an NF4
#   lm_head (--lm-head-dtype nf4), a Q8 lm_head (--lm-head-dtype q8) and a Q6 lm_head (--lm-head-dtype q6);
#   llama-quantize likewise stores the tied output of its Q4_0 and Q4_K_M files in Q6_K.
# Prints the median prefill (128 tokens) and decode (32 tokens) tokens/s of REPS interleaved repetitions at each
# thread count (bench/model/side_by_side.py), with `uptime` load averages, OPENBLAS_CORETYPE unset.
# Env: THREADS (1,2), REPS (5), BUILD_DIR (build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
threads="${THREADS:-1,2}"
reps="${REPS:-5}"
build="${BUILD_DIR:-build}"
work=bench/llamacpp/work
mkdir -p "$work/models"
# 1. graft
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target graft bench_model >/dev/null
# 2. llama.cpp from PyPI's llama-cpp-python sdist
bin="$work/llama.cpp/build/bin"
[[ -x "$bin/llama-bench" && -x "$bin/llama-quantize" ]] || bench/llamacpp/build.sh llama-bench llama-quantize >/dev/null
# 3. models
moe="$work/models/qwen3moe-small"
[[ -f "$moe/model.safetensors" ]] || "./$build/bin/graft" init-model --arch qwen3_moe --preset small --seed 1 --out "$moe" \
  --tokenizer ../shared/assets/tokenizers/qwen3
export PYTHONPATH="$work/llama.cpp/gguf-py"
stories=../shared/assets/models/stories260K_hf_llama
[[ -f "$work/models/stories260K.gguf" || ! -d "$stories" ]] || tools/.venv/bin/python bench/llamacpp/hf_to_gguf.py "$stories" "$work/models/stories260K.gguf"
[[ -f "$work/models/qwen3moe-small.gguf" ]] || tools/.venv/bin/python bench/llamacpp/hf_to_gguf.py "$moe" "$work/models/qwen3moe-small.gguf"
args=()
for m in stories260K qwen3moe-small; do
  key=$([[ $m == stories260K ]] && echo stories260K || echo moe)
  f32="$work/models/$m.gguf"
  [[ -f "$f32" ]] || continue
  args+=(--gguf "$key:f32=$f32")
  for q in Q4_0 Q4_K_M; do
    out="$work/models/$m-$q.gguf"
    [[ -f "$out" ]] || "$bin/llama-quantize" "$f32" "$out" "$q" >/dev/null 2>&1
    args+=(--gguf "$key:$q=$out")
  done
done
# 4. measure, interleaved
tools/.venv/bin/python bench/model/side_by_side.py --graft "./$build/bench/bench_model" --llama-bench "$bin/llama-bench" \
  --moe-dir "$moe" --threads "$threads" --reps "$reps" "${args[@]}"
