#!/usr/bin/env python3
"""Drives `graft serve` with the official OpenAI Python client (PyPI `openai`, in tools/.venv).

Usage: tools/.venv/bin/python openai_client.py BASE_URL API_KEY BASE_MODEL ADAPTER
Prints one line per check and "ALL OK" at the end; exits 1 on the first failure.
"""
import sys

import openai
from openai import OpenAI

base_url, api_key, base_model, adapter = sys.argv[1:5]


def check(cond, what, extra=None):
    if not cond:
        print("FAIL " + what + ("" if extra is None else " " + repr(extra)), flush=True)
        sys.exit(1)
    print("ok   " + what, flush=True)


def expect_error(what, fn, cls, status, code=None):
    try:
        fn()
    except openai.APIStatusError as e:
        check(isinstance(e, cls), f"{what}: {cls.__name__}", type(e).__name__)
        check(e.status_code == status, f"{what}: status {status}", e.status_code)
        if code:
            check(e.code == code, f"{what}: code {code}", e.body)
        check(isinstance(e.message, str) and len(e.message) > 0, f"{what}: has a message")
        return e
    check(False, f"{what}: should have failed")


client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20)
print("openai", openai.__version__)

models = client.models.list()
ids = [m.id for m in models.data]
check(base_model in ids and adapter in ids, "models.list has base and adapter", ids)
card = next(m for m in models.data if m.id == adapter)
extra = card.model_extra or {}
check(extra.get("parent") == base_model and isinstance(extra.get("root"), str), "adapter card: parent = base, root = path",
      card)

msgs = [{"role": "user", "content": "hello"}]
chat = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=8, temperature=0)
check(chat.object == "chat.completion", "chat: object")
check(isinstance(chat.choices[0].message.content, str), "chat: content")
check(chat.choices[0].finish_reason in ("stop", "length"), "chat: finish_reason", chat.choices[0])
u = chat.usage
check(u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens <= 8, "chat: usage", u)

# n > 1 with a seed: n choices, indexed 0..n-1, each with its own finish_reason.
multi = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=6, temperature=1.0, n=3, seed=7)
check(len(multi.choices) == 3 and sorted(c.index for c in multi.choices) == [0, 1, 2], "chat: n=3 choices",
      multi.choices)
check(3 <= multi.usage.completion_tokens <= 18, "chat: n=3 usage counts every choice", multi.usage)
again = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=6, temperature=1.0, n=3, seed=7)
check([c.message.content for c in again.choices] == [c.message.content for c in multi.choices],
      "chat: n=3 with a seed is reproducible")

cmpl = client.completions.create(model=base_model, prompt="abc", max_tokens=6, temperature=0)
check(cmpl.object == "text_completion" and isinstance(cmpl.choices[0].text, str), "completions: text")
again = client.completions.create(model=base_model, prompt="abc", max_tokens=6, temperature=0)
check(again.choices[0].text == cmpl.choices[0].text, "completions: greedy is deterministic")

# stop: the answer ends before the first occurrence of the stop string, finish_reason "stop".
full = client.completions.create(model=base_model, prompt="abc", max_tokens=16, temperature=0).choices[0].text
cut = next((full[:i] for i in range(1, len(full)) if full[i] not in full[:i]), None)
if cut is not None:
    stop_str = full[len(cut)]
    st = client.completions.create(model=base_model, prompt="abc", max_tokens=16, temperature=0, stop=[stop_str])
    check(st.choices[0].text == cut and st.choices[0].finish_reason == "stop", "completions: stop string",
          (full, stop_str, st.choices[0].text))
chat_full = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=16, temperature=0)
text = chat_full.choices[0].message.content
pos = next((i for i in range(1, len(text)) if text[i] not in text[:i]), None)
if pos is not None:
    cs = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=16, temperature=0, stop=text[pos])
    check(cs.choices[0].message.content == text[:pos] and cs.choices[0].finish_reason == "stop", "chat: stop string",
          (text, text[pos], cs.choices[0].message.content))

# Streaming chat with usage: the deltas add up to the plain answer.
stream = client.chat.completions.create(model=adapter, messages=msgs, max_tokens=8, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
text, role, finish, usage, chunks = "", None, None, None, 0
for ch in stream:
    chunks += 1
    if ch.usage:
        usage = ch.usage
    if not ch.choices:
        continue
    d = ch.choices[0].delta
    role = d.role or role
    text += d.content or ""
    finish = ch.choices[0].finish_reason or finish
check(role == "assistant", "chat stream: role")
check(text == chat.choices[0].message.content, "chat stream: same text as plain", (text, chat.choices[0].message.content))
check(finish == chat.choices[0].finish_reason, "chat stream: finish_reason")
check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, "chat stream: include_usage", usage)

cs = client.completions.create(model=base_model, prompt="abc", max_tokens=6, temperature=0, stream=True,
                               stream_options={"include_usage": True})
ctext, cusage = "", None
for ch in cs:
    if ch.usage:
        cusage = ch.usage
    if ch.choices:
        ctext += ch.choices[0].text
check(ctext == cmpl.choices[0].text, "completions stream: same text as plain")
check(cusage is not None and cusage.completion_tokens == cmpl.usage.completion_tokens, "completions stream: include_usage",
      cusage)

# Logprobs through the client's types (what lm-evaluation-harness uses: echo + logprobs + max_tokens 0).
lp = client.completions.create(model=base_model, prompt="abc", max_tokens=2, temperature=0, logprobs=2, echo=True)
L = lp.choices[0].logprobs
check(lp.choices[0].text.startswith("abc") and len(L.tokens) == 3 + lp.usage.completion_tokens and
      L.token_logprobs[0] is None, "completions: echo + logprobs", L)
lp0 = client.completions.create(model=base_model, prompt="abc def", max_tokens=0, temperature=0, logprobs=1, echo=True)
check(lp0.choices[0].text == "abc def" and all(x is None or x <= 0 for x in lp0.choices[0].logprobs.token_logprobs),
      "completions: echo + logprobs with max_tokens 0 (scoring)", lp0.choices[0])
clp = client.chat.completions.create(model=base_model, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                     logprobs=True, top_logprobs=3)
check(len(clp.choices[0].logprobs.content) >= 1 and len(clp.choices[0].logprobs.content[0].top_logprobs) == 3,
      "chat: logprobs + top_logprobs")

# Errors arrive as the client's typed exceptions.
expect_error("unknown model", lambda: client.completions.create(model="no-such-model", prompt="x", max_tokens=1),
             openai.NotFoundError, 404, "model_not_found")
expect_error("bad temperature", lambda: client.completions.create(model=base_model, prompt="x", temperature=-1),
             openai.BadRequestError, 400)
expect_error("bad max_tokens", lambda: client.chat.completions.create(
    model=base_model, messages=[{"role": "user", "content": "x"}], max_tokens="many"), openai.BadRequestError, 400)
expect_error("context too long", lambda: client.completions.create(model=base_model, prompt="x", max_tokens=10000000),
             openai.BadRequestError, 400, "context_length_exceeded")
bad = OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0, timeout=20)
expect_error("wrong API key", lambda: bad.models.list(), openai.AuthenticationError, 401, "invalid_api_key")
expect_error("wrong API key (chat)", lambda: bad.chat.completions.create(
    model=base_model, messages=[{"role": "user", "content": "x"}]), openai.AuthenticationError, 401)
print("ALL OK")
