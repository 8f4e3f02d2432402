#!/usr/bin/env python3
"""HF tokenizers (Rust, the PyPI `tokenizers` package in tools/.venv) encode throughput on the same documents as
graft's bench_tokenizer. Run with RAYON_NUM_THREADS=1 (and taskset) for one core.

Usage: tools/.venv/bin/python hf_bench.py TEXT.json OUT.json NAME=tokenizer.json [...]
Reports MB/s over wall time (MB_per_s) and over CPU time (MB_per_cpu_s), best run of each.
modes: docs = encode_batch(all documents) (one native call), whole = encode(concatenation),
       cold = docs on a freshly loaded tokenizer (empty word cache).
"""
import json
import sys
import time

from tokenizers import Tokenizer


def timeit(fn, min_seconds):
    best = best_cpu = float("inf")
    total, n, last = 0.0, 0, None
    while total < min_seconds or n < 3:
        c0, t0 = time.process_time(), time.perf_counter()
        last = fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        best, best_cpu = min(best, dt), min(best_cpu, dc)
        total += dt
        n += 1
    return best, best_cpu, n, last


def main():
    text_path, out_path, *specs = sys.argv[1:]
    docs = json.load(open(text_path, encoding="utf-8"))
    whole = "".join(docs)
    nbytes = len(whole.encode("utf-8"))
    out = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        tok = Tokenizer.from_file(path)
        tok.encode_batch(docs, add_special_tokens=False)  # warm-up (fills the word cache)
        d = timeit(lambda: sum(len(e.ids) for e in tok.encode_batch(docs, add_special_tokens=False)), 2.0)
        w = timeit(lambda: len(tok.encode(whole, add_special_tokens=False).ids), 2.0)
        cold_wall = cold_cpu = float("inf")
        for _ in range(3):
            fresh = Tokenizer.from_file(path)
            c0, t0 = time.process_time(), time.perf_counter()
            fresh.encode_batch(docs, add_special_tokens=False)
            cold_wall = min(cold_wall, time.perf_counter() - t0)
            cold_cpu = min(cold_cpu, time.process_time() - c0)
        out[name] = {
            "bytes": nbytes,
            "docs": {"MB_per_s": nbytes / 1e6 / d[0], "MB_per_cpu_s": nbytes / 1e6 / d[1], "tokens": d[3], "runs": d[2]},
            "whole": {"MB_per_s": nbytes / 1e6 / w[0], "MB_per_cpu_s": nbytes / 1e6 / w[1], "tokens": w[3], "runs": w[2]},
            "cold": {"MB_per_s": nbytes / 1e6 / cold_wall, "MB_per_cpu_s": nbytes / 1e6 / cold_cpu},
        }
        print(f"hf {name}: docs {out[name]['docs']['MB_per_cpu_s']:.2f} MB/cpu-s, whole "
              f"{out[name]['whole']['MB_per_cpu_s']:.2f}, cold {out[name]['cold']['MB_per_cpu_s']:.2f}", file=sys.stderr)
    json.dump(out, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
