#!/usr/bin/env bash
# Tokenizer encode throughput, graft vs Hugging Face tokenizers (Rust, the PyPI `tokenizers` package in tools/.venv), same input,
# same run, one core each (taskset -c 0, RAYON_NUM_THREADS=1). Prints MB/s side by side.
#   BUILD_DIR=build-bench   build directory (configured here if needed; Release, GRAFT_CUDA=OFF)
#   GRAFT_BENCH_BIN=path    use an already built bench_tokenizer instead of building
#   CORE=0                  the CPU core to pin both to
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build-bench}"
CORE="${CORE:-0}"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
REF_PY="$ROOT/tools/.venv/bin/python"
ASSETS="$ROOT/../shared/assets"
[ -x "$REF_PY" ] || { echo "missing $REF_PY: run scripts/setup.sh (it creates the reference venv tools/.venv)" >&2; exit 1; }
[ -d "$ASSETS/tokenizers" ] || { echo "missing $ASSETS/tokenizers (shared assets)" >&2; exit 1; }

BIN="${GRAFT_BENCH_BIN:-}"
if [ -z "$BIN" ]; then
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=OFF >/dev/null
  fi
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target bench_tokenizer >/dev/null
  BIN="$BUILD_DIR/bench/bench_tokenizer"
  mkdir -p "$BUILD_DIR"
  OUTDIR="$BUILD_DIR"
else
  OUTDIR="$(mktemp -d)"
fi
TEXT="$OUTDIR/tokenizer_bench_text.json"
"$PY" "$ROOT/tools/tokenizer/make_bench_text.py" "$TEXT" "$ASSETS" >&2

PIN=()
if command -v taskset >/dev/null; then PIN=(taskset -c "$CORE"); fi
export RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1
GRAFT_TOKENIZER_BENCH_TEXT="$TEXT" "${PIN[@]}" "$BIN" --benchmark_out="$OUTDIR/tok_graft.json" \
  --benchmark_out_format=json >&2
"${PIN[@]}" "$REF_PY" "$ROOT/tools/tokenizer/hf_bench.py" "$TEXT" "$OUTDIR/tok_hf.json" \
  "qwen3=$ASSETS/tokenizers/qwen3/tokenizer.json" "llama3_1=$ASSETS/tokenizers/llama3_1/tokenizer.json"

"$PY" - "$OUTDIR/tok_graft.json" "$OUTDIR/tok_hf.json" <<'PYEOF'
import json, sys
g = json.load(open(sys.argv[1])); h = json.load(open(sys.argv[2]))
scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
rows = {}
for b in g["benchmarks"]:
    _, name, mode = b["name"].split("/")[:3]
    mb = b["MB"]  # MB of input per pass
    rows[(name, mode)] = (mb / (b["cpu_time"] * scale[b["time_unit"]]), mb / (b["real_time"] * scale[b["time_unit"]]))
print("MB/s = MB of UTF-8 input per second of CPU time (wall-clock in parentheses), one core each")
print(f"{'tokenizer':<10} {'mode':<6} {'graft MB/s':>18} {'HF MB/s':>16} {'graft/HF':>9}")
for name in ("qwen3", "llama3_1"):
    for mode in ("docs", "whole", "cold"):
        gv, hv = rows.get((name, mode)), h.get(name, {}).get(mode)
        if gv is None or hv is None: continue
        print(f"{name:<10} {mode:<6} {gv[0]:>8.2f} ({gv[1]:>6.2f})  {hv['MB_per_cpu_s']:>6.2f} ({hv['MB_per_s']:>6.2f}) {gv[0] / hv['MB_per_cpu_s']:>8.2f}x")
print(f"input: {h['qwen3']['bytes']} bytes of mixed text (1187 documents); taskset one core, RAYON_NUM_THREADS=1")
PYEOF
