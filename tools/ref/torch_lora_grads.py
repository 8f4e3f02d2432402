#!/usr/bin/python3
# PyTorch autograd reference for graft's LoRA backward (llama, qwen2, qwen3, and the MoE families
# qwen2_moe / qwen3_moe / mixtral: softmax top-k routing ± renormalisation, per-expert LoRA keys
# "L.eE.gate|up|down", Qwen2-MoE's sigmoid-gated shared expert "L.sgate|sup|sdown"):
# loads MODEL_DIR (config.json + model.safetensors), LoRA factors from ADAPTER.safetensors (keys
# "L.MODULE.A" / "L.MODULE.B", MODULE in q,k,v,o,gate,up,down; scales in ADAPTER.json) and a batch
# (ids, labels, positions, segments in BATCH.json), runs the forward in float64 with the same
# semantics as transformers (RMSNorm, rotate-half RoPE, GQA causal attention per segment, SwiGLU,
# q/k RMSNorm for qwen3, q/k/v bias for qwen2), and prints {"loss", "grads": {key: [...]}}.
import json, math, struct, sys
import numpy as np
import torch

def load_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        assert v["dtype"] == "F32", v["dtype"]
        out[k] = torch.from_numpy(np.frombuffer(data[b:e], dtype=np.float32).copy().reshape(v["shape"])).double()
    return out

def main(model_dir, adapter_st, adapter_json, batch_json):
    cfg = json.load(open(model_dir + "/config.json"))
    W = load_st(model_dir + "/model.safetensors")
    AD = load_st(adapter_st)
    scales = json.load(open(adapter_json))
    batch = json.load(open(batch_json))
    lora = {k: v.clone().requires_grad_(True) for k, v in AD.items()}
    ids = torch.tensor(batch["ids"])
    labels = torch.tensor(batch["labels"])
    pos = torch.tensor(batch["positions"]).double()
    seg = torch.tensor(batch["segments"])
    T = len(ids)
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    mt = cfg["model_type"]
    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    def lin(x, l, mod, name):
        y = x @ W[name + ".weight"].T
        if name + ".bias" in W:
            y = y + W[name + ".bias"]
        key = f"{l}.{mod}"
        if key + ".A" in lora:
            y = y + scales[key] * ((x @ lora[key + ".A"].T) @ lora[key + ".B"].T)
        return y
    inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, D, 2).double() / D))
    ang = pos[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None, :], torch.cat([ang.sin()] * 2, -1)[:, None, :]
    def rope(x):
        x1, x2 = x[..., : D // 2], x[..., D // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin
    mask = (pos[None, :] <= pos[:, None]) & (seg[None, :] == seg[:, None])
    h = W["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rms(h, W[p + "input_layernorm.weight"])
        q = lin(x, l, "q", p + "self_attn.q_proj").view(T, nh, D)
        k = lin(x, l, "k", p + "self_attn.k_proj").view(T, nkv, D)
        v = lin(x, l, "v", p + "self_attn.v_proj").view(T, nkv, D)
        if mt in ("qwen3", "qwen3_moe"):
            q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(nh // nkv, 1)
        v = v.repeat_interleave(nh // nkv, 1)
        s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
        s = s.masked_fill(~mask[None], float("-inf"))
        a = torch.einsum("hts,shd->thd", s.softmax(-1), v).reshape(T, nh * D)
        h = h + lin(a, l, "o", p + "self_attn.o_proj")
        x = rms(h, W[p + "post_attention_layernorm.weight"])
        blk = p + ("block_sparse_moe" if mt == "mixtral" else "mlp")
        if blk + ".gate.weight" in W:  # MoE layer
            E, k = W[blk + ".gate.weight"].shape[0], cfg["num_experts_per_tok"]
            probs = (x @ W[blk + ".gate.weight"].T).softmax(-1)
            topv, topi = torch.topk(probs, k, dim=-1)
            if mt == "mixtral" or cfg.get("norm_topk_prob", False):
                topv = topv / topv.sum(-1, keepdim=True)
            names = ("w1", "w3", "w2") if mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
            out = torch.zeros_like(x)
            for t in range(T):
                for j in range(k):
                    e = int(topi[t, j])
                    ep = f"{blk}.experts.{e}."
                    xt = x[t:t + 1]
                    g = lin(xt, l, f"e{e}.gate", ep + names[0])
                    u = lin(xt, l, f"e{e}.up", ep + names[1])
                    out = out + torch.nn.functional.pad(topv[t, j] * lin(torch.nn.functional.silu(g) * u, l, f"e{e}.down", ep + names[2]), (0, 0, t, T - t - 1))
            if blk + ".shared_expert.gate_proj.weight" in W:
                sp = blk + ".shared_expert."
                g, u = lin(x, l, "sgate", sp + "gate_proj"), lin(x, l, "sup", sp + "up_proj")
                sy = lin(torch.nn.functional.silu(g) * u, l, "sdown", sp + "down_proj")
                out = out + torch.sigmoid(x @ W[blk + ".shared_expert_gate.weight"].T) * sy
            h = h + out
        else:
            g, u = lin(x, l, "gate", p + "mlp.gate_proj"), lin(x, l, "up", p + "mlp.up_proj")
            h = h + lin(torch.nn.functional.silu(g) * u, l, "down", p + "mlp.down_proj")
    h = rms(h, W["model.norm.weight"])
    lm = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    logits = h @ lm.T
    loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    loss.backward()
    print(json.dumps({"loss": loss.item(), "grads": {k: (v.grad if v.grad is not None else torch.zeros_like(v)).flatten().tolist() for k, v in lora.items()}}))

if __name__ == "__main__":
    main(*sys.argv[1:5])
