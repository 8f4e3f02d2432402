#!/usr/bin/env bash
# graft's CPU threads when another process holds a core: bench_model's MoE NF4 + Q8 lm_head prefill (128 tokens) and
# decode, and stories260K f32 prefill, at 1 and 2 threads, with the cores idle and with a shell busy loop
# (`while :; do :; done`) running beside them. Prints one line per setting: the median of REPS runs of each benchmark
# (--benchmark_min_time=MIN_TIME each). The table in docs/performance.md ("Another process on a core") comes from it.
# Env: REPS (3), MIN_TIME (1), BUILD_DIR (build), THREADS (1,2); extra environment (e.g. GRAFT_CPU_SPIN_US) passes through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
build="${BUILD_DIR:-build}"
reps="${REPS:-3}"
min_time="${MIN_TIME:-1}"
IFS=, read -r -a threads <<<"${THREADS:-1,2}"
moe=bench/llamacpp/work/models/qwen3moe-small
[[ -f "$moe/model.safetensors" ]] && export GRAFT_BENCH_MOE_DIR="$moe"
filter='BM_Prefill/1/3/|BM_Decode/1/3/|BM_Prefill/0/0/'
[[ -d ../shared/assets/models/stories260K_hf_llama ]] || filter='BM_Prefill/1/3/|BM_Decode/1/3/'
run() {  # $1 = threads: prints "moe_prefill_ms moe_decode_tok_s stories_prefill_ms" (medians)
  local i out; for ((i = 0; i < reps; ++i)); do
    OMP_NUM_THREADS="$1" "./$build/bench/bench_model" --benchmark_filter="$filter" --benchmark_min_time="$min_time" \
      --benchmark_format=json 2>/dev/null
  done | python3 -c '
import json, statistics, sys
text = sys.stdin.read(); dec = json.JSONDecoder(); runs = {}; i = 0
while i < len(text):
    if text[i].isspace(): i += 1; continue
    obj, i = dec.raw_decode(text, i)
    for b in obj["benchmarks"]:
        ms = b["real_time"] / {"ns": 1e6, "us": 1e3, "ms": 1.0}[b["time_unit"]]
        runs.setdefault(b["name"].split("/real_time")[0], []).append(b["tok/s"] if "Decode" in b["name"] else ms)
def med(prefix, decode=False):
    for k, v in runs.items():
        if k.startswith(prefix):
            m = statistics.median(v)
            return "%.0f tok/s" % m if decode else "%.2f ms" % m
    return "-"
print(med("BM_Prefill/1/3/"), med("BM_Decode/1/3/", True), med("BM_Prefill/0/0/"), sep=" | ")'
}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, ./$build/bench/bench_model (this checkout at $(git rev-parse --short HEAD))"
echo "| setting | MoE NF4+Q8 prefill 128 | MoE NF4+Q8 decode | stories260K f32 prefill 128 |"
echo "|---|---|---|---|"
busy_pid=""
stop_busy() { [[ -z $busy_pid ]] || { pkill -P "$busy_pid" 2>/dev/null || true; kill "$busy_pid" 2>/dev/null || true; wait "$busy_pid" 2>/dev/null || true; busy_pid=""; }; }
trap stop_busy EXIT
for load in idle busy; do
  if [[ $load == busy ]]; then bash -c 'while :; do :; done' & busy_pid=$!; sleep 0.5; fi
  for t in "${threads[@]}"; do echo "| $load, $t thread(s) | $(run "$t") |"; done
  stop_busy
done
