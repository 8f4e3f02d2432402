#!/usr/bin/env python3
# Generates Hugging Face transformers reference fixtures with REAL top-k routing for the MoE families
# graft's CPU backend must match: qwen3_moe, mixtral, deepseek_v3, llama4 (text), plus qwen2_moe and
# deepseek_v2. Each fixture is a tiny random model saved with save_pretrained (config.json +
# model.safetensors) and expected.json {input_ids, logits [T, V] float32, transformers version}.
#
# Run on the GPU machine (it has torch + transformers; no network needed):
#   python3 tools/hf_fixtures/make_fixtures.py --out tests/core/model/fixtures
# Router weights are scaled up so that top-k choices are decisive (no near-ties), and DeepSeek-V3's
# e_score_correction_bias is random so that the bias path is exercised. Total size stays < 2 MB.
import argparse, json, os, sys

import torch
import transformers
from transformers import AutoModelForCausalLM

def tiny(family):
    common = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, torch_dtype="float32")
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig as C
        return C(**common, head_dim=8, intermediate_size=64, moe_intermediate_size=16, num_experts=8,
                 num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
    if family == "qwen2_moe":
        from transformers import Qwen2MoeConfig as C
        return C(**common, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32,
                 num_experts=8, num_experts_per_tok=2, norm_topk_prob=False)
    if family == "mixtral":
        from transformers import MixtralConfig as C
        return C(**common, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2)
    if family in ("deepseek_v3", "deepseek_v2"):
        from transformers import DeepseekV3Config, DeepseekV2Config
        C = DeepseekV3Config if family == "deepseek_v3" else DeepseekV2Config
        kw = dict(common, num_key_value_heads=4)
        extra = dict(intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
                     n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=8,
                     qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_group=2, topk_group=1,
                     routed_scaling_factor=2.5, norm_topk_prob=True)
        if family == "deepseek_v2":
            extra.update(topk_method="group_limited_greedy", q_lora_rank=None)
        return C(**kw, **extra)
    if family == "llama4":
        from transformers import Llama4TextConfig as C
        return C(**common, head_dim=8, intermediate_size=16, intermediate_size_mlp=64, num_local_experts=4,
                 num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=16,
                 no_rope_layers=[1, 0], use_qk_norm=True, attn_temperature_tuning=True, floor_scale=8,
                 attn_scale=0.1, rope_theta=500000.0)
    raise SystemExit("unknown family " + family)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--families", default="qwen3_moe,qwen2_moe,mixtral,deepseek_v3,deepseek_v2,llama4")
    a = ap.parse_args()
    for fam in a.families.split(","):
        torch.manual_seed(1234)
        cfg = tiny(fam)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("mlp.gate.weight") or n.endswith("block_sparse_moe.gate.weight") or n.endswith("feed_forward.router.weight"):
                    p.normal_(0, 1.0)   # decisive routing
                elif "norm" not in n:
                    p.normal_(0, 0.1)
            for n, b in model.named_buffers():
                if n.endswith("e_score_correction_bias"):
                    b.normal_(0, 0.3)
        d = os.path.join(a.out, fam)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        ids = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        json.dump({"input_ids": ids[0].tolist(), "logits": [[float(x) for x in r] for r in logits.tolist()],
                   "transformers": transformers.__version__, "torch": torch.__version__},
                  open(os.path.join(d, "expected.json"), "w"))
        print(fam, "->", d, file=sys.stderr)

if __name__ == "__main__":
    main()
