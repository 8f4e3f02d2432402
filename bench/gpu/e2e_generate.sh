#!/usr/bin/env bash
# End-to-end check of the CUDA backend through the graft binary (run by bench/gpu/run-all.sh on the device):
# a deterministic random small Qwen3-MoE and Llama (graft init-model), greedy generation with --device cuda and
# --device cpu, the generated ids compared (bf16 activations may flip a near-tie late: the agreement length is
# printed, the first 8 ids must agree), plus the wall time of each run. Exit 0 only when every CUDA run
# succeeded and agreed on its first 8 ids.
# Usage: e2e_generate.sh GRAFT_BIN WORK_DIR
set -uo pipefail
GRAFT=$1
WORK=$2
mkdir -p "$WORK"
"$GRAFT" devices
fail=0
for arch in llama qwen3_moe; do
  m="$WORK/$arch"
  "$GRAFT" init-model --arch "$arch" --preset small --seed 1 --out "$m" > /dev/null || { echo "init-model $arch failed"; fail=1; continue; }
  for dev in cpu cuda; do
    t0=$(date +%s.%N)
    "$GRAFT" generate "$m" --prompt "Once upon a time there was" --max-tokens 32 --json --device "$dev" > "$WORK/$arch.$dev.json" 2> "$WORK/$arch.$dev.err"
    rc=$?
    t1=$(date +%s.%N)
    printf '%s %s: rc=%d, %.2f s\n' "$arch" "$dev" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')"
    [[ $rc != 0 ]] && { tail -3 "$WORK/$arch.$dev.err"; fail=1; }
  done
  python3 - "$WORK/$arch.cpu.json" "$WORK/$arch.cuda.json" "$arch" <<'PY' || fail=1
import json, sys
try:
    a = json.load(open(sys.argv[1]))["generated_ids"]; b = json.load(open(sys.argv[2]))["generated_ids"]
except Exception as e:
    print(f"{sys.argv[3]}: cannot compare ({e})"); sys.exit(1)
n = 0
while n < min(len(a), len(b)) and a[n] == b[n]: n += 1
print(f"{sys.argv[3]}: cuda and cpu greedy ids agree for {n}/{len(a)} tokens")
sys.exit(0 if n >= min(8, len(a)) else 1)
PY
done
exit $fail
