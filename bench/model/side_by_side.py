#!/usr/bin/env python3
# graft bench_model and llama.cpp llama-bench, interleaved: for each thread count and each repetition, one graft run
# (every BM_Prefill/BM_Decode row) then one llama-bench run per GGUF, so both see the same load on a shared machine.
# Prints the median tokens/s of each row over the repetitions as a markdown table, with `uptime` before and after.
#   side_by_side.py --graft BUILD/bench/bench_model --llama-bench LLAMA/build/bin/llama-bench --moe-dir DIR \
#       --gguf stories260K:f32=A.gguf --gguf moe:Q4_0=B.gguf ... [--threads 1,2] [--reps 5]
# Rows: prefill = 128-token prompt (graft: logits of the last position only, like llama-bench pp128);
# decode = 32 tokens (graft: after a 16-token context; llama-bench tg32).
import argparse, json, os, statistics, subprocess, sys

GRAFT_ROWS = {  # bench_model name prefix -> (model, weights, phase)
    "BM_Prefill/0/0/128": ("stories260K", "f32", "prefill"),
    "BM_Prefill/0/1/128": ("stories260K", "nf4", "prefill"),
    "BM_Prefill/1/0/128": ("moe", "f32", "prefill"),
    "BM_Prefill/1/1/128": ("moe", "nf4", "prefill"),
    "BM_Decode/0/0/16": ("stories260K", "f32", "decode"),
    "BM_Decode/0/1/16": ("stories260K", "nf4", "decode"),
    "BM_Decode/1/0/16": ("moe", "f32", "decode"),
    "BM_Decode/1/1/16": ("moe", "nf4", "decode"),
    "BM_Prefill/1/2/128": ("moe", "nf4+lmh", "prefill"),  # NF4 body + NF4 lm_head (--lm-head-dtype nf4)
    "BM_Decode/1/2/16": ("moe", "nf4+lmh", "decode"),
    "BM_Prefill/1/3/128": ("moe", "nf4+q8lmh", "prefill"),  # NF4 body + Q8 lm_head (--lm-head-dtype q8)
    "BM_Decode/1/3/16": ("moe", "nf4+q8lmh", "decode"),
    "BM_Prefill/1/4/128": ("moe", "nf4+q6lmh", "prefill"),  # NF4 body + Q6 lm_head (--lm-head-dtype q6)
    "BM_Decode/1/4/16": ("moe", "nf4+q6lmh", "decode"),
}


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def read_bandwidth():
    """GB/s of one thread streaming 256 MiB of f32 through numpy's dot (OpenBLAS sdot), best of 5: the
    memory-bandwidth ceiling of decode."""
    import time
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import numpy as np
    a = np.ones(64 << 20, dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.dot(a, a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def run_graft(binary, moe_dir, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), GRAFT_BENCH_MOE_DIR=moe_dir)
    env.pop("OPENBLAS_CORETYPE", None)
    out = subprocess.run([binary, "--benchmark_format=json"], env=env, capture_output=True, text=True, check=True).stdout
    res = {}
    for b in json.loads(out)["benchmarks"]:
        for prefix, key in GRAFT_ROWS.items():
            if b["name"].startswith(prefix + "/") and "tok/s" in b:
                res[key] = b["tok/s"]
    return res


def run_llama(binary, gguf, threads):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    r = subprocess.run([binary, "-m", gguf, "-p", "128", "-n", "32", "-t", str(threads), "-r", "1", "-o", "json"],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-bench failed on {gguf} (exit {r.returncode}): {r.stderr[-2000:]}")
    out = r.stdout
    res = {}
    for t in json.loads(out):
        phase = "prefill" if t["n_prompt"] > 0 and t["n_gen"] == 0 else "decode"
        res[phase] = t["avg_ts"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graft", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--moe-dir", required=True)
    ap.add_argument("--gguf", action="append", default=[], help="model:weights=path, model in {stories260K, moe}")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    ggufs = []
    for g in a.gguf:
        key, path = g.split("=", 1)
        model, weights = key.split(":")
        if os.path.exists(path):
            ggufs.append((model, weights, path))
    print(f"read bandwidth, 1 thread: {read_bandwidth():.1f} GB/s ({uptime()})", flush=True)
    samples = {}  # (engine, model, weights, phase, threads) -> [tok/s]
    for threads in [int(t) for t in a.threads.split(",")]:
        print(f"threads {threads}, start: {uptime()}", flush=True)
        for rep in range(a.reps):
            for (model, weights, phase), v in run_graft(a.graft, a.moe_dir, threads).items():
                samples.setdefault(("graft", model, weights, phase, threads), []).append(v)
            for model, weights, path in ggufs:
                for phase, v in run_llama(a.llama_bench, path, threads).items():
                    samples.setdefault(("llama.cpp", model, weights, phase, threads), []).append(v)
            print(f"  rep {rep + 1}/{a.reps} done: {uptime()}", flush=True)
        print(f"threads {threads}, end: {uptime()}", flush=True)
    print(f"read bandwidth, 1 thread: {read_bandwidth():.1f} GB/s ({uptime()})", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print("\n| model | phase | threads | graft f32 | llama.cpp f32 | graft / llama f32 | graft NF4 | llama.cpp Q4_0 |"
          " llama.cpp Q4_K_M | NF4 / Q4_0 | NF4 / Q4_K_M | graft NF4 / graft f32 |"
          " graft NF4 + NF4 lm_head | NF4+lm_head / Q4_0 | NF4+lm_head / graft f32 |"
          " graft NF4 + Q8 lm_head | NF4+Q8 lm_head / Q4_0 | NF4+Q8 lm_head / Q4_K_M | NF4+Q8 lm_head / graft f32 |"
          " graft NF4 + Q6 lm_head | NF4+Q6 lm_head / Q4_0 | NF4+Q6 lm_head / Q4_K_M | NF4+Q6 lm_head / graft f32 |")
    print("|" + "---|" * 23)
    fmt = lambda v: "—" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")
    ratio = lambda x, y: "—" if x is None or y is None else f"{x / y:.2f}x"
    for model in ["stories260K", "moe"]:
        for phase in ["prefill", "decode"]:
            for threads in [int(t) for t in a.threads.split(",")]:
                g = lambda e, w: med.get((e, model, w, phase, threads))
                gf, lf, gn = g("graft", "f32"), g("llama.cpp", "f32"), g("graft", "nf4")
                q40, q4k = g("llama.cpp", "Q4_0"), g("llama.cpp", "Q4_K_M")
                gh, g8, g6 = g("graft", "nf4+lmh"), g("graft", "nf4+q8lmh"), g("graft", "nf4+q6lmh")
                print(f"| {model} | {phase} | {threads} | {fmt(gf)} | {fmt(lf)} | {ratio(gf, lf)} | {fmt(gn)} | {fmt(q40)} |"
                      f" {fmt(q4k)} | {ratio(gn, q40)} | {ratio(gn, q4k)} | {ratio(gn, gf)} |"
                      f" {fmt(gh)} | {ratio(gh, q40)} | {ratio(gh, gf)} |"
                      f" {fmt(g8)} | {ratio(g8, q40)} | {ratio(g8, q4k)} | {ratio(g8, gf)} |"
                      f" {fmt(g6)} | {ratio(g6, q40)} | {ratio(g6, q4k)} | {ratio(g6, gf)} |")
    print(f"\nmedian of {a.reps} interleaved repetitions; samples: " + json.dumps({"/".join(map(str, k)): v for k, v in samples.items()}))


if __name__ == "__main__":
    sys.exit(main())
