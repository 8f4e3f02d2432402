#!/usr/bin/env python3
# PyTorch autograd baseline for graft's training step: the same model files (config.json +
# model.safetensors, dense or Qwen3-MoE), LoRA (rank R, alpha 2R) on q/k/v/o and every expert's
# gate/up/down (dense MLP projections in dense layers), one sequence of T tokens, float32 on the CPU,
# forward + cross-entropy + backward, HF-style expert loop (gather the tokens of each expert).
# Usage: torch_step.py MODEL_DIR T R STEPS   -> prints "torch_step_ms <median>"
import json, math, os, statistics, sys, time
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "py"))
import safetensors_io  # noqa: E402

def load_st(path):
    return {k: torch.from_numpy(a) for k, a in safetensors_io.load(path, dtypes=("F32",)).items()}

d, T, R, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(torch.get_num_threads())
cfg = json.load(open(d + "/config.json"))
W = load_st(d + "/model.safetensors")
H, nh, nkv, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
D = cfg.get("head_dim") or H // nh
eps = cfg["rms_norm_eps"]
lora = {}
def lin(x, name):
    y = x @ W[name + ".weight"].T
    if name not in lora:
        w = W[name + ".weight"]
        lora[name] = (torch.nn.Parameter(torch.randn(R, w.shape[1]) / math.sqrt(w.shape[1])), torch.nn.Parameter(torch.zeros(w.shape[0], R)))
    a, b = lora[name]
    return y + 2.0 * ((x @ a.T) @ b.T)
def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, D, 2).float() / D))
ang = torch.arange(T).float()[:, None] * inv[None, :]
cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None, :], torch.cat([ang.sin()] * 2, -1)[:, None, :]
def rope(x):
    return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin
mask = torch.ones(T, T, dtype=torch.bool).tril()
ids = torch.randint(0, cfg["vocab_size"], (T,))
labels = torch.randint(0, cfg["vocab_size"], (T,))
def step():
    h = W["model.embed_tokens.weight"][ids]
    for l in range(L):
        p = f"model.layers.{l}."
        x = rms(h, W[p + "input_layernorm.weight"])
        q = rms(lin(x, p + "self_attn.q_proj").view(T, nh, D), W[p + "self_attn.q_norm.weight"])
        k = rms(lin(x, p + "self_attn.k_proj").view(T, nkv, D), W[p + "self_attn.k_norm.weight"])
        v = lin(x, p + "self_attn.v_proj").view(T, nkv, D)
        q, k = rope(q), rope(k).repeat_interleave(nh // nkv, 1)
        s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
        a = torch.einsum("hts,shd->thd", s.masked_fill(~mask, float("-inf")).softmax(-1), v.repeat_interleave(nh // nkv, 1))
        h = h + lin(a.reshape(T, nh * D), p + "self_attn.o_proj")
        x = rms(h, W[p + "post_attention_layernorm.weight"])
        if p + "mlp.gate.weight" in W:
            probs = (x @ W[p + "mlp.gate.weight"].T).softmax(-1)
            topv, topi = torch.topk(probs, cfg["num_experts_per_tok"], -1)
            topv = topv / topv.sum(-1, keepdim=True)
            out = torch.zeros_like(x)
            for e in range(W[p + "mlp.gate.weight"].shape[0]):
                tok, slot = torch.where(topi == e)
                if tok.numel() == 0:
                    continue
                xe = x[tok]
                ep = f"{p}mlp.experts.{e}."
                ye = lin(torch.nn.functional.silu(lin(xe, ep + "gate_proj")) * lin(xe, ep + "up_proj"), ep + "down_proj")
                out = out.index_add(0, tok, ye * topv[tok, slot][:, None])
            h = h + out
        else:
            h = h + lin(torch.nn.functional.silu(lin(x, p + "mlp.gate_proj")) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
    lm = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    loss = torch.nn.functional.cross_entropy(rms(h, W["model.norm.weight"]) @ lm.T, labels)
    loss.backward()
step()  # creates the LoRA parameters
times = []
for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append((time.perf_counter() - t) * 1e3)
print(f"torch_step_ms {statistics.median(times):.3f} threads {torch.get_num_threads()} torch {torch.__version__}")
