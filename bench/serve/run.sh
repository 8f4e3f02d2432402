#!/usr/bin/env bash
# Multi-LoRA serving benchmark (docs/performance.md "Serving (CPU)"):
#   1. in-process: bench_serve_trace runs each seeded trace (Poisson arrivals, lognormal lengths,
#      popularity identical/uniform/zipf1.5/distinct over N adapters) base-only and with adapters,
#      side by side, on the Engine, and writes the traces;
#   2. over HTTP (HTTP=1, default): replays the SAME traces with bench/serve/replay.py against
#      `graft serve` and llama.cpp's `llama-server` (built from PyPI's llama-cpp-python sdist source,
#      like bench/model/run.sh), base-only and with adapters, one server at a time.
# llama.cpp applies expert LoRA only as tensors stacked over all experts (untargeted experts would be
# zero factors it still multiplies), so the HTTP comparison uses attention-only adapters (same names,
# ranks and q/k/v/o subsets as the in-process ones; written with --max-experts 0), converted by
# bench/serve/peft_to_gguf_lora.py, and graft serves those same attention-only adapters.
# llama-server batches only requests with the same LoRA set; that limit is part of what is measured.
#
# Environment (all optional):
#   BUILD_DIR (build-bench)  JOBS (2)  THREADS (nproc)  MODEL_DIR (bench/llamacpp/work/models/qwen3moe-small)
#   OUT_DIR (BUILD_DIR/serve_bench)  GRAFT_SERVE_EXCLUDE (unset: full graft_serve, needed for `graft serve`)
#   INPROC=0 skips step 1 (traces are still written)   HTTP=0 skips step 2
#   HTTP_TRACES ("N1_identical N8_uniform N8_distinct N64_uniform"): traces replayed over HTTP (each
#     must be in the in-process matrix)   SERVERS ("graft llama")
#   NP (16): llama-server slots (-np) and graft serve --max-num-seqs, the same concurrency cap
#   OMP_WAIT_POLICY (passive): both graft and llama.cpp (GGML_OPENMP) use libgomp; on a shared box the
#     default spinning barriers lose most of the time when another process holds a core (measured:
#     decode 5-8 tok/s spinning vs 27 tok/s passive under load); llama-server also gets --poll 0
# Extra arguments go to bench_serve_trace (e.g. --requests 24 --rate 1 --adapters 1,8); --help lists them.
# Recorded run (docs/performance.md): THREADS=1 BUILD_DIR=build-bench bench/serve/run.sh (about 25 min
# on the 2-core box). Smoke run: HTTP_TRACES=N8_uniform bench/serve/run.sh --adapters 1,8 --requests 6
# --rate 0 --prompt-median 24 --output-median 8 (about 2 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
unset OPENBLAS_CORETYPE
build="${BUILD_DIR:-build-bench}"
jobs="${JOBS:-2}"
threads="${THREADS:-$(nproc)}"
llw=bench/llamacpp/work
model_dir="${MODEL_DIR-$llw/models/qwen3moe-small}"
out="${OUT_DIR:-$build/serve_bench}"
mkdir -p "$out"
export OMP_NUM_THREADS="$threads"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

# ---------------------------------------------------------------- 1. build + in-process benchmark
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=OFF -DGRAFT_WERROR=ON \
  -DGRAFT_SERVE_EXCLUDE="${GRAFT_SERVE_EXCLUDE-}" >/dev/null
cmake --build "$build" -j"$jobs" --target bench_serve_trace >/dev/null
have_graft=0
if [[ "${HTTP:-1}" == 1 && "$(echo ${SERVERS:-graft llama})" == *graft* ]]; then
  if [[ -n "${GRAFT_SERVE_EXCLUDE-}" ]]; then
    echo "note: GRAFT_SERVE_EXCLUDE is set, so graft_serve has no HTTP layer and \`graft serve\` is not built"
  elif cmake --build "$build" -j"$jobs" --target graft >"$out/graft_build.log" 2>&1; then
    have_graft=1
  else
    echo "note: \`graft\` (cmd_serve) did not build, see $out/graft_build.log; graft HTTP replay skipped"
  fi
fi
if [[ -n "$model_dir" && ! -f "$model_dir/config.json" ]]; then
  if [[ -x "$build/bin/graft" ]]; then
    "$build/bin/graft" init-model --arch qwen3_moe --preset small --seed 1 --out "$model_dir" \
      --tokenizer ../shared/assets/tokenizers/qwen3
  else
    echo "note: $model_dir is missing and graft is not built: in-process run uses the in-memory preset, no HTTP"
    model_dir=""
  fi
fi
bench="$build/bench/bench_serve_trace"
echo "== in-process Engine ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc --all) cores, OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=$OMP_WAIT_POLICY; $(uptime | sed 's/.*load/load/'))"
inproc_flags=(--model-dir "$model_dir" --work-dir "$out/inproc" --json-out "$out/inprocess.json")
if [[ "${INPROC:-1}" == 1 ]]; then
  "$bench" "${inproc_flags[@]}" "$@" | tee "$out/inprocess.md"
else
  "$bench" "${inproc_flags[@]}" --trace-only 1 "$@"
fi

[[ "${HTTP:-1}" == 1 && -n "$model_dir" ]] || exit 0

# ---------------------------------------------------------------- 2. HTTP replay of the same traces
# Attention-only adapters and the same traces, in their own work dir.
# Only as many adapters as the replayed traces need (the traces themselves do not depend on that).
http_traces="${HTTP_TRACES:-N1_identical N8_uniform N8_distinct N64_uniform}"
http_ns="$(for t in $http_traces; do n="${t%%_*}"; echo "${n#N}"; done | sort -n | uniq | paste -sd, -)"
"$bench" --model-dir "$model_dir" --work-dir "$out/http" --trace-only 1 --max-experts 0 "$@" --adapters "$http_ns" \
  2>"$out/http_traces.log"
root="$(cat "$out/http/traces/adapter_root.txt")"
export PYTHONPATH="$llw/llama.cpp/gguf-py"
py=tools/.venv/bin/python
servers="${SERVERS:-graft llama}"
if [[ "$servers" == *llama* && ! -x "$llw/llama.cpp/build/bin/llama-server" ]]; then
  JOBS="$jobs" bench/llamacpp/build.sh llama-server >"$out/llama_build.log" 2>&1 ||
    { echo "note: llama-server did not build, see $out/llama_build.log"; servers="${servers/llama/}"; }
fi
gguf_model="$llw/models/$(basename "$model_dir").gguf"
[[ "$servers" != *llama* || -f "$gguf_model" ]] || $py bench/llamacpp/hf_to_gguf.py "$model_dir" "$gguf_model"

wait_http() {  # url pid
  for _ in $(seq 1 600); do
    kill -0 "$2" 2>/dev/null || return 1
    [[ "$(/usr/bin/python3 -c "import urllib.request,sys
try: print(urllib.request.urlopen('$1/health', timeout=2).status)
except Exception: print(0)")" == 200 ]] && return 0
    sleep 1
  done
  return 1
}
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

table="$out/http_table.md"
{
  echo "| trace | server | run | adapters used | out tok/s | total tok/s | TTFT ms mean / p50 / p99 | TPOT ms mean / p50 / p99 | requests |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$table"
np="${NP:-16}"
ctx=$((np * 1024))
for tname in $http_traces; do
  trace="$out/http/traces/$tname.jsonl"
  [[ -f "$trace" ]] || { echo "note: no trace $tname (not in this run's matrix)"; continue; }
  n="${tname%%_*}"; n="${n#N}"; law="${tname#*_}"
  label="N=$n $law"
  for srv in $servers; do
    port=$((18000 + RANDOM % 2000))
    if [[ "$srv" == graft ]]; then
      [[ "$have_graft" == 1 ]] || continue
      "$build/bin/graft" serve "$model_dir" --host 127.0.0.1 --port "$port" --served-model-name base \
        --adapter-dir "$root" --max-loras "${MAX_LORAS:-16}" --max-queue 100000 --max-num-seqs "$np" >"$out/graft_serve.log" 2>&1 &
      pid=$!
      extra=()
    else
      loras=()
      echo "{" >"$out/lora_ids.json"
      for ((i = 0; i < n; i++)); do
        g="$out/http/gguf/a$i.gguf"
        mkdir -p "$out/http/gguf"
        [[ -f "$g" ]] || $py bench/serve/peft_to_gguf_lora.py "$model_dir" "$root/a$i" "$g" --attention-only
        loras+=("$g")
        printf '%s"a%d": %d\n' "$([[ $i -gt 0 ]] && echo ,)" "$i" "$i" >>"$out/lora_ids.json"
      done
      echo "}" >>"$out/lora_ids.json"
      "$llw/llama.cpp/build/bin/llama-server" -m "$gguf_model" -t "$threads" -np "$np" -c "$ctx" --kv-unified --poll 0 \
        --cache-ram 0 --no-webui --host 127.0.0.1 --port "$port" --lora-init-without-apply --lora "$(IFS=,; echo "${loras[*]}")" \
        >"$out/llama_server.log" 2>&1 &
      pid=$!
      extra=(--lora-ids "$out/lora_ids.json")
    fi
    if ! wait_http "http://127.0.0.1:$port" "$pid"; then
      echo "note: $srv did not come up for $label (log: $out/${srv}_serve*.log / llama_server.log)"
      stop "$pid"
      continue
    fi
    for mode in base adapters; do
      flag=()
      [[ "$mode" == base ]] && flag=(--base-only)
      $py bench/serve/replay.py --url "http://127.0.0.1:$port" --server "$srv" --trace "$trace" "${flag[@]}" \
        "${extra[@]}" --label "$label" --json-out "$out/http_${srv}_N${n}_${law}_${mode}.json" | tee -a "$table" || true
    done
    echo "   ($srv, $label: $(uptime | sed 's/.*load/load/'))"
    stop "$pid"
  done
done
echo "== HTTP replay (same traces; attention-only adapters for both servers)"
cat "$table"
