#!/usr/bin/env bash
# Evaluate an adapter against its base: `graft eval` side by side, then lm-evaluation-harness
# (`lm_eval --model local-completions`) against `graft serve`, base vs adapter, on the task in task/.
# Usage: examples/evaluate-adapter-vs-base/run.sh   (GRAFT=path/to/graft, WORK=scratch dir, PYTHON=venv python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
GRAFT="$(realpath "${GRAFT:-$root/build/bin/graft}")"
PYTHON="${PYTHON:-$root/tools/.venv/bin/python}"
WORK="$(mkdir -p "${WORK:-/tmp/graft-example-evaluate}" && cd "${WORK:-/tmp/graft-example-evaluate}" && pwd)"
[[ -x "$GRAFT" ]] || { echo "no graft binary at $GRAFT: build first (cmake --build build) or set GRAFT" >&2; exit 2; }
[[ -x "$PYTHON" ]] || { echo "no $PYTHON: run scripts/setup.sh (it installs lm-eval into tools/.venv)" >&2; exit 2; }
cd "$here"  # the task's data_files are relative to this folder

echo "== 1/4 a tiny random base (graft init-model) and a LoRA adapter trained on task/train.jsonl"
"$GRAFT" init-model --arch llama --preset tiny --embed-std 0.125 --seed 1 --out "$WORK/base" >/dev/null
"$GRAFT" train recipe.yaml --set base_model="$WORK/base" --set output_dir="$WORK/adapter" 2>&1 | tail -n 2

echo "== 2/4 graft eval: held-out loss, base vs adapter (the format is detected from the records)"
"$GRAFT" eval "$WORK/base" --adapter "$WORK/adapter" --data task/test.jsonl --max-tokens 4 --prompt "good nice bad"

echo "== 3/4 graft serve: base and adapter from one process"
rm -f "$WORK/port"
"$GRAFT" serve "$WORK/base" --served-model-name base --adapter sentiment="$WORK/adapter" --port 0 \
  --port-file "$WORK/port" >"$WORK/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || { cat "$WORK/serve.log" >&2; exit 1; }
url="http://127.0.0.1:$(cat "$WORK/port")/v1/completions"

echo "== 4/4 lm_eval --model local-completions, base vs adapter"
# Offline: the tokenizer is the model directory's own (tokenizer_backend=huggingface,tokenizer=DIR);
# requests go as token ids (tokenized_requests=True), which graft serve takes as prompts.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
for model in base sentiment; do
  "$PYTHON" -m lm_eval --model local-completions \
    --model_args "model=$model,base_url=$url,tokenizer_backend=huggingface,tokenizer=$WORK/base,tokenized_requests=True,num_concurrent=1,max_retries=1" \
    --tasks graft_sentiment,graft_sentiment_gen --include_path task --output_path "$WORK/lm_eval_$model" 2>&1 | grep '^|'
done

# The adapter must beat the base on both tasks (scores from lm-eval's results JSON).
"$PYTHON" - "$WORK" <<'PY'
import glob, json, sys
work = sys.argv[1]
def scores(model):
    f = sorted(glob.glob(f"{work}/lm_eval_{model}/**/results_*.json", recursive=True))[-1]
    r = json.load(open(f))["results"]
    return r["graft_sentiment"]["acc,none"], r["graft_sentiment_gen"]["exact_match,none"]
b, a = scores("base"), scores("sentiment")
print(f"acc (loglikelihood):    base {b[0]:.3f}  adapter {a[0]:.3f}")
print(f"exact_match (generate): base {b[1]:.3f}  adapter {a[1]:.3f}")
if not (a[0] > b[0] and a[1] > b[1]):
    sys.exit("the adapter does not beat the base")
print("OK: the adapter beats the base on both tasks")
PY
