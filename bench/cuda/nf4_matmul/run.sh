#!/usr/bin/env bash
# On the GPU machine: build, run the NF4 kernel tests (CPU references + GPU), then the benchmark.
# Usage: bench/cuda/nf4_matmul/run.sh [--quick]      (env BUILD=dir to reuse a build folder)
# Prints TFLOP/s, GB/s and the ratios to cuBLAS bf16 / dequant+cuBLAS / copy bandwidth; record the
# figures in docs/performance.md with date, device, command and commit.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
BUILD="${BUILD:-$ROOT/build-nf4-gpu}"
JOBS="$(nproc 2>/dev/null || echo 8)"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)  date: $(date -u +%FT%TZ)"

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGRAFT_CUDA=ON > "$BUILD.cmake.log" 2>&1 || { cat "$BUILD.cmake.log"; exit 1; }
cmake --build "$BUILD" -j"$JOBS" --target test_kernels_cpu_nf4_bwd test_cuda_nf4_matmul bench_cuda_nf4_matmul

echo "== CPU reference tests"
"$BUILD/tests/kernels/cpu_nf4_bwd/test_kernels_cpu_nf4_bwd" --gtest_brief=1
echo "== GPU tests"
"$BUILD/tests/kernels/cuda_nf4/test_cuda_nf4_matmul" --gtest_brief=1

echo "== benchmark"
"$BUILD/bench/bench_cuda_nf4_matmul" "$@"

# Optional: torch bf16 matmul on the same shapes, same process conventions (median of 20 after 3 warmups).
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "== torch bf16 (reference point)"
  python3 - <<'PY'
import torch
def med(fn, reps=20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3): fn()
    ts = []
    for _ in range(reps):
        s.record(); fn(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]
for name, n, k in [("q_proj", 4096, 2048), ("k/v_proj", 512, 2048), ("o_proj", 2048, 4096),
                   ("gate/up", 14336, 4096), ("down", 4096, 14336)]:
    for t in (8192, 16, 1):
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        ms = med(lambda: x @ w.t())
        print(f"torch {name:<10} T={t:<5} N={n:<6} K={k:<6} {ms:8.4f} ms {2*t*n*k/ms/1e9:8.1f} TF/s")
PY
fi
