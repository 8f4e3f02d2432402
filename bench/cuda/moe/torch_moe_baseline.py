#!/usr/bin/env python3
"""Torch baseline for the MoE layer fwd+bwd at the Qwen3-30B-A3B expert shape: the Unsloth-style
path. Every forward dequantizes ALL experts' NF4 weights (bitsandbytes layout: two codes per byte,
high nibble first, one fp32 absmax per 64 values) to bf16 and runs the experts with
torch._grouped_mm when available (else a per-expert loop); the backward dequantizes again and
computes dX through both GEMMs (frozen base: no weight gradients). Routing: softmax -> top-k ->
renorm, stable sort by expert, weighted combine. Prints a RESULT line like bench_moe_cuda.

Effective FLOP: 6·n·H·I forward, the same for the backward dX (n = tokens·top_k).
"""
import argparse
import sys

import torch
import torch.nn.functional as F

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


def dequant(packed, absmax, shape, code):
    """packed [E, rows*cols/2] uint8, absmax [E, rows*cols/64] f32 -> bf16 [E, rows, cols]."""
    E = packed.shape[0]
    idx = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(E, -1, 64).long()
    w = code[idx] * absmax.unsqueeze(-1)
    return w.reshape(E, *shape).to(torch.bfloat16)


def have_grouped_mm():
    return hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability()[0] >= 9


def grouped(x, w_t, offs, counts, use_gmm):
    """x [n, K] expert-sorted, w_t [E, K, N] -> [n, N]."""
    if use_gmm:
        return torch._grouped_mm(x, w_t, offs=offs)
    out = x.new_empty(x.shape[0], w_t.shape[2])
    start = 0
    for e, c in enumerate(counts):
        if c:
            out[start:start + c] = x[start:start + c] @ w_t[e]
        start += c
    return out


class NF4Experts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xs, gu_q, gu_a, dn_q, dn_a, offs, counts, H, I, code, use_gmm):
        E = gu_q.shape[0]
        w_gu = dequant(gu_q, gu_a, (2 * I, H), code)        # [E, 2I, H]
        gu = grouped(xs, w_gu.transpose(1, 2), offs, counts, use_gmm)
        del w_gu
        g, u = gu[:, :I], gu[:, I:]
        h = F.silu(g) * u
        w_dn = dequant(dn_q, dn_a, (H, I), code)            # [E, H, I]
        y = grouped(h, w_dn.transpose(1, 2), offs, counts, use_gmm)
        ctx.save_for_backward(gu, gu_q, gu_a, dn_q, dn_a, offs)
        ctx.meta = (counts, H, I, code, use_gmm)
        return y

    @staticmethod
    def backward(ctx, dy):
        gu, gu_q, gu_a, dn_q, dn_a, offs = ctx.saved_tensors
        counts, H, I, code, use_gmm = ctx.meta
        w_dn = dequant(dn_q, dn_a, (H, I), code)
        dh = grouped(dy.contiguous(), w_dn, offs, counts, use_gmm)   # [n, I]
        del w_dn
        g, u = gu[:, :I].float(), gu[:, I:].float()
        sg = torch.sigmoid(g)
        dg = dh.float() * u * sg * (1 + g * (1 - sg))
        du = dh.float() * g * sg
        dgu = torch.cat([dg, du], dim=1).to(torch.bfloat16)
        w_gu = dequant(gu_q, gu_a, (2 * I, H), code)
        dx = grouped(dgu, w_gu, offs, counts, use_gmm)
        return dx, None, None, None, None, None, None, None, None, None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: torch.cuda.is_available() is False")
        return 0
    dev = torch.device("cuda")
    T, E, k, H, I = a.tokens, a.experts, a.topk, a.hidden, a.inter
    n = T * k
    torch.manual_seed(0)
    code = torch.tensor(NF4, device=dev)
    gu_q = torch.randint(0, 256, (E, 2 * I * H // 2), dtype=torch.uint8, device=dev)
    gu_a = torch.rand(E, 2 * I * H // 64, device=dev) * 0.05
    dn_q = torch.randint(0, 256, (E, H * I // 2), dtype=torch.uint8, device=dev)
    dn_a = torch.rand(E, H * I // 64, device=dev) * 0.05
    logits = torch.randn(T, E, device=dev)
    x = torch.randn(T, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
    state = {"gmm": have_grouped_mm()}

    def layer():
        use_gmm = state["gmm"]
        p = torch.softmax(logits, dim=-1, dtype=torch.float32)
        w, ids = torch.topk(p, k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts_t = torch.bincount(flat, minlength=E)
        offs = torch.cumsum(counts_t, 0).to(torch.int32)
        counts = counts_t.tolist() if not use_gmm else None
        tok = order // k
        xs = x[tok]
        ys = NF4Experts.apply(xs, gu_q, gu_a, dn_q, dn_a, offs, counts, H, I, code, use_gmm)
        out = torch.zeros(T, H, device=dev, dtype=torch.float32)
        out.index_add_(0, tok, ys.float() * w.reshape(-1)[order].unsqueeze(1))
        return out.to(torch.bfloat16)

    try:
        layer().backward(dout)
    except RuntimeError as err:  # e.g. a grouped_mm layout/alignment restriction of this torch build
        if not state["gmm"]:
            raise
        print(f"torch._grouped_mm failed ({err}); falling back to the per-expert loop")
        state["gmm"] = False
    use_gmm = state["gmm"]
    for _ in range(3):
        out = layer()
        out.backward(dout)
    torch.cuda.synchronize()
    s0, s1, s2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
    fwd_ms = bwd_ms = 0.0
    for _ in range(a.iters):
        x.grad = None
        s0.record()
        out = layer()
        s1.record()
        out.backward(dout)
        s2.record()
        torch.cuda.synchronize()
        fwd_ms += s0.elapsed_time(s1)
        bwd_ms += s1.elapsed_time(s2)
    fwd_ms /= a.iters
    bwd_ms /= a.iters
    flop = 6.0 * n * H * I
    tot = fwd_ms + bwd_ms
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} grouped_mm={use_gmm}")
    print(f"RESULT impl=torch_dequant_all fwd_ms={fwd_ms:.3f} bwd_ms={bwd_ms:.3f} total_ms={tot:.3f} "
          f"fwd_tflops={flop / (fwd_ms * 1e9):.1f} bwd_tflops={flop / (bwd_ms * 1e9):.1f} "
          f"total_tflops={2 * flop / (tot * 1e9):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
