"""Checks a `graft serve` that holds one adapter per customer, with the official `openai` client.

Usage: client.py BASE_URL UMBRELLA_ADAPTER_DIR   (run.sh starts the server and passes both)

Each customer has an API key that may use only its own adapter (keys.json in run.sh). Every check
prints an `OK: ...` line; the first failure exits non-zero with what was expected and what came back.
"""
import sys

import openai

BASE_URL, UMBRELLA_DIR = sys.argv[1], sys.argv[2]
# customer (adapter name) -> the word its adapter was trained to answer (data/CUSTOMER.jsonl)
WORDS = {"acme": "alpha", "globex": "bravo", "initech": "charlie", "umbrella": "delta"}
QUESTION = "code word?"  # one of the training questions
# The completions endpoint takes raw text: the same ChatML turn the chat endpoint renders.
CHATML_PROMPT = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def client(customer):
    return openai.OpenAI(base_url=BASE_URL, api_key=f"key-{customer}", max_retries=0)


def fail(msg):
    sys.exit(f"FAIL: {msg}")


def chat(c, model):
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                  max_tokens=8, temperature=0)
    return r.choices[0].message.content


def complete(c, model):
    r = c.completions.create(model=model, prompt=CHATML_PROMPT, max_tokens=8, temperature=0)
    return r.choices[0].text


def expect_answers(customer):
    c, word = client(customer), WORDS[customer]
    got = {"chat": chat(c, customer), "completion": complete(c, customer)}
    for kind, text in got.items():
        if not text.startswith(word):
            fail(f"{customer}'s adapter should answer {word!r} ({kind}), got {text!r}")
    return got


def expect_not_found(customer, model, what):
    try:
        chat(client(customer), model)
    except openai.NotFoundError as e:
        code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
        if code != "model_not_found":
            fail(f"{what}: expected code model_not_found, got {e.body!r}")
        return
    fail(f"{what}: key-{customer} asking for model {model!r} should get 404 model_not_found, it was answered")


def hot_load(customer, name, path):
    r = client(customer).post("/load_lora_adapter", body={"lora_name": name, "lora_path": path},
                              cast_to=str)  # the reply is text/plain
    return r


# 1. Each customer's key answers with that customer's adapter, through chat and completions.
for customer in ("acme", "globex", "initech"):
    got = expect_answers(customer)
    print(f"OK: {customer} gets its own adapter: chat {got['chat']!r}, completion {got['completion']!r}")

# The base alone answers none of the words: the answers above come from the adapters.
base_answer = chat(client("acme"), "base")
if any(base_answer.startswith(w) for w in WORDS.values()):
    fail(f"the untrained base should not answer a customer's word, got {base_answer!r}")
print(f"OK: the base alone answers {base_answer!r}, none of the customers' words")

# 2. A key sees only its own adapter, and another customer's adapter does not exist for it.
for customer in ("acme", "globex", "initech"):
    ids = sorted(m.id for m in client(customer).models.list().data)
    if ids != sorted(["base", customer]):
        fail(f"key-{customer} should list only base and {customer}, got {ids}")
print("OK: /v1/models lists only the base and the key's own adapter")
for customer, other in (("acme", "globex"), ("globex", "initech"), ("initech", "acme")):
    expect_not_found(customer, other, f"{customer} asking for {other}'s adapter")
print("OK: another customer's adapter is a 404 model_not_found (openai.NotFoundError)")

# 3. A new customer: umbrella's adapter is not served yet, a customer key may not load it (403),
#    the admin key ("*") hot-loads it, and from then on umbrella's key gets its answers.
expect_not_found("umbrella", "umbrella", "umbrella before the hot-load")
print("OK: umbrella is a 404 before the hot-load")
try:
    hot_load("umbrella", "umbrella", UMBRELLA_DIR)
    fail("key-umbrella (no '*') should not be allowed to load adapters")
except openai.PermissionDeniedError:
    print("OK: a customer key may not load adapters (403 openai.PermissionDeniedError)")
reply = hot_load("admin", "umbrella", UMBRELLA_DIR)
if "added successfully" not in reply:
    fail(f"load_lora_adapter should succeed, got {reply!r}")
got = expect_answers("umbrella")
print(f"OK: umbrella hot-loaded without a restart ({reply.strip()!r}): chat {got['chat']!r}, "
      f"completion {got['completion']!r}")
expect_not_found("acme", "umbrella", "acme asking for umbrella's adapter")
print("OK: the hot-loaded adapter is still only umbrella's")
