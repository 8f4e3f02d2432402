#!/usr/bin/env bash
# CPU model throughput, graft vs llama.cpp, in one run on the same models (f32 weights):
#   stories260K (../shared/assets) and the ~100M-parameter "small" Qwen3-MoE preset (graft init-model,
#   real Qwen3 tokenizer from ../shared/assets). llama.cpp is built from the source in PyPI's llama-cpp-python
#   sdist (bench/llamacpp/build.sh); models are converted with bench/llamacpp/hf_to_gguf.py.
# Prints prefill (128 tokens) and decode tokens/s for both, with OPENBLAS_CORETYPE unset.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
threads="${THREADS:-$(nproc)}"
work=bench/llamacpp/work
mkdir -p "$work/models"
# 1. graft
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target graft bench_model >/dev/null
# 2. llama.cpp from PyPI's llama-cpp-python sdist
[[ -x "$work/llama.cpp/build/bin/llama-bench" ]] || bench/llamacpp/build.sh llama-bench >/dev/null
# 3. models
moe="$work/models/qwen3moe-small"
[[ -f "$moe/model.safetensors" ]] || ./build/bin/graft init-model --arch qwen3_moe --preset small --seed 1 --out "$moe" \
  --tokenizer ../shared/assets/tokenizers/qwen3
export PYTHONPATH="$work/llama.cpp/gguf-py"
stories=../shared/assets/models/stories260K_hf_llama
[[ -f "$work/models/stories260K.gguf" || ! -d "$stories" ]] || tools/.venv/bin/python bench/llamacpp/hf_to_gguf.py "$stories" "$work/models/stories260K.gguf"
[[ -f "$work/models/qwen3moe-small.gguf" ]] || tools/.venv/bin/python bench/llamacpp/hf_to_gguf.py "$moe" "$work/models/qwen3moe-small.gguf"
# 4. measure, side by side
echo "== graft (threads: OMP_NUM_THREADS=$threads)"
OMP_NUM_THREADS=$threads GRAFT_BENCH_MOE_DIR="$moe" ./build/bench/bench_model --benchmark_counters_tabular=true 2>&1 | grep -E "BM_|tok/s"
echo "== llama.cpp llama-bench (-t $threads, f32 GGUF; pp128 = prefill, tg32 = decode)"
for m in "$work/models/stories260K.gguf" "$work/models/qwen3moe-small.gguf"; do
  [[ -f "$m" ]] && "$work/llama.cpp/build/bin/llama-bench" -m "$m" -p 128 -n 32 -t "$threads" -r 3 -o md 2>/dev/null | grep -E "^\|"
done
