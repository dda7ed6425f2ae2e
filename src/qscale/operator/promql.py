"""A check of a policy's PromQL templates: every series it reads is scoped to the policy's own
namespace, by construction (pure: a small lexer, no Prometheus).

A template is the text an AutoscalePolicy's author writes, so it is untrusted: the operator
fills it with names and runs it with its own credentials against a shared Prometheus. A check
that the placeholders merely occur (a substring test) passes ``# $namespace $deployment`` in a
comment, or a ``{namespace=~"$namespace|kube-system"}``. The rule enforced here is structural:

* every vector selector (``metric{...}`` or ``{...}``) carries the matcher
  ``namespace=~"$namespace"`` exactly, so whatever the operator fills in, the query reads only
  series of the namespaces it put there (the policy's own);
* ``$namespace`` and ``$deployment`` occur only as label-matcher values with ``=~`` (they are
  filled with a regex alternation), and ``$deployment`` occurs at least once;
* no comments, and nothing the lexer does not know (a template that PromQL would read
  differently from this check is refused rather than guessed at).

Functions, aggregations, binary operators, strings as function arguments (``label_replace``),
range and subquery brackets, ``offset`` and ``@`` are all allowed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["TemplateError", "check_template", "peak_points"]

NAMESPACE = "$namespace"
DEPLOYMENT = "$deployment"

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(?:[a-zA-Z][0-9a-zA-Z]*)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<matchop>=~|!~|!=|==|=)
  | (?P<op><=|>=|[-+*/%^<>@,:])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)


class TemplateError(ValueError):
    """A template that may read beyond its namespace, or that cannot be checked; one line."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    start: int = 0
    end: int = 0


def _tokens(query: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if m is None:
            raise TemplateError(f"unexpected {query[pos]!r} at character {pos + 1}")
        kind = m.lastgroup or ""
        if kind == "comment":
            raise TemplateError("comments are not allowed")
        if kind != "ws":
            out.append(_Tok(kind, m.group(), m.start(), m.end()))
        pos = m.end()
    return out


MAX_PEAK_POINTS = 64
"""The most points per series :func:`peak_points` lets a reply carry (a tenant's template must
not turn one value per Deployment into thousands)."""

_DURATION = re.compile(r"(?:(\d+)(ms|s|m|h|d|w|y))")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(text: str) -> float | None:
    """A PromQL duration (``30m``, ``1h30m``, ``500ms``) in seconds; ``None`` if it is not one."""
    parts = _DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        return None
    return sum(int(a) * _UNIT_S[b] for a, b in parts)


@functools.lru_cache(maxsize=256)
def peak_points(query: str) -> str | None:
    """The series behind a peak: for a template that is one ``max_over_time(X)`` call whose
    argument ends in a subquery ``[range:step]`` of at most :data:`MAX_PEAK_POINTS` points (as
    the default ``cpu_peak``, ``[30m:1m]``, is), ``X``, whose points the operator reads and
    takes the highest of itself (the same value Prometheus' ``max_over_time`` gives); ``None``
    for any other form (read as the peak alone). ``X`` is a part of the template, so it reads
    nothing the template does not; remembered as :func:`check_template` is (asked every tick)."""
    try:
        spans = _tokens(query)
    except TemplateError:
        return None
    if len(spans) < 4 or spans[0].text != "max_over_time" or spans[1].text != "(":
        return None
    if spans[-1].text != ")" or spans[-2].text != "]":
        return None
    opening = max((k for k, s in enumerate(spans) if s.text == "["), default=None)
    if opening is None:
        return None
    inside = query[spans[opening].end : spans[-2].start].replace(" ", "")
    span, _, step = inside.partition(":")
    span_s, step_s = _seconds(span), _seconds(step)
    if span_s is None or not step_s or span_s / step_s > MAX_PEAK_POINTS:
        return None  # raw samples (no step), the default step, or too many points
    depth = 0
    for k, s in enumerate(spans[1:], 1):
        depth += (s.kind == "open") - (s.kind == "close")
        if depth <= 0 and k != len(spans) - 1:
            return None  # the call closes before the end: max_over_time(a) + b
    return query[spans[1].end : spans[-1].start].strip() if depth == 0 else None


def _unquote(s: str) -> str:
    return s[1:-1]


def _matchers(toks: list[_Tok], i: int) -> tuple[list[tuple[str, str, str]], int]:
    """The ``{name op "value", ...}`` block opening at ``toks[i]``; returns it and the index
    after its ``}``."""
    out = []
    i += 1
    while True:
        if i >= len(toks):
            raise TemplateError("unclosed '{'")
        if toks[i].text == "}":
            return out, i + 1
        if not (
            i + 2 < len(toks)
            and toks[i].kind in ("ident", "string")
            and toks[i + 1].kind == "matchop"
            and toks[i + 2].kind == "string"
        ):
            raise TemplateError('a label matcher must read name op "value"')
        name = toks[i].text if toks[i].kind == "ident" else _unquote(toks[i].text)
        out.append((name, toks[i + 1].text, _unquote(toks[i + 2].text)))
        i += 3
        if i < len(toks) and toks[i].text == ",":
            i += 1


def _check_selector(matchers: list[tuple[str, str, str]]) -> int:
    """One selector's matchers; returns how many ``$deployment`` placeholders it holds."""
    scoped = False
    deployments = 0
    for name, op, value in matchers:
        if name == "namespace" and op == "=~" and value == NAMESPACE:
            scoped = True
            continue
        if NAMESPACE in value:
            raise TemplateError(f'$namespace may only appear as namespace=~"{NAMESPACE}"')
        if DEPLOYMENT in value:
            if op != "=~":
                raise TemplateError("$deployment must sit in a regex matcher (=~)")
            deployments += value.count(DEPLOYMENT)
    if not scoped:
        raise TemplateError(f'every selector needs the matcher namespace=~"{NAMESPACE}"')
    return deployments


def _balanced(toks: list[_Tok]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for t in toks:
        if t.kind == "open":
            stack.append(t.text)
        elif t.kind == "close" and (not stack or stack.pop() != pairs[t.text]):
            raise TemplateError(f"unbalanced {t.text!r}")
    if stack:
        raise TemplateError(f"unclosed {stack[-1]!r}")


@functools.lru_cache(maxsize=256)
def check_template(query: str) -> None:
    """Raise :class:`TemplateError` unless every series ``query`` reads is scoped to
    ``$namespace`` (see the module docstring). Templates that pass are remembered (most
    policies share the default ones; a check is about 0.2 ms): at most 256 of at most 8 KiB
    (``spec.MAX_QUERY_CHARS``); a failure is never cached."""
    toks = _tokens(query)
    _balanced(toks)
    deployments = 0
    selectors = 0
    i = 0
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.kind == "string" and (NAMESPACE in t.text or DEPLOYMENT in t.text):
            raise TemplateError("placeholders may only appear inside label matchers")
        if t.text == "[":  # a range or subquery: durations only
            close = next((j for j in range(i + 1, len(toks)) if toks[j].text == "]"), None)
            if close is None or any(
                x.kind not in ("number", "op", "ident") for x in toks[i + 1 : close]
            ):
                raise TemplateError("a range must read [duration] or [duration:step]")
            i = close + 1
            continue
        if t.kind == "ident" and t.text.lower() in _LABEL_LISTS and nxt and nxt.text == "(":
            close = next((j for j in range(i + 2, len(toks)) if toks[j].text == ")"), None)
            if close is None:
                raise TemplateError("unclosed label list")
            i = close + 1
            continue
        if t.kind == "ident" and nxt is not None and nxt.text == "(":
            i += 1  # a function or an aggregation
            continue
        if (
            t.kind == "ident"
            and nxt is not None
            and nxt.kind == "ident"
            and nxt.text.lower() in ("by", "without")
        ):
            i += 1  # an aggregation with its grouping first: sum by (a) (...)
            continue
        if t.kind == "ident" and t.text.lower() in _KEYWORDS:
            i += 1
            continue
        if t.kind == "ident" or t.text == "{":
            j = i + 1 if t.kind == "ident" else i
            if j >= len(toks) or toks[j].text != "{":
                raise TemplateError(
                    f'the selector {t.text} needs the matcher namespace=~"{NAMESPACE}"'
                )
            matchers, i = _matchers(toks, j)
            deployments += _check_selector(matchers)
            selectors += 1
            continue
        i += 1
    if selectors == 0:
        raise TemplateError("the query reads no series")
    if deployments == 0:
        raise TemplateError("$deployment must appear in a label matcher (=~)")
