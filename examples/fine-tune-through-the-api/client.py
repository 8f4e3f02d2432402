#!/usr/bin/env python3
"""Fine-tune through the API: the official OpenAI Python client against `graft serve --enable-fine-tuning`.

Usage: client.py BASE_URL BASE_MODEL TRAIN.jsonl
Uploads TRAIN.jsonl, creates a fine-tuning job on BASE_MODEL, prints its events as they come, waits until it
succeeded, checks that the fine-tuned model is listed, then asks the base and the fine-tuned model the same
held-out question. Prints "OK: ..." lines; exits 1 on the first failure.
"""
import sys
import time

from openai import OpenAI

base_url, base_model, train_path = sys.argv[1:4]
ANSWER = "zebra"  # every record of TRAIN.jsonl answers this word
QUESTION = "apple orange grape"  # words that are not in TRAIN.jsonl


def fail(what):
    print("FAIL: " + what, flush=True)
    sys.exit(1)


# No keys configured on the server: any api_key is accepted (one shared owner).
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

with open(train_path, "rb") as f:
    upload = client.files.create(file=f, purpose="fine-tune")
print(f"OK: uploaded {upload.filename} as {upload.id} ({upload.bytes} bytes, validated by the server)", flush=True)

# OpenAI's own knobs (n_epochs, batch_size, learning_rate_multiplier) go in hyperparameters; any other
# recipe key that a job may set (docs/recipes.md) goes under "extra".
job = client.fine_tuning.jobs.create(
    model=base_model, training_file=upload.id, suffix="zebra",
    hyperparameters={"batch_size": 4},
    extra_body={"extra": {"max_steps": 40, "sequence_len": 64, "learning_rate": 0.01, "lr_scheduler": "cosine",
                          "warmup_steps": 5, "save_steps": 20,
                          "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"]}})
print(f"OK: created job {job.id} (status {job.status})", flush=True)

# Follow the events oldest first: `after` is the last event seen; `order=asc` is graft's extension.
last, losses, deadline = None, [], time.time() + 240
while True:
    page = client.fine_tuning.jobs.list_events(job.id, limit=100, **({"after": last} if last else {}),
                                               extra_query={"order": "asc"})
    for ev in page.data:
        print(f"  event [{ev.level}] {ev.message}", flush=True)
        if ev.type == "metrics" and ev.data and "train_loss" in ev.data:
            losses.append(ev.data["train_loss"])
        last = ev.id
    status = client.fine_tuning.jobs.retrieve(job.id).status
    if not page.data and status in ("succeeded", "failed", "cancelled"):
        break
    if time.time() > deadline:
        fail(f"job {job.id} still {status} after 240 s")
    if not page.data:
        time.sleep(0.3)

job = client.fine_tuning.jobs.retrieve(job.id)
if job.status != "succeeded":
    fail(f"job {job.id} ended {job.status}: {job.error}")
if len(losses) < 2 or not losses[-1] < losses[0]:
    fail(f"training loss did not fall: {losses}")
print(f"OK: job succeeded, training loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
      f"{job.trained_tokens} trained tokens", flush=True)

ft = job.fine_tuned_model
models = [m.id for m in client.models.list().data]
if ft not in models:
    fail(f"{ft} is not in /v1/models: {models}")
print(f"OK: {ft} is listed in /v1/models next to {base_model}", flush=True)


def ask(model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                       max_tokens=8, temperature=0)
    return r.choices[0].message.content


base_answer, ft_answer = ask(base_model), ask(ft)
print(f"  {base_model} answers {base_answer!r}", flush=True)
print(f"  {ft} answers {ft_answer!r}", flush=True)
if ANSWER not in ft_answer:
    fail(f"the fine-tuned model does not answer {ANSWER!r}")
if ANSWER in base_answer:
    fail(f"the base already answers {ANSWER!r}: the job taught nothing")
print(f"OK: the fine-tuned model answers {ANSWER!r} to a held-out question, the base does not", flush=True)
