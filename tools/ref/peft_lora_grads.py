#!/usr/bin/env python3
# transformers + PEFT autograd reference for graft's LoRA gradients (tests/train/test_peft_grads.cpp).
#
#   peft_lora_grads.py ROOT [--make-hf]
#
# With --make-hf, first writes the transformers-built checkpoints of tools/ref/hf_logits.py into ROOT/<case>.
# Then, for every ROOT/<case>/config.json: loads the model with transformers' own modeling code (fp32, eager),
# wraps it with peft.get_peft_model(LoraConfig(r=4, lora_alpha=8, target_modules=<every attention, dense MLP
# and shared-expert projection>, target_parameters=<the fused routed experts "experts.gate_up_proj" /
# "experts.down_proj", which is how transformers 5 stores every MoE family>)), keeps PEFT's lora_A init,
# draws a non-zero lora_B (so that every gradient is exercised), runs one batch of 2 x 44 tokens, the mean
# token cross-entropy over the labelled positions (labels are next-token aligned; -100 = ignored) and
# loss.backward(), and writes
#   ROOT/<case>/lora_init.safetensors   the adapter, in graft's convention (below)
#   ROOT/<case>/lora_grads.safetensors  dLoss/d(factor), same keys and layout
#   ROOT/<case>/peft.json               {loss, ids [2][44], labels [2][44], scales {key: alpha/r}, versions}
# Keys: "L.MOD.a" [r, in] and "L.MOD.b" [out, r] with MOD in q,k,v,o,qa,qb,kva,kvb (attention), gate,up,down
# (dense MLP), sgate,sup,sdown (shared expert); routed experts "L.eE.gate_up.a" [r, H] / ".b" [2I, r] and
# "L.eE.down.a" [r, I] / ".b" [H, r] (one LoRA on the fused gate_up matrix: gate rows first). The script
# converts PEFT's fused factors (lora_A [E·r, ·], lora_B [·, E·r]) into these per-expert factors and checks
# the conversion against PEFT's own get_delta_weight().
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.layer import LoraLayer, ParamWrapper  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import hf_logits  # noqa: E402

R, ALPHA = 4, 8
ATTN = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "q_a_proj": "qa", "q_b_proj": "qb",
        "kv_a_proj_with_mqa": "kva", "kv_b_proj": "kvb"}
MLP = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def graft_key(name, layer):
    """PEFT module name -> graft key prefix ("3.q", "1.sgate", "2.experts.gate_up")."""
    parts = name.split(".")
    li = int(parts[parts.index("layers") + 1])
    if isinstance(layer, ParamWrapper):
        return f"{li}.experts.{layer.parameter_name.replace('_proj', '')}"
    last = parts[-1]
    if last in ATTN:
        return f"{li}.{ATTN[last]}"
    if last in MLP:
        return f"{li}.{'s' if 'shared_expert' in name else ''}{MLP[last]}"
    raise SystemExit(f"unexpected LoRA module {name}")


def expert_factors(layer, A, B, in_out):
    """PEFT fused factors -> per-expert (a [r, in], b [out, r]) in the (out, in) convention of F.linear.

    PEFT: A = lora_A [E*r, X] viewed [E, r, X]; B = lora_B [Y, E*r] viewed [Y, r, E]; the delta of expert e
    in the parameter's own layout is B_e @ A_e when PEFT swapped in/out (it assumes [E, out, in] unless the
    experts module says is_transposed) and (B_e @ A_e)^T otherwise. `in_out`: the parameter is stored
    [E, in, out] (x @ W, Llama 4) rather than [E, out, in] (F.linear)."""
    E = layer.num_experts
    Ae = A.reshape(E, -1, A.shape[-1])            # [E, r, X]
    Be = B.reshape(B.shape[0], -1, E).permute(2, 0, 1)  # [E, Y, r]
    if layer._did_swap_in_out_features != in_out:  # delta (out, in) = B_e A_e
        return [(Ae[e], Be[e]) for e in range(E)]
    return [(Be[e].T, Ae[e].T) for e in range(E)]   # delta (out, in) = A_e^T B_e^T


def run_case(d, seed):
    model = hf_logits.load(d)
    cfg = model.config
    in_out = cfg.model_type in ("llama4_text", "llama4")
    experts = [n for n, m in model.named_modules() if n.endswith(".experts")]
    params = ["experts.gate_up_proj", "experts.down_proj"] if experts else []
    mods = sorted({n.split(".")[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in {**ATTN, **MLP}})
    lc = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=mods, target_parameters=params or None)
    pm = get_peft_model(model, lc)
    g = torch.Generator().manual_seed(seed)
    init, layers = {}, []
    for name, layer in pm.named_modules():
        if not isinstance(layer, LoraLayer) or "default" not in layer.lora_A:
            continue
        key = graft_key(name.replace(".base_layer", ""), layer)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with torch.no_grad():
            B.copy_(0.2 * torch.randn(B.shape, generator=g))
        layers.append((key, layer, A, B))
    # Batch: 2 sequences of 44 ids, next-token labels, a masked prompt in the first.
    V, T = cfg.vocab_size, 44  # longer than the sliding window (24), Llama 4's chunk (16), rope original lengths
    ids = torch.randint(0, V, (2, T), generator=g)
    labels = torch.full((2, T), -100)
    labels[:, :-1] = ids[:, 1:]
    labels[0, :4] = -100
    pm.train()
    logits = pm(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    loss.backward()
    init, grads, scales = {}, {}, {}
    for key, layer, A, B in layers:
        scale = layer.scaling["default"]
        if isinstance(layer, ParamWrapper):
            with torch.no_grad():
                fa = expert_factors(layer, A.detach(), B.detach(), in_out)
                delta = layer.get_delta_weight("default")  # the parameter's layout
                for e, (a, b) in enumerate(fa):
                    mine = (b @ a) * layer.scaling["default"]
                    ref = delta[e].T if in_out else delta[e]
                    assert torch.allclose(mine, ref, atol=1e-6), f"{d}: fused factor conversion of {key}"
            fg = expert_factors(layer, A.grad, B.grad, in_out)
            li, proj = key.split(".experts.")
            for e in range(layer.num_experts):
                init[f"{li}.e{e}.{proj}.a"], init[f"{li}.e{e}.{proj}.b"] = fa[e]
                scales[f"{li}.e{e}.{proj}"] = scale
                grads[f"{li}.e{e}.{proj}.a"], grads[f"{li}.e{e}.{proj}.b"] = fg[e]
        else:
            init[key + ".a"], init[key + ".b"] = A.detach(), B.detach()
            grads[key + ".a"], grads[key + ".b"] = A.grad, B.grad
            scales[key] = scale
    save_file({k: v.contiguous().float() for k, v in init.items()}, os.path.join(d, "lora_init.safetensors"))
    save_file({k: v.contiguous().float() for k, v in grads.items()}, os.path.join(d, "lora_grads.safetensors"))
    json.dump({"loss": loss.item(), "ids": ids.tolist(), "labels": labels.tolist(), "scales": scales,
               "target_modules": mods, "target_parameters": params, "transformers": transformers.__version__,
               "peft": peft.__version__, "torch": torch.__version__}, open(os.path.join(d, "peft.json"), "w"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--make-hf", action="store_true")
    ap.add_argument("--cases", default="")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    only = set(filter(None, a.cases.split(",")))
    if a.make_hf:
        hf_logits.make_hf(a.root, only)
    for n in sorted(os.listdir(a.root)):
        d = os.path.join(a.root, n)
        if os.path.exists(os.path.join(d, "config.json")) and (not only or n in only):
            run_case(d, a.seed)
            print("peft grads", d, file=sys.stderr)


if __name__ == "__main__":
    main()
