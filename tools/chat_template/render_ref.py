#!/usr/bin/env python3
"""Reference renderer: Jinja2 configured exactly as Hugging Face transformers (and
/work/shared/assets/reference-tools/render_chat.py) configure it. Run with the reference venv's python (tools/.venv/bin/python).

Two modes:
  render_ref.py --assets DIR --cases CASES.json --out RESULTS.json
      Renders every case of a fixture file (tests/core/chat_template/data/conversations.json) and writes
      [{"id", "rendered"} | {"id", "error"}] in case order.
  render_ref.py MODEL_DIR --messages M.json [--add-generation-prompt] [--tools T.json]
                [--template-name NAME] [--set key=json ...]
      Prints one render to stdout (no newline added), mirroring `graft chat-template`.
"""
import argparse, datetime, json, sys

from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(m):
        raise ValueError(m)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime(2024, 7, 26).strftime(fmt)
    return env


def load_template(tcfg, name="default"):
    tpl = tcfg["chat_template"]
    if isinstance(tpl, list):
        tpl = {t["name"]: t["template"] for t in tpl}[name]
    sp = {k: (v["content"] if isinstance(v, dict) else v) for k, v in tcfg.items() if k.endswith("_token")}
    return tpl, sp


def render(compiled, sp, messages, add_generation_prompt, tools_given, tools, kwargs):
    kw = dict(sp)
    kw.update(kwargs)
    if tools_given:
        kw["tools"] = tools
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **kw)


def run_cases(args):
    fx = json.load(open(args.cases, encoding="utf-8"))
    env = make_env()
    cfgs = {}
    out = []
    for case in fx["cases"]:
        key = (case["template"], case.get("template_name", "default"))
        if key not in cfgs:
            tcfg = json.load(open("%s/%s/tokenizer_config.json" % (args.assets, case["template"]), encoding="utf-8"))
            tpl, sp = load_template(tcfg, key[1])
            cfgs[key] = (env.from_string(tpl), sp)  # compiled once per template
        compiled, sp = cfgs[key]
        messages = fx["conversations"][case["conv"]]
        tools_given = "tools" in case
        tools = fx["tools"][case["tools"]] if tools_given and case["tools"] is not None else None
        try:
            r = {"id": case["id"], "rendered": render(compiled, sp, messages, case["add_generation_prompt"], tools_given,
                                                      tools, case.get("kwargs", {}))}
        except Exception as ex:  # the C++ side must raise too
            r = {"id": case["id"], "error": "%s: %s" % (type(ex).__name__, ex)}
        out.append(r)
    json.dump({"jinja2": __import__("jinja2").__version__, "results": out}, open(args.out, "w", encoding="utf-8"),
              ensure_ascii=False)


def run_one(args):
    tcfg = json.load(open(args.model_dir + "/tokenizer_config.json", encoding="utf-8"))
    tpl, sp = load_template(tcfg, args.template_name)
    messages = json.load(open(args.messages, encoding="utf-8"))
    tools = json.load(open(args.tools, encoding="utf-8")) if args.tools else None
    kwargs = {}
    for s in args.set or []:
        k, v = s.split("=", 1)
        kwargs[k] = json.loads(v)
    sys.stdout.write(render(make_env().from_string(tpl), sp, messages, args.add_generation_prompt, args.tools is not None, tools, kwargs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--assets")
    ap.add_argument("--cases")
    ap.add_argument("--out")
    ap.add_argument("--messages")
    ap.add_argument("--tools")
    ap.add_argument("--add-generation-prompt", action="store_true")
    ap.add_argument("--template-name", default="default")
    ap.add_argument("--set", action="append")
    args = ap.parse_args()
    if args.cases:
        run_cases(args)
    else:
        run_one(args)


if __name__ == "__main__":
    main()
