#!/usr/bin/python3
"""Feature fixtures: small templates exercising each supported Jinja feature, rendered by Jinja2 configured
like Hugging Face (render_ref.make_env). Writes tests/core/chat_template/data/features.json with the expected
text or the expected error class, so the unit test needs no Python. Run with Debian's /usr/bin/python3:
    /usr/bin/python3 tools/chat_template/gen_feature_cases.py
"""
import json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render_ref import make_env  # noqa: E402

CTX = {
    "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi there"},
                 {"role": "assistant", "content": "Hello", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                 {"role": "user", "content": "多谢 👍"}],
    "d": {"b": 2, "a": 1.0, "c": [1, 2.5, None, True, "x\"y"], "u": "ü€😀", "n": None},
    "xs": [3, 1, 2], "names": ["bob", "Alice", "carol", "alice"], "s": "  Hello World  ", "i": 7, "f": 2.5, "t": True,
    "people": [{"name": "a", "age": 30, "tag": "x"}, {"name": "b", "age": 20}, {"name": "c", "age": 40, "tag": "y"}],
    "empty": [], "big": 12345678901234, "neg": -7, "fl": [0.1, 1e16, 1e-5, 123456789.0, 1.5e300, -0.0, 100.0],
}

T = [
    # output, literals, whitespace control
    "{{ 'a' }}{{ \"b\" }}{{ 1 }}{{ 1.5 }}{{ true }}{{ True }}{{ none }}{{ None }}{{ [1, 'x', none] }}{{ {'k': 'v', 1: 2} }}{{ (1,) }}{{ (1, 2) }}{{ () }}",
    "{{ 'esc\\n\\t\\\\ \\'q\\' \\x41\\u00e9\\U0001F600 \\q' }}",
    "{{ 'adj' 'acent' }}|{{ 1_000 }}|{{ 0x1f }}|{{ 1e3 }}|{{ 2.5e-3 }}",
    "a  {{- ' b ' -}}  c\n  {%- if true %} d {% endif -%}\n e",
    "line1\n  {% if true %}\n  inside\n  {% endif %}\nline2\n",
    "x {%+ if true %}y{% endif +%}\nz",
    "  {# comment #}\nafter\n{#- trimmed -#}   tail",
    "{% raw %}{{ not evaluated }}{% endraw %}|  {%- raw -%}  x  {%- endraw %}",
    "keep\n\n",
    "{{ 'a' }}\r\n{{ 'b' }}\r\n",
    "\t  {{ 'var keeps indent' }}\n\t  {% if true %}block{% endif %}",
    "{%- if true -%}\n\n  x  \n\n{%- endif -%}  y",
    "a  {% if true %}b{% endif %}  c\n  {% if true %}d{% endif %}",
    "  {# c #}  x\n\t{#- c2 #}\ny",
    "   {{- 'a' }}   {{ 'b' -}}   \n",
    "\u3000\u00a0{%- if true %}x{% endif %}",
    "{% if true %}\r\nx{% endif %}\r\ny",
    "  {%- raw %} r {% endraw -%}  z",
    "x\n{% if true %}\ny\n{% endif %}\n",
    "text\n    {% for i in xs %}\n    {{ i }}\n    {% endfor %}\nend",
    "a { b } {{ '{' }} {} {{ {'a': {'b': 1}} }} {{ '}}' }} {{ [[1], [2]][1] }}",
    "{% if true -%}  \n  x{%- endif %}",
    "  {% set a = 1 %}\n  {% set b = 2 %}\n{{ a + b }}",
    "{#\nmulti\nline\n#}\n{{ 'after' }}",
    "{{ 'a' }}\n{# x #}\n{{ 'b' }}\n",
    "  {%+ if true %}keep{% endif %}",
    "{%- macro m(x) -%}\n  [{{ x }}]\n{%- endmacro -%}\n{{ m(1) }} {{ m(2) }}",
    # if / for / loop
    "{% if i > 5 %}big{% elif i > 2 %}mid{% else %}small{% endif %}",
    "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }} {% endfor %}",
    "{% for x in xs %}{{ loop.previtem }}-{{ x }}-{{ loop.nextitem }}|{{ loop.cycle('odd', 'even') }} {% endfor %}",
    "{% for x in empty %}{{ x }}{% else %}none{% endfor %}",
    "{% for x in xs if x > 1 %}{{ x }}:{{ loop.length }} {% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'héllo' %}[{{ c }}]{% endfor %}",
    "{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.depth }}{% endfor %}{% endfor %}",
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = i * 10 %}{{ x }}{% endfor %}|{{ x }}",
    "{% for a, b in [[1, 2], (3, 4)] %}{{ a + b }}{% endfor %}",
    # set, namespace, block set
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c = [a, b] %}{{ c }}",
    "{% set ns = namespace(n=0, items=[]) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}",
    "{% set blk %}Hello {{ 'world' }}{% endset %}[{{ blk }}]{% set up | upper %}shout{% endset %}{{ up }}",
    "{% set x = 5 %}{% if true %}{% set x = 6 %}{% endif %}{{ x }}",
    "{% set v = 1 %}{% set v.attr = 2 %}",
    # macros and call
    "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Bob') }} {{ greet('Al', punct='?') }} {{ greet(name='Z') }}",
    "{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inner{% endcall %}",
    "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}",
    "{% filter upper %}shout {{ 'this' }}{% endfilter %}",
    # expressions
    "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 4 / 2 }} {{ 1.5 + 1 }}",
    "{{ 'a' ~ 1 ~ none ~ true }} {{ 'x' * 3 }} {{ [1] + [2] }} {{ -i }} {{ +f }} {{ 7.0 // 2 }} {{ 7.5 % 2 }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ none == none }} {{ 'a' != 'a' }}",
    "{{ 'ell' in 'hello' }} {{ 2 in xs }} {{ 'b' in d }} {{ 5 not in xs }} {{ not true }} {{ not empty }}",
    "{{ i > 5 and 'yes' or 'no' }} {{ empty or 'fallback' }} {{ 0 and 1 }} {{ 'x' if t else 'y' }} {{ 'x' if not t else 'y' }}|{{ 'z' if false }}|",
    "{{ messages[0].role }} {{ messages[1]['content'] }} {{ messages[-1].content }} {{ d.c[1] }} {{ d['u'] }} {{ xs.0 }}",
    "{{ xs[::-1] }} {{ xs[1:] }} {{ xs[:1] }} {{ 'héllo'[1:3] }} {{ 'abcdef'[::2] }} {{ 'abc'[-1] }} {{ xs[10:] }} {{ 'abc'[5:] }}",
    "{{ d.missing }}|{{ d.missing is defined }}|{{ xs[99] is defined }}|{{ undefined_var }}|{{ undefined_var is undefined }}",
    "{{ undefined_var.attr }}",
    "{{ d.missing.attr }}",
    "{{ undefined_var + 1 }}",
    "{{ 'a' + 1 }}",
    "{{ none + 'a' }}",
    "{{ 1 / 0 }}",
    "{{ 1 < 'a' }}",
    "{{ undefined_var|length }} {{ undefined_var|default('dflt') }} {{ ''|default('e', true) }} {{ 0|d('z', boolean=true) }} {{ none|default('n') }}",
    # strings methods
    "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\\n\\nA\\n'.lstrip('\\n') }}",
    "{{ 'a,b,,c'.split(',') }} {{ 'a b  c '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '<think>x</think>y'.split('</think>')[-1] }}",
    "{{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.upper() }} {{ 'HeLLo wORLD'.lower() }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}",
    "{{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.count('l') }} {{ '-'.join(['a', 'b']) }} {{ 'héllo'.find('l') }}",
    "{{ '{} and {}'.format('a', 'b') }} {{ '{0}{name}'.format('x', name='y') }} {{ '%s is %d' % ('x', 3) }} {{ 'ab'.center(6, '*') }}",
    "{{ 'straße'.upper() }} {{ 'ÀÉ'.lower() }} {{ ' x '.isspace() }} {{ '123'.isdigit() }}",
    # dict / list methods
    "{{ d.keys() | list }} {{ d.values() | list | length }} {{ d.get('a') }} {{ d.get('zz', 'def') }} {{ d.get('zz') }}",
    "{{ xs.index(1) }} {{ xs.count(3) }}",
    "{{ xs.append(4) }}",
    "{{ d.pop('a') }}",
    "{{ d.update({'x': 1}) }}",
    "{{ ''.__class__ }}",
    "{{ xs.append }}|",
    # filters
    "{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n{{ d | tojson(sort_keys=true) }}\n{{ xs | tojson(separators=(',', ':')) }}\n{{ fl | tojson }}\n{{ 'x' | tojson }}\n{{ none | tojson }}\n{{ {} | tojson(indent=2) }}{{ [] | tojson(indent=2) }}\n{{ [[], {}] | tojson(indent='\\t') }}",
    "{{ 'ctrl\\x01\\x1f\\u2028 \"q\" \\\\ /' | tojson }}",
    "{{ undefined_var | tojson }}",
    "{{ fl }} {{ big }} {{ 1e100 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 2.0 }} {{ -1.5e-7 }}",
    "{{ s | trim }}|{{ 'xxaxx' | trim('x') }}|{{ xs | length }}|{{ 'héllo' | length }}|{{ d | count }}|{{ 'abc' | upper }}|{{ 'ABC' | lower }}|{{ 'hello big-world (x)' | title }}|{{ 'hi THERE' | capitalize }}",
    "{{ d | items | list }} {{ xs | join(', ') }} {{ people | join('/', attribute='name') }} {{ 'abc' | list }} {{ xs | first }} {{ xs | last }} {{ empty | first }}|",
    "{{ 'aXbX' | replace('X', '-') }} {{ 'aXbX' | replace('X', '-', 1) }} {{ xs | string }} {{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 'q' | float }} {{ -3 | abs }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 2.1 | round(method='ceil') }} {{ 2.9 | round(0, 'floor') }} {{ 5 | round }}",
    "{{ '<a href=\"x\">&\\'</a>' | e }} {{ '<b>' | escape }} {{ '<i>' | safe }}",
    "{{ people | selectattr('tag') | map(attribute='name') | list }} {{ people | rejectattr('tag') | map(attribute='name') | list }} {{ people | selectattr('age', 'gt', 25) | map(attribute='name') | join }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }} {{ messages | rejectattr('tool_calls', 'undefined') | list | length }}",
    "{{ xs | select('odd') | list }} {{ xs | reject('odd') | list }} {{ [0, 1, '', 'a', none] | select | list }} {{ xs | map('string') | list }} {{ people | map(attribute='tag', default='-') | list }} {{ names | map('upper') | list }}",
    "{{ names | unique | list }} {{ names | unique(case_sensitive=true) | list }} {{ names | sort }} {{ names | sort(reverse=true, case_sensitive=true) }} {{ people | sort(attribute='age') | map(attribute='name') | list }} {{ xs | reverse | list }} {{ 'abc' | reverse }}",
    "{{ xs | batch(2) | list }} {{ xs | batch(2, 'f') | list }} {{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(width='>', blank=true) }} {{ 'one two, three' | wordcount }} {{ 'ab' | center(6) }}|",
    "{{ xs | min }} {{ xs | max }} {{ xs | sum }} {{ people | sum(attribute='age') }} {{ d | dictsort | list }} {{ people | map(attribute='age') | max }} {{ '%s-%s' | format(1, 2) }} {{ d | attr('a') }}",
    "{{ xs | nosuchfilter }}",
    # tests
    "{{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ true is number }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }} {{ d is mapping }} {{ xs is iterable }} {{ 'x' is iterable }} {{ 1 is iterable }} {{ xs is sequence }} {{ true is boolean }} {{ true is true }} {{ 1 is true }} {{ false is false }}",
    "{{ 1 is equalto 1 }} {{ 2 is eq 2.0 }} {{ 1 is ne 2 }} {{ 1 is lt 2 }} {{ 3 is gt 2 }} {{ 2 is le 2 }} {{ 2 is ge 3 }} {{ 2 is in xs }} {{ 9 is divisibleby 3 }} {{ 3 is odd }} {{ 4 is even }} {{ none is sameas none }} {{ xs is sameas xs }} {{ 1 is not none }} {{ undefined_var is not defined }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 'upper' is filter }} {{ 'odd' is test }}",
    "{{ 1 is nosuchtest }}",
    # globals
    "{{ range(3) | list }} {{ range(1, 10, 3) | list }} {{ range(5, 0, -2) | list }} {{ dict(a=1, b='x') }} {{ namespace(a=1).a }}",
    "{{ raise_exception('custom failure: ' ~ i) }}",
    "{{ strftime_now('%Y-%m-%d %a %b %d %j') }}",
    # syntax errors
    "{% if true %}unclosed",
    "{% for x in xs %}{% endif %}",
    "{{ 1 + }}",
    "{% unknowntag %}",
    "line1\nline2 {{ 'unterminated }}",
    "{{ (1, 2 }}",
    "{% set = 1 %}",
    "{% break %}",
    "ok {# unterminated comment",
    # misc HF-template idioms
    "{%- if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }}",
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] | trim + '\\n' }}{%- elif message.role == 'assistant' %}{{ message.tool_calls[0].function.arguments | tojson }}{%- endif %}{%- endfor %}",
    "{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'default sys' }}|{{ (messages | length) - 1 }}|{{ messages|length - 1 }}|{{ -1|abs }}",
    "{% set content = messages[2].content.split('</think>')[-1].lstrip('\\n') %}{{ content }}|{{ messages[2].tool_calls | length }}|{{ 'tool_calls' in messages[2] }}|{{ messages[1].tool_calls is defined }}",
    "{{ d.c | tojson(indent=4) }}",
    "{%- for m in messages -%}\n    {{- m.role }}\n    {%- if not loop.last %},{% endif %}\n{%- endfor %}",
]

env = make_env()
out = []
for k, src in enumerate(T):
    case = {"id": "f%03d" % k, "template": src}
    try:
        case["expected"] = env.from_string(src).render(**CTX)
    except Exception as ex:
        case["error"] = type(ex).__name__
        case["error_message"] = str(ex)
        ln = getattr(ex, "lineno", None)
        if ln is not None:
            case["error_line"] = ln
    out.append(case)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "core", "chat_template", "data", "features.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump({"generator": "tools/chat_template/gen_feature_cases.py (jinja2 %s)" % __import__("jinja2").__version__,
               "context": CTX, "cases": out}, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(path, len(out), "cases,", sum(1 for c in out if "error" in c), "expected errors")
