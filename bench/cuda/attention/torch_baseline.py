#!/usr/bin/env python3
"""PyTorch baseline for bench_attention_cuda: F.scaled_dot_product_attention (bf16, causal, GQA via
enable_gqa; torch picks its fastest backend, flash-attention 2 or cuDNN on H100) on the same shapes:
T = S in {2048, 4096} (--quick: 2048), Llama-3-8B heads (32/8, D 128) and a D = 64 model (16/4).
Forward and backward (torch.autograd.grad of out with a given dout) timed with CUDA events, median of
--iters after 3 warm-ups; TFLOP/s with the same causal convention as bench_attention_cuda (forward
2·2·T²/2·D·Hq, backward 2.5x). Prints RESULT lines.
"""
import argparse

import torch
import torch.nn.functional as F


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return
    for T in ([2048] if a.quick else [2048, 4096]):
        for model, hq, hkv, d in (("llama3-8b", 32, 8, 128), ("d64", 16, 4, 64)):
            q = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            do = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16)
            fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            out = fwd()
            bwd = lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
            tf, tb = med(fwd, a.iters), med(bwd, a.iters)
            flop = 2.0 * 2.0 * T * T / 2.0 * d * hq
            for kern, t, f in (("attention_fwd", tf, flop), ("attention_bwd", tb, 2.5 * flop)):
                print(f"RESULT kernel={kern} model={model} path=torch_sdpa T={T} Hq={hq} Hkv={hkv} D={d} "
                      f"ms={t:.3f} tflops={f / t * 1e-9:.1f}", flush=True)


if __name__ == "__main__":
    main()
