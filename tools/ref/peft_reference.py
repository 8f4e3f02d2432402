"""PEFT (+ transformers) side of graft's adapter reference checks (tests/adapters/reference).

Usage: peft_reference.py JOB.json   (run with tools/.venv/bin/python; everything stays offline)

JOB.json:
  {"ids": [token ids],
   "load":   [{"name", "base", "adapter", "out"}, ...],   # adapters graft wrote
   "create": [{"name", "base", "adapter", "merged", "out", "seed", "config": {LoraConfig kwargs}}, ...]}

For "load": loads the base with transformers (fp32, its own modeling code), then
`PeftModel.from_pretrained(base, adapter)` and records every warning it emits, plus the missing /
unexpected adapter keys of loading the same file a second time through `load_adapter` (from_pretrained
drops unexpected keys silently). Writes OUT (safetensors): `logits` [T, V] with the adapter and
`base_logits` [T, V] without it.
For "create": `get_peft_model(base, LoraConfig(**config))`, every LoRA factor drawn N(0, 0.1^2) from
`seed` (B non-zero), `save_pretrained(adapter)`, logits into OUT as above, then `merge_and_unload()` and
`save_pretrained(MERGED)` (fp32, transformers' checkpoint names, as the base's).
Prints one JSON line: {name: {"warnings": [...], "missing": [...], "unexpected": [...],
"peft_config": {...}}}; exits non-zero on any exception.
"""
import json
import os
import sys
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

torch.set_num_threads(1)
hf_logging.set_verbosity_error()


def base_model(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")
    m.eval()
    return m


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=torch.tensor([ids])).logits[0].float().contiguous()


def jsonable_config(cfg):
    d = cfg.to_dict()
    return json.loads(json.dumps(d, default=lambda x: sorted(x) if isinstance(x, set) else str(x)))


def relevant(ws):
    # FutureWarnings/DeprecationWarnings of transformers internals are not about the adapter.
    return [str(w.message) for w in ws if not issubclass(w.category, (FutureWarning, DeprecationWarning))]


def load_case(case, ids):
    base = base_model(case["base"])
    base_lg = logits(base, ids)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, case["adapter"])
    pm.eval()
    lg = logits(pm, ids)
    # The same file once more through load_adapter, which returns the unexpected keys too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pm.load_adapter(case["adapter"], adapter_name="probe")
    save_file({"logits": lg, "base_logits": base_lg}, case["out"])
    return {"warnings": relevant(ws), "missing": sorted(res.missing_keys), "unexpected": sorted(res.unexpected_keys),
            "peft_config": jsonable_config(pm.peft_config["default"])}


def create_case(case, ids):
    base = base_model(case["base"])
    base_lg = logits(base, ids)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        pm = get_peft_model(base, LoraConfig(**case["config"]))
    g = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for n, p in sorted(pm.named_parameters()):
            if ".lora_A." in n or ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pm.eval()
    pm.save_pretrained(case["adapter"])
    lg = logits(pm, ids)
    save_file({"logits": lg, "base_logits": base_lg}, case["out"])
    cfg = jsonable_config(pm.peft_config["default"])
    merged = pm.merge_and_unload()
    merged.save_pretrained(case["merged"])
    return {"warnings": relevant(ws), "missing": [], "unexpected": [], "peft_config": cfg}


def main():
    job = json.load(open(sys.argv[1]))
    ids = job["ids"]
    report = {}
    for case in job.get("load", []):
        report[case["name"]] = load_case(case, ids)
    for case in job.get("create", []):
        report[case["name"]] = create_case(case, ids)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
