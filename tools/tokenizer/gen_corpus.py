#!/usr/bin/env python3
"""Deterministic tokenizer exactness corpus (seeded). Writes tests/core/tokenizer/data/corpus.json.

Usage: python3 tools/tokenizer/gen_corpus.py [OUT] — stdlib only; the same seed always gives the same file.
Categories: multilingual (CJK, Arabic, Hindi, Thai, Cyrillic, Greek, Hebrew, Korean, accents in NFC and NFD),
emoji (ZWJ sequences, flags, skin tones, keycaps), code (Python/C++/JSON), whitespace runs (spaces, tabs, \\n,
\\r\\n, mixed, NBSP/ideographic space), numbers (long digit runs, decimals, non-ASCII digits), special-token
text embedded in text, long repeats, the empty string, and odd-but-valid Unicode (combining marks, variation
selectors, ZWJ/ZWNJ/BOM, private use, noncharacters, astral planes, U+FFFD, control characters).
"""
import json
import random
import sys
import unicodedata

SEED = 20261124
rng = random.Random(SEED)

WORDS = {
    "en": "the quick brown fox jumps over lazy dog don't we'll they're I'm it's you've she'd HELLO World Tokenizer's".split(),
    "fr": "déjà vu café naïve résumé garçon où été français élève noël".split(),
    "de": "Straße Müller über Größe schön Fußgänger Äpfel".split(),
    "ru": "Привет мир как дела Москва ёжик съешь ещё этих мягких французских булок".split(),
    "el": "Καλημέρα κόσμε ελληνικά γλώσσα ΑΒΓΔ".split(),
    "zh": ["你好", "世界", "我们", "中文分词", "测试", "机器学习", "人工智能", "汉字", "简体", "繁體中文"],
    "ja": ["こんにちは", "世界", "カタカナ", "ひらがな", "日本語", "東京", "ラーメン", "ｶﾀｶﾅ"],
    "ko": ["안녕하세요", "세계", "한국어", "토크나이저", "서울"],
    "ar": ["مرحبا", "بالعالم", "العربية", "كتاب", "مُحَمَّد", "السلام عليكم"],
    "he": ["שלום", "עולם", "עברית"],
    "hi": ["नमस्ते", "दुनिया", "हिन्दी", "भाषा", "क्षत्रिय"],
    "th": ["สวัสดี", "ชาวโลก", "ภาษาไทย", "กรุงเทพมหานคร"],
    "vi": ["Tiếng", "Việt", "người", "được", "những"],
    "tr": ["İstanbul", "ılık", "şişe", "ğüç"],
}
EMOJI = ["😀", "👍", "👍🏽", "❤️", "🔥", "🎉", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🇫🇷", "🇯🇵", "🇺🇸", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "1️⃣", "#️⃣", "🧑‍🚀", "😶‍🌫️", "🙂", "🤖", "✨", "☃", "♥"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
           "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]",
           "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<think>", "</think>",
           "<|im_start", "im_end|>", "<|", "|>", "<<s>>", "<s><s>", "<tool_call>", "<0x41>", "▁", "<SPECIAL_12>"]
CODE = [
    "def foo(x, y=2):\n    return x ** y  # comment\n",
    "for i in range(10):\n\tprint(f\"{i:>4d}\")\n",
    "class A(B):\n    def __init__(self):\n        super().__init__()\n        self._x = None\n",
    "#include <vector>\nint main() {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x <<= 2;\n  return 0;\n}\n",
    "template <typename T> constexpr T max(T a, T b) { return a > b ? a : b; }",
    "if (a != b && c >= d || !e) { x->y = z[i++]; }",
    "{\"name\": \"graft\", \"version\": \"0.1.0\", \"deps\": [\"fmt\", \"icu\"], \"n\": 3.14e-10, \"ok\": true, \"v\": null}",
    "[{\"id\":1,\"text\":\"héllo\\nworld\"},{\"id\":2}]",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "<html><body><div class=\"a\">Hi &amp; bye</div></body></html>",
    "$ git commit -m 'fix: handle \\r\\n' && make -j2 2>&1 | tee log.txt",
    "x = [i**2 for i in range(100) if i % 3 == 0]\r\n",
    "const f = async (a) => { await g(a?.b ?? 0); };",
    "    \n    \n\tindented\n\t\tmore\n",
]
WS = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\t \n", "\u00a0", "\u3000", "\u2003", "\r", "\f", "\v", "\u2028", "\u0085", " \t\n\r\n  "]
NUMS = ["0", "7", "42", "123", "1234", "12345", "123456789", "3.14159", "1,000,000", "2026-11-24", "10:45:00", "-17", "1e10", "0x1F", "٣٤٥", "१२३", "１２３", "½", "²", "Ⅻ"]
ODD = ["e\u0301", "a\u0308\u0304", "\u0301", "Z\u0351\u0352\u0353\u0354", "\u200d", "\u200c", "\ufeff", "\ufe0f", "\u2060",
       "\ue000", "\U000f0000", "\ufdd0", "\uffff", "\U0001f600\U0001f600", "\U00010348", "\U0001d11e", "\ufffd", "\u0000",
       "\u0001", "\u007f", "\u0080", "\u00ad", "\u034f", "\u2028", "\U000e0001", "\U0010fffd", "\u1100\u1161\u11a8",
       "ﬁ", "Å", "Å", "Ω", "ǅ", "ß", "İ", "ŉ", "\u0130i\u0307", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ｆｕｌｌｗｉｄｔｈ"]


def word(lang=None):
    lang = lang or rng.choice(list(WORDS))
    return rng.choice(WORDS[lang])


def sentence(lang=None, n=None):
    n = n or rng.randint(1, 12)
    parts = []
    for _ in range(n):
        parts.append(word(lang))
        parts.append(rng.choice([" ", " ", " ", ", ", ". ", "! ", "? ", "", "\n", " - ", "'s ", ": "]))
    return "".join(parts).strip() if rng.random() < 0.5 else "".join(parts)


def mixed():
    gens = [lambda: sentence(), lambda: rng.choice(EMOJI), lambda: rng.choice(SPECIAL), lambda: rng.choice(CODE)[: rng.randint(1, 80)],
            lambda: rng.choice(WS), lambda: rng.choice(NUMS), lambda: rng.choice(ODD), lambda: word()]
    return "".join(rng.choice(gens)() for _ in range(rng.randint(1, 8)))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/core/tokenizer/data/corpus.json"
    c = ["", " ", "  ", "\n", "a", "Hello world", "Hello, world!", " Hello", "hello  world", "<s>", "<|im_start|>",
         "<|begin_of_text|>Hello", "<s> hello</s>", "Hi<|im_end|>\n<|im_start|>assistant\n", "I'm sure they'll've", "DON'T WON'T I'M"]
    for lang in WORDS:  # per language, NFC and NFD
        for _ in range(40):
            s = sentence(lang)
            c.append(s)
            c.append(unicodedata.normalize("NFD", s))
    for _ in range(60):
        c.append(unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC", "NFKD"]), sentence("fr") + " " + sentence("vi")))
    for e in EMOJI:
        c.append(e)
        c.append("I " + e + " it" + e + e)
    for _ in range(60):
        c.append(" ".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 6))) + rng.choice(["", " ok", "!"]))
    for s in CODE:
        c.append(s)
        c.append(s.replace("\n", "\r\n"))
    for _ in range(80):
        c.append("".join(rng.choice(CODE)[rng.randint(0, 10):] for _ in range(rng.randint(1, 3))))
    for w in WS:
        c.append(w)
        c.append("a" + w + "b")
        c.append(w + "x" + w)
    for _ in range(120):
        c.append("".join(rng.choice(WS + ["x", "yy", "Z"]) for _ in range(rng.randint(1, 12))))
    for n in NUMS:
        c.append(n)
        c.append("Pay " + n + "$ now")
    for _ in range(120):
        d = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60)))
        c.append(rng.choice(["", "x", " ", "v", "$"]) + d + rng.choice(["", ".", " apples", "%", "k"]))
    for s in SPECIAL:
        c.append(s)
        c.append("before" + s + "after")
        c.append("before " + s + " after")
        c.append(s + s + "\n" + s)
    for _ in range(200):
        c.append(sentence() + rng.choice(SPECIAL) + sentence() + rng.choice(["", rng.choice(SPECIAL)]))
    for o in ODD:
        c.append(o)
        c.append("x" + o + "y " + o + o)
    for _ in range(40):
        unit = rng.choice(["a", "ab", "abc ", "=", "-", " ", "\n", "é", "你", "😀", "the ", "0", "<s>", "\t"])
        c.append(unit * rng.randint(10, 400))
    c.append("a" * 3000)
    c.append(" " * 1000 + "x")
    c.append("\n" * 500)
    c.append("1234567890" * 100)
    while len(c) < 2400:
        c.append(mixed())
    seen, uniq = set(), []
    for s in c:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(uniq, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"{out}: {len(uniq)} strings")


if __name__ == "__main__":
    main()
