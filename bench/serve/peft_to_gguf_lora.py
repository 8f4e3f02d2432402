#!/usr/bin/env python3
# Converts a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors, per-module keys as
# graft's adapters::save_peft writes them) into a llama.cpp LoRA GGUF, with llama.cpp's own gguf-py
# writer (numpy only). Names, shapes and metadata follow llama.cpp's convert_lora_to_gguf.py and the
# loader in src/llama-adapter.cpp:
#   general.type = "adapter", general.architecture = the base's GGUF arch, adapter.type = "lora",
#   adapter.lora.alpha = lora_alpha (llama.cpp scales by alpha / rank, as PEFT does without rslora)
#   blk.{l}.attn_q.weight.lora_a [r, in] (numpy shape; ggml ne = [in, r]), .lora_b [out, r]
#   attn_k / attn_v / attn_output likewise; dense MLP ffn_gate / ffn_up / ffn_down
#   experts: blk.{l}.ffn_{gate,up,down}_exps.weight.lora_a [E, r, in], .lora_b [E, out, r] (stacked
#   over all E experts, as convert_lora_to_gguf.py stacks them; experts the adapter does not target
#   get zero factors, which leaves the product unchanged but still costs llama.cpp the matmuls).
# Q/K rows are permuted for the llama architecture exactly as bench/llamacpp/hf_to_gguf.py permutes the
# base weights (llama.cpp's interleaved RoPE layout); Qwen3-MoE needs no permutation.
# --attention-only drops expert and MLP factors. rank_pattern / alpha_pattern / rslora / fused
# experts (target_parameters) are rejected: llama.cpp has one alpha per file and no fused-expert LoRA.
# Usage:
#   PYTHONPATH=bench/llamacpp/work/llama.cpp/gguf-py tools/.venv/bin/python bench/serve/peft_to_gguf_lora.py \
#       BASE_HF_DIR ADAPTER_DIR OUT.gguf [--attention-only]
import json, os, re, struct, sys
import numpy as np
import gguf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "py"))
import safetensors_io  # noqa: E402



def load_safetensors(path):  # every tensor as float32
    return {k: v.astype(np.float32, copy=False) for k, v in safetensors_io.load(path).items()}


def permute(w, n_head):  # same as bench/llamacpp/hf_to_gguf.py (rows of the output dimension)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
MLP = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
EXPERT = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps",
          "w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}
KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def main(base_dir, adapter_dir, dst, attention_only=False):
    cfg = json.load(open(os.path.join(base_dir, "config.json")))
    acfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    for k in ("rank_pattern", "alpha_pattern"):
        if acfg.get(k):
            sys.exit(f"{adapter_dir}: {k} is not representable in a llama.cpp LoRA GGUF (one alpha per file)")
    if acfg.get("use_rslora"):
        sys.exit(f"{adapter_dir}: use_rslora is not supported by llama.cpp (it scales by alpha / r)")
    if acfg.get("target_parameters"):
        sys.exit(f"{adapter_dir}: fused-expert LoRA (target_parameters) is not converted")
    arch = {"llama": "llama", "qwen3_moe": "qwen3moe", "qwen3": "qwen3", "qwen2": "qwen2"}[cfg["model_type"]]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    E = cfg.get("num_experts", cfg.get("num_local_experts", 0))
    t = load_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    dense, experts = {}, {}  # (layer, gguf name) -> {"A": a, "B": b}; experts: (layer, name) -> {e: {...}}
    for k, v in t.items():
        m = KEY.match(k)
        if not m:
            sys.exit(f"{adapter_dir}: unexpected tensor {k}")
        layer, path, half = int(m.group(1)), m.group(2), m.group(3)
        leaf = path.split(".")[-1]
        em = re.match(r"^(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)$", path)
        if em:
            if attention_only:
                continue
            experts.setdefault((layer, EXPERT[em.group(2)]), {}).setdefault(int(em.group(1)), {})[half] = v
        elif leaf in ATTN:
            dense.setdefault((layer, ATTN[leaf]), {})[half] = v
        elif leaf in MLP:
            if attention_only:
                continue
            dense.setdefault((layer, MLP[leaf]), {})[half] = v
        else:
            sys.exit(f"{adapter_dir}: module {path} has no llama.cpp LoRA counterpart")
    w = gguf.GGUFWriter(dst, arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(acfg["lora_alpha"]))
    n = 0
    for (layer, name), ab in sorted(dense.items()):
        a, b = ab["A"], ab["B"]
        if arch == "llama" and name in ("attn_q", "attn_k"):
            b = permute(b, nh if name == "attn_q" else nkv)
        w.add_tensor(f"blk.{layer}.{name}.weight.lora_a", np.ascontiguousarray(a, np.float32))
        w.add_tensor(f"blk.{layer}.{name}.weight.lora_b", np.ascontiguousarray(b, np.float32))
        n += 1
    for (layer, name), per in sorted(experts.items()):
        r = next(iter(per.values()))["A"].shape[0]
        ain = next(iter(per.values()))["A"].shape[1]
        bout = next(iter(per.values()))["B"].shape[0]
        A = np.zeros((E, r, ain), np.float32)
        B = np.zeros((E, bout, r), np.float32)
        for e, ab in per.items():
            A[e], B[e] = ab["A"], ab["B"]
        w.add_tensor(f"blk.{layer}.{name}.weight.lora_a", A)
        w.add_tensor(f"blk.{layer}.{name}.weight.lora_b", B)
        n += 1
    if n == 0:
        sys.exit(f"{adapter_dir}: nothing to convert (attention-only and the adapter targets no attention module)")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        sys.exit(__doc__ if __doc__ else "usage: peft_to_gguf_lora.py BASE_HF_DIR ADAPTER_DIR OUT.gguf [--attention-only]")
    main(*args, attention_only="--attention-only" in sys.argv[1:])
