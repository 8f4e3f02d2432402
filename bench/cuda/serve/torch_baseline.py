#!/usr/bin/env python3
"""Torch baselines for the multi-LoRA add-on, same shapes as bench_serve_cuda (rank 16, bf16):

  torch_loop      per-adapter loop: gather the adapter's rows, (x_i @ A_iᵀ) @ B_iᵀ · s, index_add_ back
                  (HF PEFT / S-LoRA's "bmm" baseline, one pair of GEMMs per adapter and slice);
  torch_padded16  vLLM-style stacked slots [max_loras, max_rank, K] / [max_loras, N, max_rank], gathered
                  per row and applied with two bmm's (max_rank = 16: no rank padding);
  torch_padded64  the same with max_rank = 64 (a rank-16 adapter in a 64-wide slot, as when
                  --max-lora-rank is set above the adapters' rank).

Decode B = 1..256 rows with min(B, 64) distinct adapters (round-robin), prefill T = 4096 with 8
adapters in contiguous chunks (the padded variants are skipped at T = 4096: the gathered [T, N, r]
weights alone would be gigabytes). Fused projections (q/k/v, gate/up) run slice by slice into views
of one output. Times: CUDA events, median of --iters after 3 warm-ups. Prints RESULT lines that
bench/cuda/serve/run.sh joins with bench_serve_cuda's.
"""
import argparse
import sys

import torch

MODELS = {
    "llama3-8b": [("qkv", 4096, [4096, 1024, 1024]), ("o", 4096, [4096]),
                  ("gate_up", 4096, [14336, 14336]), ("down", 14336, [4096])],
    "qwen3-30b-a3b": [("qkv", 2048, [4096, 512, 512]), ("o", 4096, [2048])],
}


def med(fn, iters):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    ts = []
    for _ in range(iters):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return sorted(ts)[len(ts) // 2]


def run(model, module, K, ns, T, adapters, rank, iters, chunks):
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(T, K, device=dev, dtype=dt)
    y = torch.zeros(T, sum(ns), device=dev, dtype=dt)
    if chunks:
        slot = (torch.arange(T, device=dev) * adapters // T).long()
    else:
        slot = (torch.arange(T, device=dev) % adapters).long()
    A = [torch.randn(adapters, rank, K, device=dev, dtype=dt) / K ** 0.5 for _ in ns]
    B = [torch.randn(adapters, n, rank, device=dev, dtype=dt) / rank ** 0.5 for n in ns]
    rows = [torch.nonzero(slot == i).flatten() for i in range(adapters)]
    offs = [sum(ns[:i]) for i in range(len(ns))]
    scale = 2.0

    def loop():
        for si, n in enumerate(ns):
            ys = y[:, offs[si]:offs[si] + n]
            for i, idx in enumerate(rows):
                if idx.numel() == 0:
                    continue
                xi = x.index_select(0, idx)
                ys.index_add_(0, idx, (xi @ A[si][i].t()) @ B[si][i].t() * scale)

    out = {"torch_loop": med(loop, iters)}
    if not chunks:
        for max_rank in (16, 64):
            Ap = [torch.zeros(adapters, max_rank, K, device=dev, dtype=dt) for _ in ns]
            Bp = [torch.zeros(adapters, n, max_rank, device=dev, dtype=dt) for n in ns]
            for si in range(len(ns)):
                Ap[si][:, :rank] = A[si]
                Bp[si][:, :, :rank] = B[si]

            def padded():
                for si, n in enumerate(ns):
                    v = torch.bmm(Ap[si][slot], x.unsqueeze(-1))          # [T, R, 1]
                    y[:, offs[si]:offs[si] + n] += torch.bmm(Bp[si][slot], v).squeeze(-1) * scale
            out[f"torch_padded{max_rank}"] = med(padded, iters)
            del Ap, Bp
    for impl, ms in out.items():
        print(f"{model:<14} {module:<8} B={T:<5} {impl:<15} {ms:8.4f} ms")
        print(f"RESULT kind=lora model={model} module={module} B={T} adapters={adapters} rank={rank} "
              f"impl={impl} ms={ms:.5f}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=20)
    args, _ = ap.parse_known_args()
    if not torch.cuda.is_available():
        print("torch: no CUDA device")
        return
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    batches = [1, 64, 256, 4096] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 4096]
    with torch.no_grad():
        for model, mods in MODELS.items():
            for module, K, ns in mods:
                for T in batches:
                    prefill = T > 256
                    adapters = 8 if prefill else min(T, 64)
                    run(model, module, K, ns, T, adapters, 16, args.iters, prefill)


if __name__ == "__main__":
    main()
