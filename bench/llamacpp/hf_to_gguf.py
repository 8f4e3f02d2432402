#!/usr/bin/env python3
# Converts the two benchmark models (a Llama like stories260K, and graft's Qwen3-MoE presets) from
# Hugging Face layout to GGUF f32 for llama.cpp, with llama.cpp's own gguf-py writer (numpy only; no
# torch/transformers needed). Usage:
#   PYTHONPATH=bench/llamacpp/work/llama.cpp/gguf-py tools/.venv/bin/python bench/llamacpp/hf_to_gguf.py HF_DIR OUT.gguf
import json, os, sys
import numpy as np
import gguf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "py"))
import safetensors_io  # noqa: E402

def load_safetensors(path):  # every tensor as float32 (BF16 widened exactly)
    return {k: a.astype(np.float32) for k, a in safetensors_io.load(path).items()}

def permute(w, n_head):  # HF rotate-half layout -> llama.cpp (interleaved) layout, as convert_hf_to_gguf does
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def main(src, dst):
    cfg = json.load(open(f"{src}/config.json"))
    tok = json.load(open(f"{src}/tokenizer.json"))
    t = load_safetensors(f"{src}/model.safetensors")
    mt = cfg["model_type"]
    arch = {"llama": "llama", "qwen3_moe": "qwen3moe"}[mt]
    w = gguf.GGUFWriter(dst, arch)
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim", H // nh)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_rope_dimension_count(hd)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch == "qwen3moe":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    # tokenizer
    vocab = tok["model"]["vocab"]
    added = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    n = max(list(vocab.values()) + list(added.values())) + 1
    n = max(n, cfg["vocab_size"])
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for s, i in vocab.items():
        tokens[i], types[i] = s, gguf.TokenType.NORMAL
    for s, i in added.items():
        tokens[i], types[i] = s, gguf.TokenType.CONTROL
    if tok["model"].get("byte_fallback"):
        w.add_tokenizer_model("llama")
        for i, s in enumerate(tokens):
            if s.startswith("<0x") and s.endswith(">") and len(s) == 6:
                types[i] = gguf.TokenType.BYTE
        w.add_token_scores([-float(i) for i in range(n)])
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        merges = tok["model"]["merges"]
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if cfg.get("bos_token_id") is not None: w.add_bos_token_id(cfg["bos_token_id"])
    if cfg.get("eos_token_id") is not None: w.add_eos_token_id(cfg["eos_token_id"])
    emb = t["model.embed_tokens.weight"]
    if emb.shape[0] < n:
        emb = np.concatenate([emb, np.zeros((n - emb.shape[0], H), np.float32)])
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    if "lm_head.weight" in t:
        w.add_tensor("output.weight", t["lm_head.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        q, k = t[p + "self_attn.q_proj.weight"], t[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = permute(q, nh), permute(k, nkv)
        w.add_tensor(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", q)
        w.add_tensor(f"blk.{i}.attn_k.weight", k)
        w.add_tensor(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        if arch == "qwen3moe":
            w.add_tensor(f"blk.{i}.attn_q_norm.weight", t[p + "self_attn.q_norm.weight"])
            w.add_tensor(f"blk.{i}.attn_k_norm.weight", t[p + "self_attn.k_norm.weight"])
            E = cfg["num_experts"]
            w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", t[p + "mlp.gate.weight"])
            for proj, name in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
                w.add_tensor(f"blk.{i}.{name}.weight", np.stack([t[f"{p}mlp.experts.{e}.{proj}.weight"] for e in range(E)]))
        else:
            w.add_tensor(f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"])
            w.add_tensor(f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
