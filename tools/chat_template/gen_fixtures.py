#!/usr/bin/env python3
"""Deterministic generator of the chat template exactness fixtures.

Writes tests/core/chat_template/data/conversations.json: a pool of conversations and tool lists, and
cases (template, conversation, add_generation_prompt, tools, extra kwargs). The expected renders are not
stored: the test renders every case with Jinja2 at test time (tools/chat_template/render_ref.py).
Re-run after editing:  python3 tools/chat_template/gen_fixtures.py
"""
import json, os, random

R = random.Random(20240726)

TEXTS = [
    "What is 2+2?",
    "Hello!",
    "Tell me a joke about compilers.",
    "  leading and trailing spaces  ",
    "\nnewline first\nand a second line\n",
    "tabs\tand\r\ncarriage returns",
    "你好，世界！请用中文回答。",
    "こんにちは、元気ですか？",
    "Emoji time 👋🏽🚀🎉 — with a dash…",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם",
    "Mixed: English, 中文, العربية, emoji 🤖.",
    "{{ not_a_variable }} {% if x %}jinja-looking{% endif %} {# comment #}",
    "Quotes \"double\" and 'single' and back\\slash \\n literal",
    "<|im_end|> <|eot_id|> </s> [INST] special-looking tokens",
    "",
    " ",
    "A longer answer.\n\n1. First point\n2. Second point\n\n```python\nprint('hi')\n```",
    "JSON inside: {\"a\": 1, \"b\": [true, null]}",
    "Numbers 3.14159 and 1e10 and -0.0",
]

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a pirate. Answer in pirate speak.",
    "系统提示：你是一个有用的助手。",
    "  System prompt with surrounding whitespace.\n",
    "",
]

ANSWERS = [
    "4",
    "Hello! How can I help?",
    "Why did the compiler break up? Too many unresolved references.",
    "当然可以。",
    "Sure 👍",
    "  padded answer  ",
    "Line one\nLine two",
    "",
]

TOOLS = {
    "weather": [
        {"type": "function", "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["location"]}}}],
    "multi": [
        {"type": "function", "function": {
            "name": "search", "description": "Search the web — returns snippets (中文 ok)",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                           "top_k": {"type": "integer", "default": 5},
                                                           "threshold": {"type": "number", "default": 0.5}},
                           "required": ["query"]}}},
        {"type": "function", "function": {
            "name": "calculator", "description": "Evaluate an arithmetic expression",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                           "required": ["expression"]},
            "return": {"type": "number"}}}],
}

WEATHER_ARGS = [{"location": "Paris, France", "unit": "celsius"}, {"location": "東京"}, {"location": "San Francisco, CA", "unit": "fahrenheit"}]
SEARCH_ARGS = [{"query": "jinja2 whitespace control", "top_k": 3}, {"query": "émoji 🤖", "threshold": 0.75, "top_k": 1}]
TOOL_RESULTS = ['{"temperature": 22, "unit": "celsius"}', "Sunny, 25°C", '{"results": ["a", "b"]}', "42", ""]

convs = []


def add(conv):
    convs.append(conv)
    return len(convs) - 1


def maybe_system(msgs, p=0.5):
    if R.random() < p:
        return [{"role": "system", "content": R.choice(SYSTEMS)}] + msgs
    return msgs


def chat(turns, end_with_user=True, system_p=0.5):
    msgs = []
    for t in range(turns):
        msgs.append({"role": "user", "content": R.choice(TEXTS)})
        if t < turns - 1 or not end_with_user:
            msgs.append({"role": "assistant", "content": R.choice(ANSWERS)})
    return maybe_system(msgs, system_p)


def qwen_tool_flow(args_as_string, parallel, think=False, with_content=False):
    name, args = ("get_current_weather", R.choice(WEATHER_ARGS)) if R.random() < 0.6 else ("search", R.choice(SEARCH_ARGS))
    calls = []
    for k in range(2 if parallel else 1):
        a = dict(args)
        if k:
            a = R.choice(WEATHER_ARGS)
        calls.append({"type": "function", "function": {"name": name if not k else "get_current_weather",
                                                        "arguments": json.dumps(a, ensure_ascii=False) if args_as_string else a}})
    content = ""
    if with_content:
        content = "Let me check that for you."
    if think:
        content = "<think>\nI should call a tool.\n</think>\n\n" + content
    msgs = [{"role": "user", "content": "What's the weather like? " + R.choice(TEXTS)},
            {"role": "assistant", "content": content, "tool_calls": calls}]
    for _ in calls:
        msgs.append({"role": "tool", "content": R.choice(TOOL_RESULTS)})
    if R.random() < 0.7:
        msgs.append({"role": "assistant", "content": R.choice(ANSWERS)})
        if R.random() < 0.5:
            msgs.append({"role": "user", "content": R.choice(TEXTS)})
    return maybe_system(msgs)


def qwen3_think():
    msgs = []
    for t in range(R.randint(1, 3)):
        msgs.append({"role": "user", "content": R.choice(TEXTS)})
        kind = R.randint(0, 3)
        ans = R.choice(ANSWERS)
        if kind == 0:
            msgs.append({"role": "assistant", "content": "<think>\nreasoning step " + str(t) + "\n</think>\n\n" + ans})
        elif kind == 1:
            msgs.append({"role": "assistant", "content": ans, "reasoning_content": "Thinking in 中文 🤔 step " + str(t)})
        elif kind == 2:
            msgs.append({"role": "assistant", "content": "<think>\n\n</think>\n\n" + ans})
        else:
            msgs.append({"role": "assistant", "content": ans, "reasoning_content": None})
    if R.random() < 0.5:
        msgs.append({"role": "user", "content": R.choice(TEXTS)})
    if R.random() < 0.3:
        msgs.append({"role": "user", "content": "<tool_response>\nfake\n</tool_response>"})
    return maybe_system(msgs)


def llama32_tool_flow(args_kind):
    args = R.choice(WEATHER_ARGS)
    msgs = [{"role": "user", "content": "Weather? " + R.choice(TEXTS)},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_current_weather",
                                                                                    "arguments": args if args_kind == 0 else json.dumps(args)}}]},
            {"role": "tool" if R.random() < 0.7 else "ipython",
             "content": R.choice(TOOL_RESULTS) if R.random() < 0.6 else {"temperature": 21.5, "ok": True, "names": ["a", "ü"]}}]
    if R.random() < 0.6:
        msgs.append({"role": "assistant", "content": R.choice(ANSWERS)})
    return maybe_system(msgs)


def deepseek_tool_flow(n_calls):
    calls = [{"type": "function", "function": {"name": "get_current_weather",
                                              "arguments": json.dumps(R.choice(WEATHER_ARGS), ensure_ascii=False)}}
             for _ in range(n_calls)]
    msgs = [{"role": "user", "content": R.choice(TEXTS)},
            {"role": "assistant", "content": None, "tool_calls": calls}]
    for _ in range(n_calls):
        msgs.append({"role": "tool", "content": R.choice(TOOL_RESULTS)})
    if R.random() < 0.7:
        msgs.append({"role": "assistant", "content": R.choice(ANSWERS)})
    if R.random() < 0.4:
        msgs.append({"role": "user", "content": R.choice(TEXTS)})
    return maybe_system(msgs)


def mistral_tool_flow(n_calls, bad_id=False):
    ids = ["".join(R.choice("abcdefghijklmnopqrstuvwxyzABC0123456789") for _ in range(9)) for _ in range(n_calls)]
    if bad_id:
        ids[0] = "short"
    calls = [{"id": ids[k], "type": "function", "function": {"name": "get_current_weather", "arguments": json.dumps(R.choice(WEATHER_ARGS))}}
             for k in range(n_calls)]
    msgs = [{"role": "user", "content": R.choice(TEXTS)}, {"role": "assistant", "tool_calls": calls}]
    for k in range(n_calls):
        msgs.append({"role": "tool", "tool_call_id": ids[k], "content": R.choice(TOOL_RESULTS)})
    if R.random() < 0.7:
        msgs.append({"role": "assistant", "content": R.choice(ANSWERS)})
        msgs.append({"role": "user", "content": R.choice(TEXTS)})
    return maybe_system(msgs)


cases = []


def case(template, conv, agp=None, tools=None, kwargs=None, no_tools_key=True):
    c = {"id": "%s-%03d" % (template, sum(1 for x in cases if x["template"] == template)), "template": template, "conv": conv,
         "add_generation_prompt": R.random() < 0.5 if agp is None else agp}
    if tools is not None or not no_tools_key:
        c["tools"] = tools
    if kwargs:
        c["kwargs"] = kwargs
    cases.append(c)


# common shapes for every template
COMMON = []
COMMON.append(add([{"role": "user", "content": "What is 2+2?"}]))
COMMON.append(add([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"},
                   {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Tell me a joke."}]))
for i, t in enumerate(TEXTS):
    COMMON.append(add(maybe_system([{"role": "user", "content": t}], 0.4)))
for turns in (1, 2, 3, 4):
    for _ in range(2):
        COMMON.append(add(chat(turns, end_with_user=True)))
        COMMON.append(add(chat(turns, end_with_user=False)))
EMPTY = add([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}])
SYS_ONLY = add([{"role": "system", "content": "Only a system message."}, {"role": "user", "content": "x"}])
BAD_ORDER = add([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
ASSIST_FIRST = add([{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "ok"}])

for tmpl in ("qwen3", "qwen2_5", "llama3_1", "llama3_2", "deepseek_v3", "mistral_nemo"):
    for c in COMMON:
        case(tmpl, c)
    for c in (EMPTY, SYS_ONLY, BAD_ORDER, ASSIST_FIRST):
        case(tmpl, c, agp=True)
    case(tmpl, COMMON[1], agp=True, kwargs={"date_string": "26 Jul 2024"})
    for _ in range(8):
        case(tmpl, add(chat(R.randint(1, 4), end_with_user=R.random() < 0.6)), kwargs=R.choice([None, {"enable_thinking": False}, {"foo": [1, 2.5, None]}]))
    case(tmpl, COMMON[1], agp=False, kwargs={"date_string": "01 Jan 2025", "enable_thinking": False})

# qwen family: tools, tool calls (dict / string arguments, parallel), tool responses
for tmpl in ("qwen3", "qwen2_5"):
    for k in range(12):
        conv = add(qwen_tool_flow(args_as_string=k % 3 == 0, parallel=k % 4 == 1, think=(tmpl == "qwen3" and k % 5 == 2), with_content=k % 2 == 0))
        case(tmpl, conv, tools=R.choice(["weather", "multi"]) if k % 6 != 5 else None, no_tools_key=(k % 6 != 5))
    case(tmpl, COMMON[3], tools="multi")
    case(tmpl, COMMON[1], tools="weather", agp=True)
for k in range(14):
    conv = add(qwen3_think())
    case("qwen3", conv, kwargs={"enable_thinking": False} if k % 3 == 0 else ({"enable_thinking": True} if k % 3 == 1 else None))
case("qwen3", COMMON[0], agp=True, kwargs={"enable_thinking": False})
case("qwen3", COMMON[0], agp=True, kwargs={"enable_thinking": True})

# llama 3.2: tools in the user message / system, custom_tools, tool calls (dict and string arguments)
for k in range(10):
    conv = add(llama32_tool_flow(k % 2))
    kw = {}
    if k % 3 == 1:
        kw["tools_in_user_message"] = False
    if k % 4 == 2:
        kw["date_string"] = "02 Feb 2025"
    case("llama3_2", conv, tools=R.choice(["weather", "multi"]), kwargs=kw or None)
case("llama3_2", COMMON[1], kwargs={"custom_tools": TOOLS["weather"]})
case("llama3_2", add([{"role": "system", "content": "sys"}]), tools="weather")  # no first user message → raise_exception
case("llama3_2", add([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
    {"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]}]), tools="weather")
case("llama3_1", add(llama32_tool_flow(1)))

# deepseek v3: tool calls with string arguments, multiple outputs; None content without tool calls errors
for k in range(10):
    case("deepseek_v3", add(deepseek_tool_flow(1 + k % 3)))
case("deepseek_v3", add([{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
    {"type": "function", "function": {"name": "f", "arguments": {"as": "dict"}}}]}]))  # dict + str → TypeError
case("deepseek_v3", add([{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, {"role": "user", "content": "C"}]), agp=True)

# mistral nemo: tools, tool calls with 9-char ids, tool results, alternation errors
for k in range(10):
    case("mistral_nemo", add(mistral_tool_flow(1 + k % 2, bad_id=(k == 7))), tools=R.choice(["weather", "multi"]) if k % 3 else None,
         no_tools_key=not (k % 3))
case("mistral_nemo", add([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "abcdefghi",
                                                             "content": {"content": "nested dict content"}}]))
case("mistral_nemo", add([{"role": "user", "content": "x"}, {"role": "tool_results", "tool_call_id": "abcdefghi",
                                                             "content": {"temp": 1.0, "names": ["a", "b'c"], "none": None}}]))
case("mistral_nemo", add([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]))

out = {"generator": "tools/chat_template/gen_fixtures.py", "tools": TOOLS, "conversations": convs, "cases": cases}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "core", "chat_template", "data", "conversations.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False, indent=0)
    f.write("\n")
counts = {}
for c in cases:
    counts[c["template"]] = counts.get(c["template"], 0) + 1
print(path, os.path.getsize(path), "bytes", counts)
