#!/usr/bin/env bash
# Serving kernels on the GPU machine, in ONE call: build; CPU reference tests; CUDA tests (GPU vs
# CPU reference, CUDA-graph replay); compute-sanitizer memcheck and racecheck on a representative
# subset of the CUDA tests; the benchmark (SGMV / BGMV per module at decode B = 1..256 and prefill
# T = 4096 for Llama-3-8B and Qwen3-30B-A3B, GB/s vs the measured HBM bandwidth, the added latency of
# a 32-layer decode step with 64 distinct adapters at B = 64, MoE-LoRA, paged attention decode GB/s
# and prefill TFLOP/s); the torch baselines (per-adapter loop, padded gather-bmm) and a side-by-side
# table. Everything is also written under $OUT (default $BUILD/serve-bench).
# Usage: bench/cuda/serve/run.sh [--quick] [--skip-sanitizer]       (env BUILD=dir to reuse a build)
# Exit status: non-zero when a test or a sanitizer failed (the benchmark still runs).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
BUILD=${BUILD:-$ROOT/build-serve-gpu}
OUT=${OUT:-$BUILD/serve-bench}
QUICK=""
SANITIZE=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK="--quick" ;;
    --skip-sanitizer) SANITIZE=0 ;;
  esac
done
mkdir -p "$OUT"
STATUS=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)  date: $(date -u +%FT%TZ)"

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=ON -DGRAFT_WERROR=ON >"$OUT/cmake.log" 2>&1 \
  || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" --target test_kernels_cpu_serve test_cuda_serve bench_serve_cuda >"$OUT/build.log" 2>&1 \
  || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
TEST="$BUILD/tests/kernels/cuda_serve/test_cuda_serve"

echo "== CPU reference tests"
"$BUILD/tests/kernels/cpu_serve/test_kernels_cpu_serve" --gtest_brief=1 2>&1 | tee "$OUT/test_cpu_serve.txt" || STATUS=1
echo "== CUDA tests"
"$TEST" --gtest_brief=1 2>&1 | tee "$OUT/test_cuda_serve.txt" || STATUS=1

if [[ $SANITIZE == 1 ]]; then
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  # Representative cases: every kernel, odd sizes, split-K, misaligned adapters, rank chunks,
  # MoE-LoRA, all attention kinds and the graph replay (the full sweep under the sanitizer is too slow).
  MEM_FILTER='Batches/CudaServeLora.*/T7_*:Batches/CudaServeLora.*/T33_zipf15_qkv*:CudaServeLoraRanks.*:CudaServeMoeLora.*'
  MEM_FILTER+=':Shapes/CudaPagedDecode.*/D128_Hq32_Hkv8_bs7_ps*:Shapes/CudaPagedDecode.*/D64_Hq12_Hkv4_bs16_ps64'
  MEM_FILTER+=':Shapes/CudaPagedMla.*/L512_H16*:Shapes/CudaPagedMla.*/L256*:Shapes/CudaPagedPrefill.*:CudaServeGraph.*'
  RACE_FILTER='Batches/CudaServeLora.*/T7_uniform_qkv*:Batches/CudaServeLora.*/T33_identical_single*'
  RACE_FILTER+=':CudaServeLoraRanks.OddAndLargeRanks:Shapes/CudaPagedDecode.*/D64_Hq16_Hkv2_bs7_ps64'
  RACE_FILTER+=':Shapes/CudaPagedMla.*/L256*:Shapes/CudaPagedPrefill.*/D64_Hq6*:Shapes/CudaPagedPrefill.*/D128_Hq4*'
  echo "== compute-sanitizer memcheck"
  "$SAN" --tool memcheck --error-exitcode 3 --leak-check full "$TEST" --gtest_brief=1 --gtest_filter="$MEM_FILTER" \
    2>&1 | tee "$OUT/memcheck.txt" | tail -25 || STATUS=1
  echo "== compute-sanitizer racecheck"
  "$SAN" --tool racecheck --racecheck-report all --error-exitcode 3 "$TEST" --gtest_brief=1 --gtest_filter="$RACE_FILTER" \
    2>&1 | tee "$OUT/racecheck.txt" | tail -25 || STATUS=1
  echo "== compute-sanitizer synccheck"
  "$SAN" --tool synccheck --error-exitcode 3 "$TEST" --gtest_brief=1 --gtest_filter="$RACE_FILTER" \
    2>&1 | tee "$OUT/synccheck.txt" | tail -10 || STATUS=1
fi

echo "== benchmark"
"$BUILD/bench/bench_serve_cuda" $QUICK 2>&1 | tee "$OUT/graft.txt"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "== torch baselines"
  python3 "$HERE/torch_baseline.py" $QUICK 2>&1 | tee "$OUT/torch.txt"
else
  echo "torch with CUDA not available: no baseline" | tee "$OUT/torch.txt"
fi

echo "== side by side (ms per layer and module; speed-up = torch / graft best)"
python3 - "$OUT/graft.txt" "$OUT/torch.txt" <<'PY' | tee "$OUT/compare.txt"
import sys
def rows(path):
    out = []
    for line in open(path, errors="replace"):
        if line.startswith("RESULT"):
            out.append(dict(kv.split("=", 1) for kv in line.split()[1:]))
    return out
g, t = rows(sys.argv[1]), rows(sys.argv[2])
key = lambda r: (r["model"], r["module"], int(r["B"]))
graft, torch = {}, {}
for r in g:
    if r.get("kind") == "lora":
        graft.setdefault(key(r), {})[r["path"]] = float(r["ms"])
for r in t:
    if r.get("kind") == "lora":
        torch.setdefault(key(r), {})[r["impl"]] = float(r["ms"])
impls = ["torch_loop", "torch_padded16", "torch_padded64"]
print(f"{'model':<14} {'module':<8} {'B':>5} {'sgmv':>9} {'bgmv':>9} " + " ".join(f"{i:>15}" for i in impls) + "  speed-up vs loop / padded16")
for k in sorted(graft):
    gv, tv = graft[k], torch.get(k, {})
    best = min(gv.values())
    cells = " ".join(f"{tv[i]:15.4f}" if i in tv else f"{'-':>15}" for i in impls)
    su = []
    for i in impls[:2]:
        su.append(f"{tv[i] / best:6.2f}x" if i in tv else "     -")
    print(f"{k[0]:<14} {k[1]:<8} {k[2]:>5} {gv.get('sgmv', float('nan')):9.4f} {gv.get('bgmv', float('nan')):9.4f} {cells}  {' '.join(su)}")
for r in g:
    if r.get("kind") in ("step", "hbm", "moe_lora", "paged_decode", "mla_decode", "paged_prefill"):
        print(" ".join(f"{a}={b}" for a, b in r.items()))
PY
echo "exit status: $STATUS (0 = all tests and sanitizer runs passed)"
exit $STATUS
