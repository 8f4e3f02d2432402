#!/usr/bin/env bash
# MoE kernels on the GPU machine: build, run the CPU + CUDA MoE tests, then time the MoE layer
# fwd+bwd (graft NF4 grouped kernels vs the torch dequantize-all baseline) at the
# Qwen3-30B-A3B expert shape (E=128, top-8, H=2048, I=768, 8192 tokens) and print the ratio.
# Usage: bench/cuda/moe/run.sh [--skip-tests] [extra bench args, e.g. --tokens 4096]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BUILD=${BUILD:-$ROOT/build-moe-gpu}
OUT=${OUT:-$BUILD/moe-bench}
SKIP_TESTS=0
if [[ "${1:-}" == "--skip-tests" ]]; then SKIP_TESTS=1; shift; fi
mkdir -p "$OUT"

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGRAFT_WERROR=ON >"$OUT/cmake.log"
cmake --build "$BUILD" -j"$(nproc)" --target test_kernels_cpu_moe test_cuda_moe bench_moe_cuda >"$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true

if [[ $SKIP_TESTS == 0 ]]; then
  "$BUILD/tests/kernels/cpu_moe/test_kernels_cpu_moe" --gtest_brief=1 | tee "$OUT/test_cpu_moe.txt"
  "$BUILD/tests/kernels/cuda_moe/test_cuda_moe" --gtest_brief=1 | tee "$OUT/test_cuda_moe.txt"
fi

"$BUILD/bench/bench_moe_cuda" "$@" | tee "$OUT/graft.txt"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 "$HERE/torch_moe_baseline.py" "$@" | tee "$OUT/torch.txt"
else
  echo "torch with CUDA not available: no baseline" | tee "$OUT/torch.txt"
fi

python3 - "$OUT/graft.txt" "$OUT/torch.txt" <<'PY'
import re, sys
def rows(path):
    out = []
    for line in open(path):
        if line.startswith("RESULT"):
            out.append(dict(kv.split("=") for kv in line.split()[1:]))
    return out
g, t = rows(sys.argv[1]), rows(sys.argv[2])
base = next((r for r in g if r.get("lora") == "0"), None)
if base and t:
    tt = float(t[0]["total_ms"])
    for r in g:
        print(f"ratio torch/graft total time (lora={r['lora']}): {tt / float(r['total_ms']):.2f}x  "
              f"(graft {r['total_ms']} ms, {r['total_tflops']} TFLOP/s; torch {t[0]['total_ms']} ms, "
              f"{t[0]['total_tflops']} TFLOP/s)")
else:
    print("no ratio: missing RESULT lines")
PY
