#!/usr/bin/env python3
"""Deterministic ~1 MiB mixed-text benchmark input: a JSON array of documents whose UTF-8 sizes sum to 1 MiB.
Mix: GSM8K questions/answers (English, numbers), MT-bench GPT-4 answers (prose, code, markdown), LLaMA-Factory
demo sets (instructions, tool-call JSON), FastChat conversations, and the tokenizer exactness corpus
(multilingual, emoji, code, whitespace runs). Usage: make_bench_text.py OUT.json [SHARED_ASSETS_DIR]"""
import json
import os
import random
import sys

TARGET = 1 << 20


def main():
    out = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    assets = sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "..", "..", "..", "shared", "assets")
    rng = random.Random(20261124)
    pools = {}
    corpus = json.load(open(os.path.join(here, "..", "..", "tests", "core", "tokenizer", "data", "corpus.json"), encoding="utf-8"))
    pools["corpus"] = [s for s in corpus if s]
    ds = os.path.join(assets, "datasets")
    if os.path.isdir(ds):
        gsm = [json.loads(l) for l in open(os.path.join(ds, "gsm8k", "test.jsonl"), encoding="utf-8")]
        pools["gsm8k"] = [g["question"] + "\n" + g["answer"] for g in gsm]
        mt = [json.loads(l) for l in open(os.path.join(ds, "fastchat", "mt_bench_reference_answer_gpt-4.jsonl"), encoding="utf-8")]
        pools["mtbench"] = ["\n\n".join(c["turns"]) for m in mt for c in m["choices"]]
        conv = json.load(open(os.path.join(ds, "fastchat", "dummy_conversation.json"), encoding="utf-8"))
        pools["fastchat"] = ["\n".join(t["value"] for t in c["conversations"]) for c in conv]
        lf = []
        for name in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "identity.json"):
            p = os.path.join(ds, "llamafactory", name)
            if os.path.exists(p):
                for r in json.load(open(p, encoding="utf-8")):
                    lf.append(json.dumps(r, ensure_ascii=False) if "toolcall" in name else "\n".join(str(v) for v in r.values() if isinstance(v, str)))
        pools["llamafactory"] = lf
    weights = {"gsm8k": 0.3, "mtbench": 0.2, "fastchat": 0.1, "llamafactory": 0.2, "corpus": 0.2}
    names = [n for n in weights if n in pools and pools[n]]
    w = [weights[n] for n in names]
    docs, size = [], 0
    while size < TARGET:
        n = rng.choices(names, w)[0]
        if n == "corpus":
            d = "".join(rng.choice(pools[n]) + rng.choice([" ", "\n", ""]) for _ in range(rng.randint(4, 20)))
        else:
            d = rng.choice(pools[n])
        b = d.encode("utf-8")
        if size + len(b) > TARGET:
            b = b[: TARGET - size]
            d = b.decode("utf-8", errors="ignore")
            b = d.encode("utf-8")
        docs.append(d)
        size += len(b)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(docs, f, ensure_ascii=False)
    print(f"{out}: {len(docs)} documents, {size} bytes ({', '.join(names)})")


if __name__ == "__main__":
    main()
