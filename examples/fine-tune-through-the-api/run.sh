#!/usr/bin/env bash
# Fine-tune through the OpenAI API of `graft serve --enable-fine-tuning`, driven by the official OpenAI
# Python client (client.py): upload a JSONL, start a job, follow its events, then chat with the result.
# Usage: examples/fine-tune-through-the-api/run.sh   (GRAFT=path/to/graft, WORK=scratch dir, PYTHON=venv python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
GRAFT="$(realpath "${GRAFT:-$root/build/bin/graft}")"
PYTHON="${PYTHON:-$root/tools/.venv/bin/python}"
WORK="$(mkdir -p "${WORK:-/tmp/graft-example-fine-tune-api}" && cd "${WORK:-/tmp/graft-example-fine-tune-api}" && pwd)"
[[ -x "$GRAFT" ]] || { echo "no graft binary at $GRAFT: build first (cmake --build build) or set GRAFT" >&2; exit 2; }
[[ -x "$PYTHON" ]] || { echo "no $PYTHON: run scripts/setup.sh (it installs openai into tools/.venv)" >&2; exit 2; }
"$PYTHON" -c "import openai" 2>/dev/null || { echo "$PYTHON has no openai package: run scripts/setup.sh" >&2; exit 2; }

echo "== 1/3 a tiny random base (graft init-model)"
"$GRAFT" init-model --arch llama --preset tiny --embed-std 0.125 --seed 1 --out "$WORK/base" >/dev/null

echo "== 2/3 graft serve with the fine-tuning API (jobs write under --ft-dir)"
rm -rf "$WORK/port" "$WORK/ft"
"$GRAFT" serve "$WORK/base" --served-model-name tiny-llama --enable-fine-tuning --ft-dir "$WORK/ft" \
  --port 0 --port-file "$WORK/port" >"$WORK/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$WORK/port" ]] && break; sleep 0.1; done
[[ -s "$WORK/port" ]] || { cat "$WORK/serve.log" >&2; exit 1; }

echo "== 3/3 client.py: upload, create the job, follow its events, chat with the fine-tuned model"
"$PYTHON" "$here/client.py" "http://127.0.0.1:$(cat "$WORK/port")/v1" tiny-llama "$here/train.jsonl" \
  || { echo "client.py failed; server log ($WORK/serve.log):" >&2; tail -n 20 "$WORK/serve.log" >&2; exit 1; }
