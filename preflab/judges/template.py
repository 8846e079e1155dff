"""The question an LM or chat judge is asked: a template with ``{prompt}``, ``{a}``, ``{b}``.

The template is ``str.format`` text. It must name ``{prompt}``, ``{a}`` and ``{b}`` (the
two completions, in the order they are shown) and may name ``{label_a}`` and
``{label_b}``, the two answers the judge chooses between ("A" and "B" unless
``--judge-answers`` says otherwise). Literal braces are written ``{{`` and ``}}``. The texts
are passed as format arguments, so braces inside a prompt or a completion need no escaping.
"""

from __future__ import annotations

import string
from pathlib import Path

from preflab.errors import ConfigError

DEFAULT_TEMPLATE = """Which response answers the prompt better?

Prompt:
{prompt}

Response {label_a}:
{a}

Response {label_b}:
{b}

Reply with one letter, {label_a} or {label_b}. The better response is"""

DEFAULT_ANSWERS = ("A", "B")
REQUIRED = ("prompt", "a", "b")
ALLOWED = (*REQUIRED, "label_a", "label_b")


def check_template(template: str, *, source: str | None = None) -> str:
    """``template`` if it is a valid judge template; else a ConfigError naming ``source``
    (the template file) and the placeholder at fault."""
    where = {"path": source} if source else {"field": "judge_template"}
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:  # a single "{" or "}"
        raise ConfigError(f"the judge template is not valid format text: {exc}",
                          expected="placeholders such as {prompt}; a literal brace as {{ or }}",
                          **where) from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in ALLOWED or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (
                f":{spec}" if spec else "") + "}"
            raise ConfigError(f"the judge template has the placeholder {shown}",
                              expected=f"only {', '.join('{' + n + '}' for n in ALLOWED)}; "
                                       "a literal brace as {{ or }}", **where)
        names.append(name)
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise ConfigError(f"the judge template does not show {{{missing[0]}}}",
                          expected="a template that names {prompt}, {a} and {b}", **where)
    return template


def read_template(path: str) -> str:
    """A template file's text, checked."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such template file", path=path, field="judge_template") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"cannot read the template file: {reason}", path=path,
                          field="judge_template", expected="a UTF-8 text file") from None
    return check_template(text, source=path)


def parse_answers(text: str | tuple[str, str] | list[str]) -> tuple[str, str]:
    """``"A,B"`` -> ``("A", "B")``: two distinct, non-empty answers without spaces."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1] or any(
            ch.isspace() for p in parts for ch in p):
        raise ConfigError(f"--judge-answers {','.join(map(str, parts))[:60]!r} is not two answers",
                          field="judge_answers",
                          expected="two distinct words without spaces, e.g. A,B")
    return parts[0], parts[1]


def render(template: str, prompt: str, first: str, second: str,
           answers: tuple[str, str]) -> str:
    return template.format(prompt=prompt, a=first, b=second, label_a=answers[0],
                           label_b=answers[1])
