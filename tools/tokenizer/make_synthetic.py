#!/usr/bin/env python3
"""Small hand-built tokenizer.json documents exercising components the real tokenizers do not use
(NFKC/NFD/Lowercase/Strip/StripAccents/Replace normalizers, every Split behavior and invert, ByteLevel with
regex and prefix space, Digits, Metaspace, Whitespace/WhitespaceSplit/Punctuation, lstrip/rstrip/single_word/
normalized added tokens, unk fusing, Roberta/Template post-processors, Metaspace/Strip/Replace decoders).
The exactness test encodes the corpus with them in graft and in HF tokenizers and compares.
Usage: python3 tools/tokenizer/make_synthetic.py  (writes tests/core/tokenizer/data/synthetic/*.json)."""
import collections
import json
import os

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "core", "tokenizer", "data", "synthetic")
TEXT = ("the quick brown fox jumps over the lazy dog. The Dog's toy isn't there; they'll play 123 times, 4567 more! "
        "def main(): return self.value + other_value  # hello world\n" * 3 + "naïve café déjà vu über straße " * 2)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train(words, nmerges, vocab):
    """Tiny BPE trainer: words are lists of symbols; returns merges as [a, b]."""
    words = [list(w) for w in words]
    merges = []
    for _ in range(nmerges):
        cnt = collections.Counter()
        for w in words:
            for a, b in zip(w, w[1:]):
                cnt[(a, b)] += 1
        if not cnt:
            break
        (a, b), c = max(cnt.items(), key=lambda kv: (kv[1], kv[0]))
        if c < 2:
            break
        merges.append([a, b])
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    return merges


def byte_level_model():
    b2u = bytes_to_unicode()
    vocab = {}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    import re
    words = ["".join(b2u[x] for x in w.encode()) for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", TEXT.lower())]
    merges = train(words, 300, vocab)
    return vocab, merges


def sp_model():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for ch in sorted(set(TEXT.replace(" ", "\u2581"))):
        if ch not in vocab:
            vocab[ch] = len(vocab)
    vocab.setdefault("\u2581", len(vocab))
    words = ["\u2581" + w for w in TEXT.split()]
    merges = train(words, 250, vocab)
    return vocab, merges


def added(id_, content, special=True, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def doc(model, normalizer=None, pre=None, post=None, decoder=None, added_tokens=()):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": list(added_tokens),
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post, "decoder": decoder, "model": model}


def main():
    os.makedirs(OUT, exist_ok=True)
    bv, bm = byte_level_model()
    n = len(bv)
    bl = lambda **kw: {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                       "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": bv,
                       "merges": [" ".join(m) for m in bm], **kw}
    docs = {}
    docs["bytelevel_gpt2"] = doc(
        bl(), normalizer={"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
        pre={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        post={"type": "RobertaProcessing", "sep": ["</s>", n + 1], "cls": ["<s>", n], "trim_offsets": True, "add_prefix_space": True},
        decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        added_tokens=[added(n, "<s>"), added(n + 1, "</s>"), added(n + 2, "<mask>", lstrip=True),
                      added(n + 3, "<R>", rstrip=True), added(n + 4, "word", special=False, single_word=True),
                      added(n + 5, "<norm>", special=False, normalized=True), added(n + 6, "<|im_start|>", lstrip=True, rstrip=True)])
    docs["split_behaviors"] = doc(
        bl(ignore_merges=True),
        normalizer={"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Strip", "strip_left": True, "strip_right": True},
                                                          {"type": "Replace", "pattern": {"Regex": "\\s{2,}"}, "content": " "}]},
        pre={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "Contiguous", "invert": True},
            {"type": "Punctuation", "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        decoder={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False})
    docs["split_removed"] = doc(
        bl(), normalizer={"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Prepend", "prepend": ">"}]},
        pre={"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "[,;.!?]"}, "behavior": "Removed", "invert": False},
            {"type": "Digits", "individual_digits": True},
            {"type": "Split", "pattern": {"Regex": "(?=[A-Z])"}, "behavior": "Isolated", "invert": False},
            {"type": "WhitespaceSplit"},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": False}]},
        decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": False},
        added_tokens=[added(n, "<pad>"), added(n + 1, "Ab", special=False, normalized=True)])
    sv, sm = sp_model()
    sp = lambda **kw: {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                       "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": sv, "merges": sm, **kw}
    # NFC, not NFKC: graft tracks "starts at original offset 0" per split, not full alignments, so an expanding
    # normalizer + a split inside the first character + prepend_scheme "first" is the one known divergence.
    docs["metaspace_first"] = doc(
        sp(), normalizer={"type": "NFC"},
        pre={"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False},
                                                   {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}]},
        post={"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                                        {"SpecialToken": {"id": "</s>", "type_id": 0}}],
              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
              "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
        decoder={"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Strip", "content": "!", "start": 2, "stop": 0}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}]},
        added_tokens=[added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")])
    docs["metaspace_always_nosplit"] = doc(
        sp(byte_fallback=False), normalizer=None,
        pre={"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": False},
        decoder={"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                  {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        added_tokens=[added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")])
    docs["whitespace_unk"] = doc(
        sp(byte_fallback=False, fuse_unk=False), normalizer={"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        pre={"type": "Whitespace"},
        decoder=None, added_tokens=[added(0, "<unk>"), added(1, "<s>", single_word=True)])
    total = 0
    for name, d in docs.items():
        p = os.path.join(OUT, name + ".json")
        with open(p, "w", encoding="utf-8") as f:
            json.dump(d, f, ensure_ascii=False, separators=(",", ":"))
        total += os.path.getsize(p)
    print(f"{len(docs)} tokenizers, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
