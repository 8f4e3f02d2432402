#!/usr/bin/env bash
# Fine-tune on your own JSONL with a recipe: graft train (progress bar, metrics.jsonl, loss.svg),
# graft eval base vs adapter on held-out tickets, and the PEFT export loaded back with PEFT.
# Usage: examples/recipe-on-private-data/run.sh   (GRAFT=path/to/graft, WORK=scratch dir, PYTHON=venv python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
GRAFT="$(realpath "${GRAFT:-$root/build/bin/graft}")"
PYTHON="${PYTHON:-$root/tools/.venv/bin/python}"
WORK="$(mkdir -p "${WORK:-/tmp/graft-example-private-data}" && cd "${WORK:-/tmp/graft-example-private-data}" && pwd)"
[[ -x "$GRAFT" ]] || { echo "no graft binary at $GRAFT: build first (cmake --build build) or set GRAFT" >&2; exit 2; }
fail() { echo "FAILED: $*" >&2; exit 1; }
cd "$here"  # the recipe's dataset paths are relative to this folder

echo "== 1/4 a tiny random base (graft init-model); your own data is in data/ (chat + alpaca JSONL)"
"$GRAFT" init-model --arch llama --preset tiny --embed-std 0.125 --seed 1 --out "$WORK/base"
wc -l data/*.jsonl

echo "== 2/4 graft train recipe.yaml (both datasets, held-out loss every eval_steps)"
rm -rf "$WORK/adapter"
"$GRAFT" train recipe.yaml --set base_model="$WORK/base" --set output_dir="$WORK/adapter"
for f in adapter_config.json adapter_model.safetensors metrics.jsonl loss.svg; do
  [[ -s "$WORK/adapter/$f" ]] || fail "graft train wrote no $WORK/adapter/$f"
done
echo "metrics: $(wc -l <"$WORK/adapter/metrics.jsonl") lines in $WORK/adapter/metrics.jsonl, last: $(tail -n 1 "$WORK/adapter/metrics.jsonl")"
echo "loss plot: $WORK/adapter/loss.svg (open it in a browser)"

echo "== 3/4 graft eval: base vs adapter on the held-out tickets (chat and alpaca files)"
"$GRAFT" eval "$WORK/base" --adapter "$WORK/adapter" --data data/test_alpaca.jsonl --max-tokens 4 \
  --prompt "the parcel never came" --prompt "i was charged twice"
"$GRAFT" eval "$WORK/base" --adapter "$WORK/adapter" --data data/test_chat.jsonl --json >"$WORK/eval.json"
losses="$(sed -n 's/^ *"loss": \([0-9.eE+-]*\),*$/\1/p' "$WORK/eval.json" | paste -sd ' ')"
read -r base_loss adapter_loss _ <<<"$losses"
[[ -n "${adapter_loss:-}" ]] || fail "no losses in $WORK/eval.json"
awk -v b="$base_loss" -v a="$adapter_loss" 'BEGIN { exit !(a < b) }' ||
  fail "the adapter's held-out loss $adapter_loss is not below the base's $base_loss"
echo "OK: held-out loss on data/test_chat.jsonl: base $base_loss, adapter $adapter_loss"

echo "== 4/4 the PEFT export: $WORK/adapter/{adapter_config.json,adapter_model.safetensors}"
if [[ -x "$PYTHON" ]] && "$PYTHON" -c "import peft, transformers" 2>/dev/null; then
  HF_HUB_OFFLINE=1 "$PYTHON" - "$WORK/base" "$WORK/adapter" <<'PY'
import sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
model = PeftModel.from_pretrained(base, sys.argv[2])
n = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
with torch.no_grad():
    out = model(torch.tensor([[1, 2, 3]])).logits
print(f"OK: PEFT loaded the adapter ({n} LoRA modules, r={model.peft_config['default'].r}); logits {tuple(out.shape)}")
PY
else
  echo "skipped: no peft in $PYTHON (run scripts/setup.sh to load the adapter with PEFT)"
fi
