#!/usr/bin/python3
# Replays a trace written by bench_serve_trace (one JSON object per line: i, t = arrival seconds,
# prompt = token ids, max_tokens, adapter = "aK" or "" for the base) against an OpenAI-compatible
# server over HTTP, streaming (SSE), one thread per request started at its arrival time. Stdlib only.
#
#   replay.py --url http://127.0.0.1:PORT --server graft|llama --trace FILE [--base-only]
#             [--base-model NAME] [--lora-ids FILE] [--label TEXT] [--json-out FILE]
#
# graft:  POST /v1/completions {"model": adapter name or --base-model, "prompt": [ids], ...}
# llama:  POST /v1/completions {"prompt": [ids], "lora": [{"id": ID, "scale": 1.0}], ...} where ID is
#         the adapter's position in llama-server's --lora list (--lora-ids: JSON {"aK": ID}); base
#         requests send "lora": [{"id": 0, "scale": 0}] (every adapter at scale 0: an empty list would
#         mean the start-up scales, which are 1.0 even with --lora-init-without-apply).
# Both: temperature 0 (greedy), ignore_eos, max_tokens from the trace, stream with usage.
# Measured per request on the client: TTFT = first streamed chunk carrying text (or tokens) minus the
# scheduled arrival; TPOT = (last chunk - first chunk) / (completion_tokens - 1); completion_tokens
# and prompt_tokens from the final usage object (falls back to the number of chunks).
# Prints one markdown row (same columns as bench_serve_trace) and writes --json-out.
import argparse, http.client, json, statistics, sys, threading, time, urllib.parse


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    idx = p / 100 * (len(v) - 1)
    lo, hi = int(idx), min(int(idx) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (idx - lo)


def one(url, body, t_sched, out):
    u = urllib.parse.urlparse(url)
    rec = {"ok": False, "error": "", "ttft": None, "tpot": None, "completion_tokens": 0, "prompt_tokens": 0}
    try:
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=3600)
        c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            rec["error"] = f"HTTP {r.status}: {r.read()[:300].decode(errors='replace')}"
            out.append(rec)
            return
        first = last = None
        chunks = 0
        usage = None
        buf = b""
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            try:
                j = json.loads(data)
            except ValueError:
                continue
            if j.get("usage"):
                usage = j["usage"]
            if "error" in j:
                rec["error"] = json.dumps(j["error"])[:300]
            for ch in j.get("choices", []) or []:
                if ch.get("text") or ch.get("tokens"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    chunks += 1
        c.close()
        n = (usage or {}).get("completion_tokens", chunks)
        rec["completion_tokens"] = n
        rec["prompt_tokens"] = (usage or {}).get("prompt_tokens", len(body["prompt"]))
        if first is not None:
            rec["ttft"] = first - t_sched
            if n > 1:
                rec["tpot"] = (last - first) / (n - 1)
        rec["ok"] = not rec["error"] and first is not None
        rec["t_end"] = last if last is not None else time.perf_counter()
    except Exception as e:  # noqa: BLE001 - reported per request
        rec["error"] = f"{type(e).__name__}: {e}"
    out.append(rec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--server", choices=["graft", "llama"], required=True)
    ap.add_argument("--trace", required=True)
    ap.add_argument("--base-only", action="store_true")
    ap.add_argument("--base-model", default="base")
    ap.add_argument("--lora-ids", default="")
    ap.add_argument("--label", default="")
    ap.add_argument("--json-out", default="")
    a = ap.parse_args()
    reqs = [json.loads(l) for l in open(a.trace) if l.strip()]
    ids = json.load(open(a.lora_ids)) if a.lora_ids else {}
    bodies = []
    for q in reqs:
        b = {"prompt": q["prompt"], "max_tokens": q["max_tokens"], "temperature": 0, "stream": True,
             "stream_options": {"include_usage": True}, "ignore_eos": True}
        ad = "" if a.base_only else q["adapter"]
        if a.server == "graft":
            b["model"] = ad or a.base_model
        else:
            # An empty "lora" list would fall back to llama-server's start-up scales (1.0 for every --lora
            # even with --lora-init-without-apply), so base requests name adapter 0 at scale 0.
            b["lora"] = [{"id": ids[ad], "scale": 1.0}] if ad else ([{"id": 0, "scale": 0.0}] if ids else [])
        bodies.append(b)
    out, threads = [], []
    t0 = time.perf_counter()
    for q, b in zip(reqs, bodies):
        t_sched = t0 + q["t"]
        d = t_sched - time.perf_counter()
        if d > 0:
            time.sleep(d)
        th = threading.Thread(target=one, args=(a.url, b, t_sched, out), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    ok = [r for r in out if r["ok"]]
    errs = [r for r in out if not r["ok"]]
    dur = max([r["t_end"] for r in ok], default=t0) - t0
    otok = sum(r["completion_tokens"] for r in ok)
    ttok = otok + sum(r["prompt_tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    tpot = [r["tpot"] for r in ok if r["tpot"] is not None]
    res = {"label": a.label, "server": a.server, "trace": a.trace, "base_only": a.base_only, "ok": len(ok),
           "errors": len(errs), "first_error": errs[0]["error"] if errs else "", "duration_s": dur,
           "out_tok_s": otok / dur if dur > 0 else 0, "total_tok_s": ttok / dur if dur > 0 else 0,
           "ttft_ms": [1e3 * (statistics.mean(ttft) if ttft else 0), 1e3 * pct(ttft, 50), 1e3 * pct(ttft, 99)],
           "tpot_ms": [1e3 * (statistics.mean(tpot) if tpot else 0), 1e3 * pct(tpot, 50), 1e3 * pct(tpot, 99)],
           "adapters_used": len({q["adapter"] for q in reqs if q["adapter"]}) if not a.base_only else 0}
    if a.json_out:
        json.dump(res, open(a.json_out, "w"), indent=1)
    f3 = lambda v: " / ".join(f"{x:.0f}" for x in v)
    print(f"| {a.label} | {a.server} | {'base-only' if a.base_only else 'adapters'} | {res['adapters_used']} | "
          f"{res['out_tok_s']:.1f} | {res['total_tok_s']:.1f} | {f3(res['ttft_ms'])} | {f3(res['tpot_ms'])} | "
          f"{res['ok']} ok, {res['errors']} errors |", flush=True)
    if errs:
        print(f"first error: {errs[0]['error']}", file=sys.stderr)
    return 0 if not errs else 1


if __name__ == "__main__":
    sys.exit(main())
