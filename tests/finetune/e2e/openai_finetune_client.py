#!/usr/bin/env python3
"""The fine-tuning API of `graft serve --enable-fine-tuning`, driven by the official OpenAI Python client.

Usage: tools/.venv/bin/python openai_finetune_client.py BASE_URL API_KEY OTHER_KEY BASE_MODEL TRAIN.jsonl BROKEN.jsonl
files.create (a valid and a broken upload), fine_tuning.jobs.create / retrieve / list / list_events / cancel,
errors as the client's exception classes, then a completion on the resulting ft: model.
Prints one line per check and "ALL OK"; exits 1 on the first failure.
"""
import sys
import time

import openai
from openai import OpenAI

base_url, key, other_key, base_model, train_path, broken_path = sys.argv[1:7]


def check(cond, what, extra=None):
    if not cond:
        print("FAIL " + what + ("" if extra is None else " " + repr(extra)), flush=True)
        sys.exit(1)
    print("ok   " + what, flush=True)


def expect_error(what, fn, cls, status):
    try:
        fn()
    except openai.APIStatusError as e:
        check(isinstance(e, cls) and e.status_code == status, f"{what}: {cls.__name__} {status}",
              (type(e).__name__, e.status_code, e.body))
        return e
    check(False, f"{what}: should have failed")


client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)
other = OpenAI(base_url=base_url, api_key=other_key, max_retries=0, timeout=60)

with open(train_path, "rb") as f:
    up = client.files.create(file=f, purpose="fine-tune")
check(up.object == "file" and up.id and up.purpose == "fine-tune" and up.bytes > 0, "files.create", up)
with open(broken_path, "rb") as f:
    e = expect_error("files.create of a broken JSONL", lambda: client.files.create(file=f, purpose="fine-tune"),
                     openai.BadRequestError, 400)
check("line" in e.message, "broken upload names the line", e.message)
expect_error("another key cannot see the file", lambda: other.files.retrieve(up.id), openai.NotFoundError, 404)

expect_error("job on an unknown base", lambda: client.fine_tuning.jobs.create(model="llama-9000", training_file=up.id),
             openai.NotFoundError, 404)
expect_error("job with a bad hyperparameter", lambda: client.fine_tuning.jobs.create(
    model=base_model, training_file=up.id, hyperparameters={"n_epochs": 0}), openai.BadRequestError, 400)

small = {"max_steps": 6, "sequence_len": 64, "learning_rate": 1e-3, "save_steps": 3}
job = client.fine_tuning.jobs.create(model=base_model, training_file=up.id, suffix="pyclient",
                                     hyperparameters={"batch_size": 2}, extra_body={"extra": small})
check(job.object == "fine_tuning.job" and job.model == base_model and job.training_file == up.id, "jobs.create", job)
check(job.status in ("validating_files", "queued", "running"), "new job status", job.status)

# A second job, cancelled while queued or running: cancel answers at once with status cancelled.
victim = client.fine_tuning.jobs.create(model=base_model, training_file=up.id, suffix="victim",
                                        extra_body={"extra": {"max_steps": 500, "sequence_len": 64}})
t0 = time.time()
cancelled = client.fine_tuning.jobs.cancel(victim.id)
check(time.time() - t0 < 5 and cancelled.status in ("cancelled", "cancelling"), "jobs.cancel answers at once",
      (cancelled.status, time.time() - t0))
expect_error("another key cannot cancel", lambda: other.fine_tuning.jobs.cancel(job.id), openai.NotFoundError, 404)

deadline = time.time() + 240
while True:
    cur = client.fine_tuning.jobs.retrieve(job.id)
    if cur.status in ("succeeded", "failed", "cancelled") or time.time() > deadline:
        break
    time.sleep(0.2)
check(cur.status == "succeeded", "jobs.retrieve: succeeded", cur)
ft = cur.fine_tuned_model
check(ft == f"ft:{base_model}:pyclient:{job.id}", "fine_tuned_model name", ft)

events = client.fine_tuning.jobs.list_events(job.id, limit=1000)
check(len(events.data) > 0 and all(ev.object == "fine_tuning.job.event" for ev in events.data), "jobs.list_events",
      events.data[:2])
check(any(ev.type == "metrics" for ev in events.data), "events carry metrics")
jobs = client.fine_tuning.jobs.list(limit=100)
ids = [j.id for j in jobs.data]
check(job.id in ids and victim.id in ids, "jobs.list has both jobs", ids)
check(job.id not in [j.id for j in other.fine_tuning.jobs.list(limit=100).data], "another key does not list them")
final_victim = client.fine_tuning.jobs.retrieve(victim.id)
check(final_victim.status == "cancelled", "cancelled job stays cancelled", final_victim.status)

models = [m.id for m in client.models.list().data]
check(ft in models, "the ft: model is listed for its owner", models)
ans = client.completions.create(model=ft, prompt="good bad", max_tokens=4, temperature=0)
check(isinstance(ans.choices[0].text, str) and ans.usage.completion_tokens >= 1, "completion on the ft: model", ans)
expect_error("another key cannot use it", lambda: other.completions.create(model=ft, prompt="x", max_tokens=1),
             openai.NotFoundError, 404)
print("ALL OK")
