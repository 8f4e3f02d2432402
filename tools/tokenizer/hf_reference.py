#!/usr/bin/env python3
"""Reference encodings from Hugging Face's Rust tokenizers (the PyPI `tokenizers` package in tools/.venv).

Usage: tools/.venv/bin/python hf_reference.py CORPUS.json OUT.json NSPECIAL NAME=PATH/tokenizer.json [...]
For each tokenizer: ids of every corpus string with add_special_tokens=False, decode of those ids (with and
without skip_special_tokens), and ids with add_special_tokens=True for the first NSPECIAL strings.
"""
import json
import sys

import tokenizers
from tokenizers import Tokenizer


def main():
    corpus_path, out_path, nspecial, *specs = sys.argv[1:]
    corpus = json.load(open(corpus_path, encoding="utf-8"))
    nspecial = int(nspecial)
    out = {"_version": tokenizers.__version__}
    for spec in specs:
        name, path = spec.split("=", 1)
        tok = Tokenizer.from_file(path)
        r = {"ids": [], "ids_special": [], "decoded": [], "decoded_skip": []}
        encs = tok.encode_batch(corpus, add_special_tokens=False)
        for i, enc in enumerate(encs):
            ids = enc.ids
            r["ids"].append(ids)
            r["decoded"].append(tok.decode(ids, skip_special_tokens=False))
            if i < nspecial:
                ids2 = tok.encode(corpus[i], add_special_tokens=True).ids
                r["ids_special"].append(ids2)
                r["decoded_skip"].append(tok.decode(ids2, skip_special_tokens=True))
        out[name] = r
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
