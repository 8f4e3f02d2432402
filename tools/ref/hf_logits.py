#!/usr/bin/env python3
# Hugging Face transformers references for graft's model code (tests/core/model/test_hf_reference.cpp).
#
#   hf_logits.py --make-hf OUT        writes one tiny random-weight checkpoint per case, built and saved by
#                                     transformers itself (save_pretrained), into OUT/<case>
#   hf_logits.py --ref DIR [DIR ...]  (or --ref-under ROOT: every ROOT/*/config.json) loads each model directory with transformers' own modeling code (no
#                                     remote code, fp32, eager attention and experts) and writes
#                                     DIR/reference.json {input_ids [T], greedy [N], versions} and
#                                     DIR/reference_logits.f32 (raw little-endian float32 [T, V])
#
# Both can be given in one run (torch is imported once). The prompt is --prompt-len ids drawn uniformly
# from the vocabulary with a fixed seed; greedy is transformers' generate(do_sample=False) continuation
# of --new-tokens tokens with EOS disabled (so it always runs to the end).
#
# Cases cover every family graft supports and the paths that distinguish them: real top-k routing
# (router weights scaled up so that choices are decisive, no near-ties), DeepSeek-V2 group-limited
# softmax and DeepSeek-V3 noaux_tc sigmoid routing with a random correction bias, MLA with and without
# q_lora_rank, Llama 4 chunked attention, NoPE layers, L2 qk-norm and attention temperature tuning,
# q/k/v/o and MLP biases, sliding windows, and the RoPE scaling variants (linear, dynamic, llama3, yarn
# with DeepSeek's mscale) each on a family whose config accepts it.
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


def tiny_configs():
    """case name -> transformers config object (vocab 160, hidden 32, 2-3 layers)."""
    import transformers as tf
    common = dict(vocab_size=160, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    c = {}
    c["llama_llama3"] = tf.LlamaConfig(**common, intermediate_size=64, attention_bias=True, mlp_bias=True,
                                       rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                            low_freq_factor=1.0, high_freq_factor=4.0,
                                                            original_max_position_embeddings=32))
    c["llama_dynamic"] = tf.LlamaConfig(**dict(common, max_position_embeddings=40, tie_word_embeddings=True),
                                        intermediate_size=64,
                                        rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0))
    yarn_len = dict(common, max_position_embeddings=128)  # = factor x original_max_position_embeddings
    c["qwen2_yarn"] = tf.Qwen2Config(**yarn_len, intermediate_size=64,
                                     rope_parameters=dict(rope_type="yarn", rope_theta=1000000.0, factor=4.0,
                                                          original_max_position_embeddings=32))
    c["qwen3_linear"] = tf.Qwen3Config(**common, head_dim=16, intermediate_size=64,
                                       rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))
    c["qwen2_moe"] = tf.Qwen2MoeConfig(**common, intermediate_size=64, moe_intermediate_size=16,
                                       shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                       norm_topk_prob=False)
    c["qwen3_moe"] = tf.Qwen3MoeConfig(**dict(common, num_hidden_layers=3), head_dim=8, intermediate_size=64,
                                       moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                                       norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1])
    c["mixtral_window"] = tf.MixtralConfig(**common, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                                           sliding_window=24)
    mla = dict(intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
               n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=8, qk_nope_head_dim=8,
               qk_rope_head_dim=4, v_head_dim=8, n_group=4, topk_group=2)
    c["deepseek_v2_yarn"] = tf.DeepseekV2Config(
        **dict(yarn_len, num_key_value_heads=4, num_hidden_layers=3), **mla, q_lora_rank=None,
        topk_method="group_limited_greedy", routed_scaling_factor=16.0, norm_topk_prob=False,  # as DeepSeek-V2:
        # transformers' DeepseekV2TopkRouter ignores norm_topk_prob=True (docs/testing.md)
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                             mscale=0.707, mscale_all_dim=0.707, beta_fast=32, beta_slow=1))
    c["deepseek_v3_yarn"] = tf.DeepseekV3Config(
        **dict(yarn_len, num_key_value_heads=4, num_hidden_layers=3), **mla, q_lora_rank=16, routed_scaling_factor=2.5, norm_topk_prob=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
                             mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1))
    c["llama4"] = tf.Llama4TextConfig(**dict(common, num_hidden_layers=4), head_dim=8, intermediate_size=16,
                                      intermediate_size_mlp=64, num_local_experts=4, num_experts_per_tok=1,
                                      interleave_moe_layer_step=2, attention_chunk_size=16,
                                      no_rope_layers=[1, 1, 1, 0], use_qk_norm=True, attn_temperature_tuning=True,
                                      floor_scale=8, attn_scale=0.1,
                                      rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                                           low_freq_factor=1.0, high_freq_factor=4.0,
                                                           original_max_position_embeddings=32))
    return c


def randomize(model, seed):
    """Weights N(0, 0.1), norms 1 + N(0, 0.1), routers N(0, 1) (decisive top-k), correction bias N(0, 0.3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if n.endswith(("mlp.gate.weight", "block_sparse_moe.gate.weight", "feed_forward.router.weight")):
                p.copy_(r)
            elif "norm" in n:
                p.copy_(1.0 + 0.1 * r)
            elif "e_score_correction_bias" in n:
                p.copy_(0.3 * r)
            else:
                p.copy_(0.1 * r)
        for n, b in model.named_buffers():
            if n.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))


def make_hf(out, only):
    for i, (case, cfg) in enumerate(tiny_configs().items()):
        if only and case not in only:
            continue
        torch.manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        randomize(model, 1000 + i)
        model.save_pretrained(os.path.join(out, case))


def load(d):
    cfg = AutoConfig.from_pretrained(d)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    # Llama 4 directories written as model_type "llama4" hold only the text model (Llama4ForCausalLM).
    cls = AutoModelForCausalLM
    if text is not cfg and type(text).__name__ == "Llama4TextConfig":
        cls = transformers.Llama4ForCausalLM
        cfg = text
    model, info = cls.from_pretrained(d, config=cfg, dtype=torch.float32, attn_implementation="eager",
                                      experts_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit(f"{d}: transformers did not load the checkpoint cleanly: {bad}")
    return model.eval()


def reference(d, prompt_len, new_tokens, seed):
    model = load(d)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model(ids).logits[0].float().contiguous()
        # An explicit all-ones attention mask: otherwise generate() treats prompt ids equal to pad_token_id
        # as padding.
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                             use_cache=True)
    greedy = gen[0, prompt_len:].tolist()
    assert len(greedy) == new_tokens, f"{d}: generate returned {len(greedy)} tokens"
    logits.numpy().astype("<f4").tofile(os.path.join(d, "reference_logits.f32"))
    json.dump({"input_ids": ids[0].tolist(), "greedy": greedy, "vocab_size": V,
               "model_class": type(model).__name__, "transformers": transformers.__version__,
               "torch": torch.__version__}, open(os.path.join(d, "reference.json"), "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-hf", metavar="OUT")
    ap.add_argument("--cases", default="", help="comma-separated subset of the --make-hf cases")
    ap.add_argument("--list", action="store_true", help="print the --make-hf case names")
    ap.add_argument("--ref", nargs="*", default=[], metavar="DIR")
    ap.add_argument("--ref-under", metavar="ROOT", help="--ref every subdirectory of ROOT that holds config.json")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if a.list:
        print("\n".join(tiny_configs().keys()))
    if a.make_hf:
        make_hf(a.make_hf, set(filter(None, a.cases.split(","))))
    dirs = list(a.ref)
    if a.ref_under:
        dirs += sorted(os.path.join(a.ref_under, n) for n in os.listdir(a.ref_under)
                       if os.path.exists(os.path.join(a.ref_under, n, "config.json")))
    for d in dirs:
        reference(d, a.prompt_len, a.new_tokens, a.seed)
        print("reference", d, file=sys.stderr)


if __name__ == "__main__":
    main()
