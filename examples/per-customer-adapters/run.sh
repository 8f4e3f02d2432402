#!/usr/bin/env bash
# Per-customer adapters on one base: every customer gets its own LoRA adapter and its own API key,
# one `graft serve` holds them all, a key reaches only its customer's adapter (another customer's is a
# 404 model_not_found), and a new customer's adapter is hot-loaded without a restart. client.py
# (the official `openai` package) checks all of it.
# Usage: examples/per-customer-adapters/run.sh   (GRAFT=path/to/graft, WORK=scratch dir, PYTHON=venv python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
GRAFT="$(realpath "${GRAFT:-$root/build/bin/graft}")"
PYTHON="${PYTHON:-$root/tools/.venv/bin/python}"
WORK="$(mkdir -p "${WORK:-/tmp/graft-example-per-customer}" && cd "${WORK:-/tmp/graft-example-per-customer}" && pwd)"
[[ -x "$GRAFT" ]] || { echo "no graft binary at $GRAFT: build first (cmake --build build) or set GRAFT" >&2; exit 2; }
[[ -x "$PYTHON" ]] || { echo "no $PYTHON: run scripts/setup.sh (it installs openai into tools/.venv)" >&2; exit 2; }
cd "$here"  # the recipe's data paths are relative to this folder

# customer -> the word its adapter answers (data/CUSTOMER.jsonl: short questions, that word as the answer)
customers="acme globex initech umbrella"

echo "== 1/3 a tiny random base (graft init-model) and one LoRA adapter per customer (recipe.yaml)"
"$GRAFT" init-model --arch llama --preset tiny --embed-std 0.125 --seed 1 --out "$WORK/base" >/dev/null
rm -rf "$WORK/adapters" && mkdir -p "$WORK/adapters"
for c in $customers; do
  # umbrella is the customer who signs up later: its adapter is written under another directory name,
  # so the server cannot find it as adapters/umbrella until it is hot-loaded under that name.
  out="$WORK/adapters/$c"; [[ $c == umbrella ]] && out="$WORK/adapters/umbrella-v1"
  "$GRAFT" train recipe.yaml --set base_model="$WORK/base" --set datasets.0.path="data/$c.jsonl" \
    --set output_dir="$out" 2>&1 | grep '^trained' | sed "s/^/$c: /"
done

echo "== 2/3 graft serve: one base, three adapters, one API key per customer, runtime loading on"
cat >"$WORK/keys.json" <<'KEYS'
{"key-acme": ["acme"], "key-globex": ["globex"], "key-initech": ["initech"], "key-umbrella": ["umbrella"],
 "key-admin": "*"}
KEYS
rm -f "$WORK/port"
"$GRAFT" serve "$WORK/base" --served-model-name base \
  --adapter acme="$WORK/adapters/acme" --adapter globex="$WORK/adapters/globex" \
  --adapter initech="$WORK/adapters/initech" --adapter-dir "$WORK/adapters" \
  --api-keys-file "$WORK/keys.json" --enable-lora-runtime-updates \
  --port 0 --port-file "$WORK/port" >"$WORK/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || { cat "$WORK/serve.log" >&2; exit 1; }

echo "== 3/3 client.py (openai): each key gets its own adapter, never another's; umbrella hot-loaded"
"$PYTHON" client.py "http://127.0.0.1:$(cat "$WORK/port")/v1" "$WORK/adapters/umbrella-v1"
