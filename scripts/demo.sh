#!/usr/bin/env bash
# The main job on the embedded demo (README's first command), on the CPU:
#   1. graft demo: makes a tiny Qwen3-MoE base (random weights, graft's byte-level tokenizer), generates
#      a dataset (majority sentiment of 3-5 words), trains a QLoRA adapter (NF4 base, LoRA on attention
#      and every expert) and compares base vs adapter on the held-out split (loss, exact match)
#   2. graft inspect the base; graft eval base vs adapter side by side (loss, perplexity, generations)
#   3. graft merge the adapter into the base and graft generate from the merged model
# Serving (graft serve) arrives with the serving milestone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target graft
graft=./build/bin/graft
demo=build/demo
echo "== graft demo (train a QLoRA adapter on a tiny MoE and evaluate it against the base)"
$graft demo --out "$demo"
echo
echo "== graft inspect $demo/base"
$graft inspect "$demo/base"
echo
echo "== graft eval: base vs adapter on the held-out split"
$graft eval "$demo/base" --adapter "$demo/adapter" --data "$demo/data/val.jsonl" --load-in-4bit \
  --prompt "good love bad" --prompt "awful sad great" --max-tokens 12
echo
echo "== graft merge + graft generate from the merged model"
$graft merge "$demo/base" --adapter "$demo/adapter" --out "$demo/merged"
$graft generate "$demo/merged" --chat --prompt "happy fun ugly nice mean" --max-tokens 12 --json
