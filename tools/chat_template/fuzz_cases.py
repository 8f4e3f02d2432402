#!/usr/bin/env python3
"""Random (seeded) conversations with odd shapes for differential testing against Jinja2:
    python3 tools/chat_template/fuzz_cases.py SEED N > /tmp/fuzz.json
    GRAFT_CHAT_TEMPLATE_CASES=/tmp/fuzz.json build/tests/core/chat_template/test_chat_template --gtest_filter='*MatchesJinja2*'
Many cases make the templates raise; graft must raise exactly when Jinja2 does and otherwise match byte for byte.
"""
import json, random, sys

seed, n = int(sys.argv[1]), int(sys.argv[2])
R = random.Random(seed)
TEXTS = ["", " ", "x", "hi there", "\n", "a\nb", "  pad  ", "你好", "🙂", "<think>\nr\n</think>\n\nans", "</think>only end",
         "<tool_response>\nz\n</tool_response>", "{{ x }}", "%s %d", "مرحبا", "\t\ttabs", "ends with newline\n"]
ROLES = ["system", "user", "assistant", "tool", "ipython", "tool_calls", "tool_results", "developer"]


def value(depth=0):
    k = R.random()
    if k < 0.5 or depth > 2:
        return R.choice(TEXTS)
    if k < 0.6:
        return None
    if k < 0.7:
        return R.choice([0, 1, -3, 2.5, 1e20, True, False])
    if k < 0.85:
        return [value(depth + 1) for _ in range(R.randint(0, 2))]
    return {R.choice(["a", "content", "type", "text", "ü"]): value(depth + 1) for _ in range(R.randint(0, 2))}


def tool_call():
    args = R.choice([{"x": 1}, {"q": "é", "n": [1, 2.0, None]}, '{"x": 1}', "", {}])
    fn = {"name": R.choice(["f", "get_weather", "ü"]), "arguments": args}
    tc = {"function": fn} if R.random() < 0.8 else fn
    if R.random() < 0.7:
        tc["type"] = "function"
    if R.random() < 0.6:
        tc["id"] = R.choice(["abcdefghi", "123456789", "short"])
    return tc


def message():
    m = {"role": R.choice(ROLES) if R.random() < 0.5 else R.choice(["user", "assistant"])}
    if R.random() < 0.9:
        m["content"] = R.choice(TEXTS) if R.random() < 0.8 else value()
    if m["role"] == "assistant" and R.random() < 0.3:
        m["tool_calls"] = [tool_call() for _ in range(R.randint(0, 2))]
    if R.random() < 0.15:
        m["reasoning_content"] = R.choice(TEXTS + [None])
    if m["role"] in ("tool", "tool_results") and R.random() < 0.7:
        m["tool_call_id"] = R.choice(["abcdefghi", "x"])
    return m


def conv():
    msgs = [message() for _ in range(R.randint(0, 6))]
    if R.random() < 0.6:  # mostly plausible: alternate user/assistant after optional system
        msgs = ([{"role": "system", "content": R.choice(TEXTS)}] if R.random() < 0.4 else []) + \
               [{"role": "user" if i % 2 == 0 else "assistant", "content": R.choice(TEXTS)} for i in range(R.randint(1, 5))] + msgs[:R.randint(0, 2)]
    return msgs


TOOLS = {"t1": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}],
         "t2": [{"type": "function", "function": {"name": "g", "parameters": {}, "return": {"type": "string"}}},
                {"type": "function", "function": {"name": "h", "description": 5}}],
         "t3": [], "t4": [{"name": "bare"}]}
convs, cases = [], []
for i in range(n):
    convs.append(conv())
    for t in ("qwen3", "qwen2_5", "llama3_1", "llama3_2", "deepseek_v3", "mistral_nemo"):
        c = {"id": "%s-fz%04d" % (t, i), "template": t, "conv": i, "add_generation_prompt": R.random() < 0.5}
        r = R.random()
        if r < 0.3:
            c["tools"] = R.choice(list(TOOLS))
        elif r < 0.4:
            c["tools"] = None
        if R.random() < 0.3:
            c["kwargs"] = R.choice([{"enable_thinking": False}, {"enable_thinking": True}, {"date_string": "x"},
                                    {"tools_in_user_message": False}, {"custom_tools": TOOLS["t1"]}])
        cases.append(c)
json.dump({"tools": TOOLS, "conversations": convs, "cases": cases}, sys.stdout, ensure_ascii=False)
