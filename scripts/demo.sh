#!/usr/bin/env bash
# The main job on the embedded demo (README's first command), on the CPU:
#   1. graft demo: makes a tiny Qwen3-MoE base (random weights, graft's byte-level tokenizer), generates
#      a dataset (majority sentiment of 3-5 words), trains a QLoRA adapter (NF4 base, LoRA on attention
#      and every expert) and compares base vs adapter on the held-out split (loss, exact match)
#   2. graft inspect the base; graft eval base vs adapter side by side (loss, perplexity, generations)
#   3. graft merge the adapter into the base and graft generate from the merged model
#   4. graft serve the base + adapter on loopback and ask both through the OpenAI API (curl)
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
echo
echo "== graft serve: base + adapter behind the OpenAI-compatible API (loopback, port chosen by the kernel)"
rm -f "$demo/serve.port"
$graft serve "$demo/base" --served-model-name demo-base --adapter "sentiment=$demo/adapter" --load-in-4bit \
  --port 0 --port-file "$demo/serve.port" 2>"$demo/serve.log" &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  grep -q "listening on" "$demo/serve.log" 2>/dev/null && break
  kill -0 $serve_pid 2>/dev/null || { cat "$demo/serve.log"; exit 1; }
  sleep 0.2
done
port=$(cat "$demo/serve.port")
curl -sf "http://127.0.0.1:$port/v1/models" | python3 -c 'import json,sys; print("models:", [m["id"] for m in json.load(sys.stdin)["data"]])'
for model in demo-base sentiment; do
  printf '%-10s ' "$model:"
  curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": \"happy fun ugly nice mean\"}], \"max_tokens\": 8, \"temperature\": 0}" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(repr(r["choices"][0]["message"]["content"]), r["usage"])'
done
kill -TERM $serve_pid
wait $serve_pid
trap - EXIT
echo "demo: served base and adapter from one engine; done"
