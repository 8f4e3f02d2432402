#!/usr/bin/python3
# torch.optim.AdamW and clip_grad_norm_ reference: reads JSON {p, grads: [[...] per step], lr: [...],
# betas, eps, wd, max_norm} from stdin, prints the parameter after each step and the pre-clip norms.
import json, sys
import torch
d = json.load(sys.stdin)
p = torch.nn.Parameter(torch.tensor(d["p"], dtype=torch.float32))
opt = torch.optim.AdamW([p], lr=d["lr"][0], betas=tuple(d["betas"]), eps=d["eps"], weight_decay=d["wd"], foreach=False)
out, norms = [], []
for g, lr in zip(d["grads"], d["lr"]):
    p.grad = torch.tensor(g, dtype=torch.float32)
    norms.append(float(torch.nn.utils.clip_grad_norm_([p], d["max_norm"])))
    for grp in opt.param_groups:
        grp["lr"] = lr
    opt.step()
    out.append(p.detach().tolist())
print(json.dumps({"params": out, "norms": norms}))
