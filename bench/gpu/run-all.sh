#!/usr/bin/env bash
# The ONE prepared GPU check (run it first whenever a session is lent a GPU): from the kit that
# bench/gpu/build.sh made here (gpu-kit/, carried to the device), it runs every CUDA test binary, a
# compute-sanitizer memcheck subset, and the CUDA benchmarks with the PyTorch baselines that exist on the device,
# each step under its own time limit, never stopping at the first failure, and writes one report:
# $OUT/report.json and $OUT/report.md (plus each step's full log under $OUT/logs/). Budget: <= 8 minutes.
# Usage (device tool): run(command="bash bench/gpu/run-all.sh", carry=["gpu-kit"], timeout_s=540)
#   env KIT=gpu-kit  OUT=(the device tool's $OUT, else ./gpu-report)  QUICK=1 (benchmarks' --quick)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
KIT=${KIT:-gpu-kit}
OUT=${OUT:-$ROOT/gpu-report}
mkdir -p "$OUT/logs"
# The kit's non-CUDA libraries travel gzipped (bench/gpu/build.sh).
if [[ -f "$KIT/lib.tar.gz" && ! -d "$KIT/lib" ]]; then tar -xzf "$KIT/lib.tar.gz" -C "$KIT"; fi
export LD_LIBRARY_PATH="$ROOT/$KIT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
START=$(date +%s)
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

# step NAME LIMIT_S CMD...: runs CMD with a time limit, logs to $OUT/logs/NAME.log, records rc and seconds.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$? t1=$(date +%s)
  tail -5 "$OUT/logs/$name.log"
  printf '{"step":"%s","rc":%d,"seconds":%d,"timed_out":%s}\n' "$name" "$rc" "$((t1 - t0))" \
    "$([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)" >> "$STEPS"
  echo "   -> rc=$rc in $((t1 - t0)) s"
}

if [[ ! -d "$KIT/bin" ]]; then
  echo "no $KIT/bin: build the kit here first (bench/gpu/build.sh) and carry it" | tee "$OUT/report.md"
  exit 2
fi
{
  echo "commit (kit): $(cat "$KIT/commit.txt" 2>/dev/null)"; date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1
  echo "missing libraries:"; for f in "$KIT"/bin/*; do ldd "$f" | grep "not found"; done | sort -u
} > "$OUT/logs/environment.log" 2>&1
cat "$OUT/logs/environment.log"

# 1. Every CUDA test binary, with GoogleTest's JSON report.
for t in $(cat "$KIT/tests.txt"); do
  step "test-$t" 150 "$KIT/bin/$t" --gtest_brief=1 --gtest_output="json:$OUT/logs/$t.json"
done
# 2. compute-sanitizer memcheck on a reduced subset (one small case per kernel family).
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ -x "$SAN" ]]; then
  [[ -x "$KIT/bin/test_cuda_serve" ]] && step memcheck-serve 90 "$SAN" --tool memcheck --error-exitcode 3 \
    "$KIT/bin/test_cuda_serve" --gtest_brief=1 \
    --gtest_filter='CudaServeLoraRanks.*:CudaServeMoeLora.*:Shapes/CudaPagedPrefill.*/D64_Hq6*:CudaServeGraph.*'
  [[ -x "$KIT/bin/test_cuda_moe" ]] && step memcheck-moe 60 "$SAN" --tool memcheck --error-exitcode 3 \
    "$KIT/bin/test_cuda_moe" --gtest_brief=1 --gtest_filter='CudaMoePlan.*:CudaMoePermute.*:AllRouters/CudaMoeRoute.*/0'
  [[ -x "$KIT/bin/test_cuda_nf4_matmul" ]] && step memcheck-nf4 60 "$SAN" --tool memcheck --error-exitcode 3 \
    "$KIT/bin/test_cuda_nf4_matmul" --gtest_brief=1 --gtest_filter='CudaNf4Matmul.ForwardOddShapes:CudaNf4Matmul.BackwardOddShapes:CudaNf4Matmul.DequantIsBitExact'
  [[ -x "$KIT/bin/test_cuda_serve" ]] && step racecheck-serve 60 "$SAN" --tool racecheck --error-exitcode 3 \
    "$KIT/bin/test_cuda_serve" --gtest_brief=1 --gtest_filter='CudaServeLoraRanks.OddAndLargeRanks'
  # Attention: every kernel (CUDA-core and tensor-core fwd/bwd, masked-tile skips, empty rows) on small
  # shapes; racecheck sees the shared-memory hazards the SIMT target cannot (fibers run in order).
  [[ -x "$KIT/bin/test_cuda_attention" ]] && step racecheck-attention 60 "$SAN" --tool racecheck --error-exitcode 3 \
    "$KIT/bin/test_cuda_attention" --gtest_brief=1 \
    --gtest_filter='Shapes/CudaAttention.*MatchesCpu/chunk8:Shapes/CudaAttention.*MatchesCpu/packed12_empty_rows:Shapes/CudaAttention.*MatchesCpu/mla_D192_Dv128'
else
  echo '{"step":"sanitizer","rc":127,"seconds":0,"timed_out":false}' >> "$STEPS"
fi
# 3. Benchmarks (quick sizes) and the PyTorch baselines that exist on the device.
Q=${QUICK:-1}; QF=(); [[ $Q == 1 ]] && QF=(--quick)
step bench-nf4-matmul 60 "$KIT/bin/bench_cuda_nf4_matmul" "${QF[@]}"
step bench-serve 90 "$KIT/bin/bench_serve_cuda" "${QF[@]}"
step bench-moe 60 "$KIT/bin/bench_moe_cuda"
step bench-attention 45 "$KIT/bin/bench_attention_cuda" "${QF[@]}"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  step torch-serve 60 python3 bench/cuda/serve/torch_baseline.py "${QF[@]}"
  step torch-moe 60 python3 bench/cuda/moe/torch_moe_baseline.py
  step torch-attention 30 python3 bench/cuda/attention/torch_baseline.py "${QF[@]}"
fi

# 4. The report: JSON (steps + per-test results) and Markdown (failures first).
python3 - "$OUT" "$START" <<'PY'
import glob, json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl")) if l.strip()]
tests = {}
for f in sorted(glob.glob(os.path.join(out, "logs", "*.json"))):
    try:
        j = json.load(open(f))
    except Exception as e:
        tests[os.path.basename(f)] = {"error": str(e)}
        continue
    cases = []
    for s in j.get("testsuites", []):
        for c in s.get("testsuite", []):
            fails = [x.get("failure", "") for x in c.get("failures", [])]
            cases.append({"name": s["name"] + "." + c["name"], "result": c.get("result"), "status": c.get("status"),
                          "skipped": c.get("result") == "SKIPPED", "failures": [x[:2000] for x in fails]})
    tests[os.path.basename(f)[:-5]] = {"tests": j.get("tests"), "failures": j.get("failures"), "cases": cases}
report = {"seconds": int(time.time()) - start, "steps": steps, "tests": tests,
          "environment": open(os.path.join(out, "logs", "environment.log")).read()}
json.dump(report, open(os.path.join(out, "report.json"), "w"), indent=1)
md = ["# GPU check report", "", "```", report["environment"].strip(), "```", "",
      f"Total {report['seconds']} s.", "", "| step | rc | seconds | timed out |", "|---|---|---|---|"]
md += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['timed_out']} |" for s in steps]
md += ["", "| test binary | tests | failed | skipped |", "|---|---|---|---|"]
md += [f"| {b} | {t.get('tests')} | {t.get('failures')} | {sum(c['skipped'] for c in t.get('cases', []))} |"
       for b, t in tests.items()]
md += ["", "## Failed test cases"]
nfail = 0
for b, t in tests.items():
    for c in t.get("cases", []):
        if c["failures"]:
            nfail += 1
            md += [f"### {b}: {c['name']}", "```", "\n".join(c["failures"])[:3000], "```"]
if not nfail:
    md.append("none")
open(os.path.join(out, "report.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md[:80 + len(steps) + len(tests)]))
PY
