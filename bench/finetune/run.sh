#!/usr/bin/env bash
# Serving next to a fine-tuning job (docs/performance.md "Serving with a concurrent fine-tuning job"):
# one `graft serve --enable-fine-tuning` process; the SAME seeded trace (Poisson arrivals, lognormal
# prompt/output lengths, greedy, base model) is replayed with bench/serve/replay.py twice, side by
# side: without a job, then while a job trains on the served base. The job's own tokens/s is measured
# from its events in two windows: while the trace runs, and alone afterwards.
#
# Environment (optional): BUILD_DIR (build-bench-ft) JOBS (2) PRESET (tiny|small, default small)
#   SHARE (--ft-compute-share, 0.5) REQUESTS (40) RATE (req/s, 2) SEED (1) IDLE_S (15)
#   GRAFT_BIN (use this graft binary instead of building one)
#   MODEL_DIR (serve this model instead of a fresh init-model one; with graft's byte-level tokenizer some
#     random-weight continuations decode to no text, which replay.py counts as failed requests)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
build="${BUILD_DIR:-build-bench-ft}"
preset="${PRESET:-small}"
share="${SHARE:-0.5}"
requests="${REQUESTS:-40}"
rate="${RATE:-2}"
seed="${SEED:-1}"
idle="${IDLE_S:-15}"
if [[ -n "${GRAFT_BIN:-}" ]]; then  # an already built graft
  graft="$GRAFT_BIN"
else
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=OFF -DGRAFT_BUILD_TESTS=OFF -DGRAFT_BUILD_BENCH=OFF >/dev/null
  cmake --build "$build" -j"${JOBS:-2}" --target graft >/dev/null
  graft="$build/bin/graft"
fi
work="$build/ft_bench"
rm -rf "$work"
mkdir -p "$work"
if [[ -n "${MODEL_DIR:-}" ]]; then  # e.g. bench/llamacpp/work/models/qwen3moe-small (real Qwen3 tokenizer)
  ln -s "$(cd "$MODEL_DIR" && pwd)" "$work/base"
else
  "$graft" init-model --arch qwen3_moe --preset "$preset" --seed 1 --out "$work/base" >/dev/null
fi
/usr/bin/python3 - "$work" "$requests" "$rate" "$seed" <<'PY'
import json, math, random, sys
work, n, rate, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
t = 0.0
with open(f"{work}/trace.jsonl", "w") as f:
    for i in range(n):
        t += r.expovariate(rate)
        plen = min(128, max(8, int(r.lognormvariate(math.log(32), 0.6))))
        olen = min(64, max(8, int(r.lognormvariate(math.log(24), 0.5))))
        f.write(json.dumps({"i": i, "t": t, "prompt": [r.randrange(3, 250) for _ in range(plen)], "max_tokens": olen, "adapter": ""}) + "\n")
words = ["good", "bad", "fine", "awful", "great", "poor", "nice", "sad"]
with open(f"{work}/train.jsonl", "w") as f:
    for i in range(400):
        ws = [r.choice(words) for _ in range(3)]
        pos = sum(w in ("good", "fine", "great", "nice") for w in ws) >= 2
        f.write(json.dumps({"messages": [{"role": "user", "content": " ".join(ws)},
                                         {"role": "assistant", "content": "positive" if pos else "negative"}]}) + "\n")
PY
"$graft" serve "$work/base" --served-model-name base --enable-fine-tuning --ft-dir "$work/ft" --ft-compute-share "$share" \
  --port 0 --port-file "$work/port" 2>"$work/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do grep -q "listening on" "$work/serve.log" 2>/dev/null && break; sleep 0.2; done
url="http://127.0.0.1:$(cat "$work/port")"
replay() { /usr/bin/python3 bench/serve/replay.py --url "$url" --server graft --trace "$work/trace.jsonl" --base-only \
  --base-model base --label "$1" --json-out "$work/$1.json" >/dev/null; }
# job progress: (elapsed_s, tokens) of the newest metrics event
progress() { curl -sf "$url/v1/fine_tuning/jobs/$job/events?limit=1" | /usr/bin/python3 -c \
  'import json,sys; d=json.load(sys.stdin)["data"]; e=[x for x in d if x["type"]=="metrics"]; print(*( (e[0]["data"]["elapsed_s"], e[0]["data"]["tokens"]) if e else (0, 0)))'; }
echo "== 1/2 trace without a job"
replay no_job
file=$(curl -sf "$url/v1/files" -F purpose=fine-tune -F "file=@$work/train.jsonl" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
job=$(curl -sf "$url/v1/fine_tuning/jobs" -H 'Content-Type: application/json' -d "{\"model\": \"base\", \"training_file\": \"$file\",
  \"hyperparameters\": {\"batch_size\": 2}, \"extra\": {\"max_steps\": 100000, \"sequence_len\": 64, \"save_steps\": 0}}" |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 600); do [[ "$(progress)" != "0 0" ]] && break; sleep 0.2; done
echo "== 2/2 the same trace while job $job trains (compute share $share)"
read -r e0 k0 < <(progress)
replay with_job
read -r e1 k1 < <(progress)
sleep "$idle"
read -r e2 k2 < <(progress)
curl -sf -X POST -d "" "$url/v1/fine_tuning/jobs/$job/cancel" >/dev/null
kill -TERM $pid; wait $pid || true
trap - EXIT
/usr/bin/python3 - "$work" "$e0" "$k0" "$e1" "$k1" "$e2" "$k2" "${MODEL_DIR:-qwen3_moe $preset preset}" "$share" <<'PY'
import json, sys
w = sys.argv[1]
e0, k0, e1, k1, e2, k2 = map(float, sys.argv[2:8])
a, b = (json.load(open(f"{w}/{n}.json")) for n in ("no_job", "with_job"))
busy = (k1 - k0) / (e1 - e0) if e1 > e0 else 0
alone = (k2 - k1) / (e2 - e1) if e2 > e1 else 0
print(f"model: {sys.argv[8]}, --ft-compute-share {sys.argv[9]}, trace: {a['ok']+a['errors']} requests")
print("| mode | requests ok / errors | output tok/s | TTFT ms p50 / p99 | TPOT ms p50 / p99 | job train tok/s |")
print("|---|---|---|---|---|---|")
for name, r, job in (("serving only", a, "-"), ("serving + fine-tuning job", b, f"{busy:.0f}")):
    print(f"| {name} | {r['ok']} / {r['errors']} | {r['out_tok_s']:.1f} | {r['ttft_ms'][1]:.0f} / {r['ttft_ms'][2]:.0f} | "
          f"{r['tpot_ms'][1]:.0f} / {r['tpot_ms'][2]:.0f} | {job} |")
print(f"| fine-tuning job alone (after the trace) | - | - | - | - | {alone:.0f} |")
print(f"TTFT p99 ratio (with job / without): {b['ttft_ms'][2] / max(a['ttft_ms'][2], 1e-9):.2f}; "
      f"TPOT p99 ratio: {b['tpot_ms'][2] / max(a['tpot_ms'][2], 1e-9):.2f}; job tok/s while serving / alone: {busy / max(alone, 1e-9):.2f}")
PY
