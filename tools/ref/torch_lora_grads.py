#!/usr/bin/python3
# PyTorch autograd reference for graft's LoRA backward, transcribing transformers' modeling code in
# float64 for every family graft trains:
#   llama, qwen2 (q/k/v bias), qwen3 (q/k RMSNorm), mixtral / qwen2_moe / qwen3_moe (softmax top-k
#   ± renorm, Qwen2-MoE's sigmoid-gated shared expert), deepseek_v2 / deepseek_v3 (MLA with or
#   without q_lora, RoPE through HF's interleave permutation, yarn rope and softmax mscale; routers:
#   V2 softmax greedy / group_limited_greedy with renorm or routed scaling, V3 sigmoid +
#   e_score_correction_bias + group-limited top-k + norm + routed scaling; ungated shared experts),
#   llama4 (complex RoPE, chunked attention, NoPE layers with attention temperature, weightless L2
#   q/k norm, interleaved MoE / dense layers, top-k sigmoid router scaling the expert input, fused
#   experts [E, H, 2I] / [E, I, H], shared expert).
# Usage: torch_lora_grads.py MODEL_DIR ADAPTER.safetensors ADAPTER.json BATCH.json
#   LoRA keys "L.MOD.A" / "L.MOD.B" with MOD in q,k,v,o,qa,qb,kva,kvb,gate,up,down (dense MLP),
#   sgate,sup,sdown (shared expert) or eE.gate|up|down (routed expert E); scales in ADAPTER.json.
#   BATCH.json: ids, labels, positions, segments and optionally dropout {p, seed, draw}: LoRA dropout
#   with the mask hash of train/include/graft/train/lora_dropout.hpp.
# Prints {"loss", "grads": {key: [...]}, "routes": {layer: [[expert ids of token t]...]}}.
import json, math, os, sys
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "py"))
from rope_ref import rope_init  # noqa: E402
import safetensors_io  # noqa: E402

F = torch.nn.functional
SITES = {"q": 0, "k": 1, "v": 2, "o": 3, "qa": 4, "qb": 5, "kva": 6, "kvb": 7, "gate": 8, "up": 9, "down": 10,
         "sgate": 11, "sup": 12, "sdown": 13}
PROJ = {"gate": 0, "up": 1, "down": 2}
M64 = (1 << 64) - 1


def load_st(path):
    out = {}
    for k, a in safetensors_io.load(path, dtypes=("F32",)).items():
        name = k[len("language_model."):] if k.startswith("language_model.") else k
        out[name] = torch.from_numpy(a).double()
    return out


# ---------------------------------------------------------------- LoRA dropout masks (lora_dropout.hpp)
def mix_int(z):
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mix_np(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_mask(p, seed, draw, layer, site, rows, cols):
    key = mix_int(mix_int(mix_int(mix_int(seed) ^ draw) ^ layer) ^ site)
    idx = (np.asarray(rows, dtype=np.uint64)[:, None] << np.uint64(32)) | np.arange(cols, dtype=np.uint64)[None, :]
    u = (mix_np(np.uint64(key) ^ idx) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return torch.from_numpy((u >= p).astype(np.float64) / (1.0 - p))


class Ref:
    def __init__(self, model_dir, adapter_st, adapter_json, batch_json):
        cfg = json.load(open(model_dir + "/config.json"))
        self.tc = cfg.get("text_config", cfg)
        self.mt = {"llama4_text": "llama4"}.get(self.tc["model_type"], self.tc["model_type"])
        self.W = load_st(model_dir + "/model.safetensors")
        self.scales = json.load(open(adapter_json))
        self.lora = {k: v.clone().requires_grad_(True) for k, v in load_st(adapter_st).items()}
        b = json.load(open(batch_json))
        self.ids, self.labels = torch.tensor(b["ids"]), torch.tensor(b["labels"])
        self.pos = torch.tensor(b["positions"]).double()
        self.seg = torch.tensor(b["segments"])
        self.T = len(b["ids"])
        self.drop = b.get("dropout")
        self.eps = self.tc["rms_norm_eps"]
        self.routes = {}

    # ------------------------------------------------------------ building blocks
    def rms(self, x, w=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y if w is None else y * w

    def lin(self, x, l, mod, W, bias=None, rows=None):
        y = x @ W.T
        if bias is not None:
            y = y + bias
        key = f"{l}.{mod}"
        if key + ".A" in self.lora:
            xl = x
            if self.drop and self.drop["p"] > 0:
                site = SITES[mod] if mod in SITES else 64 + 3 * int(mod.split(".")[0][1:]) + PROJ[mod.split(".")[1]]
                r = list(range(x.shape[0])) if rows is None else rows
                xl = x * dropout_mask(self.drop["p"], self.drop["seed"], self.drop["draw"], l, site, r, x.shape[1])
            y = y + self.scales[key] * ((xl @ self.lora[key + ".A"].T) @ self.lora[key + ".B"].T)
        return y

    def proj(self, x, l, mod, name, rows=None):
        return self.lin(x, l, mod, self.W[name + ".weight"], self.W.get(name + ".bias"), rows)

    def rope_cs(self, dim):
        rs = self.tc.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type", "default"))
        orig = rs.get("original_max_position_embeddings") or self.tc.get("max_position_embeddings", 8192)
        # dynamic NTK: the sequence length (max position + 1) takes the place of low_freq_factor
        low = int(self.pos.max().item()) + 1 if kind == "dynamic" else rs.get("low_freq_factor", 1.0)
        scaling, inv = rope_init(kind, dim, self.tc.get("rope_theta", 10000.0), rs.get("factor", 1.0),
                                 low, rs.get("high_freq_factor", 4.0), orig,
                                 rs.get("beta_fast", 32), rs.get("beta_slow", 1), rs.get("mscale", 0) or 0,
                                 rs.get("mscale_all_dim", 0) or 0)
        ang = self.pos[:, None] * inv.double()[None, :]
        return ang, scaling

    @staticmethod
    def rotate_half(x, ang, scaling):
        cos = torch.cat([ang.cos()] * 2, -1)[:, None, :] * scaling
        sin = torch.cat([ang.sin()] * 2, -1)[:, None, :] * scaling
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    def rope_deepseek(self, x, ang, scaling):  # HF apply_rotary_pos_emb_interleave
        T, nh, d = x.shape
        x = x.view(T, nh, d // 2, 2).transpose(3, 2).reshape(T, nh, d)
        return self.rotate_half(x, ang, scaling)

    @staticmethod
    def rope_llama4(x, ang, scaling):  # HF Llama 4 apply_rotary_emb (complex pairs)
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        fc = torch.polar(torch.ones_like(ang), ang) * scaling
        return torch.view_as_real(xc * fc[:, None, :]).flatten(2)

    def mask(self, chunk=0):
        pos = self.pos
        m = (pos[None, :] <= pos[:, None]) & (self.seg[None, :] == self.seg[:, None])
        if chunk:
            m = m & (torch.div(pos[None, :], chunk, rounding_mode="floor") == torch.div(pos[:, None], chunk, rounding_mode="floor"))
        return m

    @staticmethod
    def attend(q, k, v, scale, mask):
        nh, nkv = q.shape[1], k.shape[1]
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        s = torch.einsum("thd,shd->hts", q, k) * scale
        s = s.masked_fill(~mask[None], float("-inf"))
        return torch.einsum("hts,shd->thd", s.softmax(-1), v)

    # ------------------------------------------------------------ attention
    def attention(self, x, l, p):
        tc, T = self.tc, self.T
        nh, nkv = tc["num_attention_heads"], tc["num_key_value_heads"]
        D = tc.get("head_dim") or tc["hidden_size"] // nh
        q = self.proj(x, l, "q", p + "self_attn.q_proj").view(T, nh, D)
        k = self.proj(x, l, "k", p + "self_attn.k_proj").view(T, nkv, D)
        v = self.proj(x, l, "v", p + "self_attn.v_proj").view(T, nkv, D)
        chunk = 0
        if self.mt in ("qwen3", "qwen3_moe"):
            q, k = self.rms(q, self.W[p + "self_attn.q_norm.weight"]), self.rms(k, self.W[p + "self_attn.k_norm.weight"])
        if self.mt == "llama4":
            nrl = tc.get("no_rope_layers") or [int((i + 1) % tc.get("no_rope_layer_interval", 4) != 0)
                                                for i in range(tc["num_hidden_layers"])]
            if nrl[l]:
                ang, sc = self.rope_cs(D)
                q, k = self.rope_llama4(q, ang, sc), self.rope_llama4(k, ang, sc)
                if tc.get("use_qk_norm", True):
                    q, k = self.rms(q), self.rms(k)
                chunk = tc.get("attention_chunk_size") or 0
            elif tc.get("attn_temperature_tuning", True):
                s = torch.log(torch.floor((self.pos + 1.0) / tc["floor_scale"]) + 1.0) * tc["attn_scale"] + 1.0
                q = q * s[:, None, None]
        else:
            ang, sc = self.rope_cs(D)
            q, k = self.rotate_half(q, ang, sc), self.rotate_half(k, ang, sc)
        a = self.attend(q, k, v, 1.0 / math.sqrt(D), self.mask(chunk)).reshape(T, nh * D)
        return self.proj(a, l, "o", p + "self_attn.o_proj")

    def mla(self, x, l, p):
        tc, T = self.tc, self.T
        nh, dn, dr, dv, kvr = (tc["num_attention_heads"], tc["qk_nope_head_dim"], tc["qk_rope_head_dim"], tc["v_head_dim"],
                               tc["kv_lora_rank"])
        dq = dn + dr
        if tc.get("q_lora_rank"):
            qa = self.proj(x, l, "qa", p + "self_attn.q_a_proj")
            q = self.proj(self.rms(qa, self.W[p + "self_attn.q_a_layernorm.weight"]), l, "qb", p + "self_attn.q_b_proj")
        else:
            q = self.proj(x, l, "q", p + "self_attn.q_proj")
        q = q.view(T, nh, dq)
        q_pass, q_rot = q[..., :dn], q[..., dn:]
        ckv = self.proj(x, l, "kva", p + "self_attn.kv_a_proj_with_mqa")
        k_pass, k_rot = ckv[:, :kvr], ckv[:, kvr:]
        kv = self.proj(self.rms(k_pass, self.W[p + "self_attn.kv_a_layernorm.weight"]), l, "kvb",
                       p + "self_attn.kv_b_proj").view(T, nh, dn + dv)
        k_pass, value = kv[..., :dn], kv[..., dn:]
        ang, sc = self.rope_cs(dr)
        q_rot = self.rope_deepseek(q_rot, ang, sc)
        k_rot = self.rope_deepseek(k_rot.reshape(T, 1, dr), ang, sc).expand(T, nh, dr)
        query, key = torch.cat([q_pass, q_rot], -1), torch.cat([k_pass, k_rot], -1)
        scale = dq ** -0.5
        rs = tc.get("rope_scaling") or {}
        if rs and rs.get("mscale_all_dim") and rs.get("factor", 1.0) > 1:
            m = 0.1 * rs["mscale_all_dim"] * math.log(rs["factor"]) + 1.0
            scale = scale * m * m
        a = self.attend(query, key, value, scale, self.mask()).reshape(T, nh * dv)
        return self.proj(a, l, "o", p + "self_attn.o_proj")

    # ------------------------------------------------------------ MLPs
    def swiglu_mlp(self, x, l, names, mods, rows=None):
        g = self.proj(x, l, mods[0], names[0], rows)
        u = self.proj(x, l, mods[1], names[1], rows)
        return self.proj(F.silu(g) * u, l, mods[2], names[2], rows)

    def route(self, logits):
        tc, mt, T = self.tc, self.mt, self.T
        E, k = logits.shape[1], tc["num_experts_per_tok"]
        if mt == "deepseek_v3":
            s = logits.sigmoid()
            with torch.no_grad():
                choice = s + self.bias
                ng, tg = tc["n_group"], tc["topk_group"]
                gs = choice.view(T, ng, -1).topk(min(2, E // ng), dim=-1)[0].sum(-1)
                gidx = gs.topk(tg, dim=-1)[1]
                gmask = torch.zeros(T, ng, dtype=torch.double).scatter_(1, gidx, 1)
                smask = gmask.unsqueeze(-1).expand(T, ng, E // ng).reshape(T, E)
                idx = choice.masked_fill(~smask.bool(), 0.0).topk(k, dim=-1)[1]
            w = s.gather(1, idx)
            if tc.get("norm_topk_prob", True):
                w = w / (w.sum(-1, keepdim=True) + 1e-20)
            return idx, w * tc.get("routed_scaling_factor", 1.0)
        if mt == "deepseek_v2":
            sc = logits.softmax(-1)
            if tc.get("topk_method", "greedy") == "group_limited_greedy":
                ng, tg = tc["n_group"], tc["topk_group"]
                gs = sc.view(T, ng, -1).max(-1).values
                gidx = gs.topk(tg, dim=-1)[1]
                gmask = torch.zeros(T, ng, dtype=torch.double).scatter_(1, gidx, 1)
                smask = gmask.unsqueeze(-1).expand(T, ng, E // ng).reshape(T, E)
                w, idx = sc.masked_fill(~smask.bool(), 0.0).topk(k, dim=-1)
            else:
                w, idx = sc.topk(k, dim=-1)
            if k > 1 and tc.get("norm_topk_prob", False):
                return idx, w / (w.sum(-1, keepdim=True) + 1e-20)
            return idx, w * tc.get("routed_scaling_factor", 1.0)
        if mt == "llama4":
            top, idx = logits.topk(k, dim=-1)
            return idx, torch.sigmoid(top)
        w, idx = logits.softmax(-1).topk(k, dim=-1)
        if mt == "mixtral" or tc.get("norm_topk_prob", False):
            w = w / w.sum(-1, keepdim=True)
        return idx, w

    def expert(self, xt, l, blk, e, t):
        if self.mt == "llama4":
            I = self.tc["intermediate_size"]
            gu, dn = self.W[blk + ".experts.gate_up_proj"][e], self.W[blk + ".experts.down_proj"][e]
            g = self.lin(xt, l, f"e{e}.gate", gu[:, :I].T, rows=[t])
            u = self.lin(xt, l, f"e{e}.up", gu[:, I:].T, rows=[t])
            return self.lin(F.silu(g) * u, l, f"e{e}.down", dn.T, rows=[t])
        names = ("w1", "w3", "w2") if self.mt == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        ep = f"{blk}.experts.{e}."
        return self.swiglu_mlp(xt, l, [ep + n for n in names], [f"e{e}.gate", f"e{e}.up", f"e{e}.down"], [t])

    def moe(self, x, l, blk, router):
        T = self.T
        self.bias = self.W.get(blk + ".gate.e_score_correction_bias", torch.zeros(router.shape[0], dtype=torch.double))
        idx, w = self.route(x @ router.T)
        self.routes[str(l)] = idx.tolist()
        rows = []
        for t in range(T):
            acc = torch.zeros(1, x.shape[1], dtype=torch.double)
            for j in range(idx.shape[1]):
                e = int(idx[t, j])
                if self.mt == "llama4":  # the router weight scales the expert INPUT
                    acc = acc + self.expert(x[t:t + 1] * w[t, j], l, blk, e, t)
                else:
                    acc = acc + w[t, j] * self.expert(x[t:t + 1], l, blk, e, t)
            rows.append(acc)
        out = torch.cat(rows, 0)
        for sp in (blk + ".shared_expert.", blk + ".shared_experts."):
            if sp + "gate_proj.weight" in self.W:
                sy = self.swiglu_mlp(x, l, [sp + "gate_proj", sp + "up_proj", sp + "down_proj"], ["sgate", "sup", "sdown"])
                if blk + ".shared_expert_gate.weight" in self.W:
                    sy = torch.sigmoid(x @ self.W[blk + ".shared_expert_gate.weight"].T) * sy
                out = out + sy
        return out

    # ------------------------------------------------------------ model
    def run(self):
        W, tc = self.W, self.tc
        h = W["model.embed_tokens.weight"][self.ids]
        for l in range(tc["num_hidden_layers"]):
            p = f"model.layers.{l}."
            x = self.rms(h, W[p + "input_layernorm.weight"])
            h = h + (self.mla(x, l, p) if self.mt.startswith("deepseek") else self.attention(x, l, p))
            x = self.rms(h, W[p + "post_attention_layernorm.weight"])
            blk = p + {"mixtral": "block_sparse_moe", "llama4": "feed_forward"}.get(self.mt, "mlp")
            router = blk + (".router.weight" if self.mt == "llama4" else ".gate.weight")
            if router in W:
                h = h + self.moe(x, l, blk, W[router])
            else:
                h = h + self.swiglu_mlp(x, l, [blk + ".gate_proj", blk + ".up_proj", blk + ".down_proj"], ["gate", "up", "down"])
        h = self.rms(h, W["model.norm.weight"])
        lm = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
        loss = F.cross_entropy(h @ lm.T, self.labels, ignore_index=-100)
        loss.backward()
        grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)).flatten().tolist() for k, v in self.lora.items()}
        return {"loss": loss.item(), "grads": grads, "routes": self.routes}


if __name__ == "__main__":
    print(json.dumps(Ref(*sys.argv[1:5]).run()))
