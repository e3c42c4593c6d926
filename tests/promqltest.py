"""Prometheus' data-driven PromQL test format (promql/promqltest), parsed and run over HTTP.

A file holds commands::

    load 10s
      metric{job="a"} 0+10x5 _ stale 7

    eval instant at 50s rate(metric[1m])
      {job="a"} 1

    eval range from 0 to 1m step 30s metric
      metric{job="a"} 0 30 _

    eval_fail instant at 0 label_join(metric, "~bad", "-", "job")
      expected_fail_message invalid destination label name

``load`` values: numbers, ``Inf``/``NaN``, ``_`` (no sample), ``stale`` (a staleness
marker), ``a+bxN``/``a-bxN`` (N+1 values from a, stepping by b), ``axN`` (a+0xN) and
``_xN`` (N gaps).
``eval_ordered`` also checks the order of an instant vector. Expected values match when
both are NaN, or equal within a relative 1e-6 (Prometheus' test tolerance).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import promql_parser

from tests.writes import STALE_NAN

Labels = tuple[tuple[str, str], ...]
_DUR = re.compile(r"^(\d+(?:ms|s|m|h|d|w|y))+$|^\d+$")
_EXPAND = re.compile(r"^([-+]?[^-+x]+?)([-+])([^x]+)x(\d+)$")


def duration_ms(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text) * 1000
    return int(promql_parser.parse_duration(text).total_seconds() * 1000)


def _number(text: str) -> float:
    return float(text.replace("Inf", "inf").replace("NaN", "nan"))


def expand_values(tokens: list[str]) -> list[float | None]:
    """Series values in the test notation; None is "no sample"."""
    out: list[float | None] = []
    for tok in tokens:
        if tok == "_":
            out.append(None)
        elif tok == "stale":
            out.append(STALE_NAN)
        elif tok.startswith("_x"):
            out.extend([None] * int(tok[2:]))
        elif (m := _EXPAND.match(tok)) is not None:
            start, sign, step, n = m.groups()
            a, b = _number(start), _number(step) * (1 if sign == "+" else -1)
            out.extend(a + b * i for i in range(int(n) + 1))
        elif (m := re.fullmatch(r"([^x]+)x(\d+)", tok)) is not None:  # axN: a+0xN
            out.extend([_number(m.group(1))] * (int(m.group(2)) + 1))
        else:
            out.append(_number(tok))
    return out


def split_series(line: str) -> tuple[Labels, list[str]]:
    """``metric{a="b"} v1 v2`` -> (sorted labels, value tokens)."""
    line = line.strip()
    end, quote = 0, False
    if "{" in line.split(" ", 1)[0] or line.startswith("{"):
        i = line.index("{")
        while i < len(line):
            c = line[i]
            if c == "\\" and quote:
                i += 2
                continue
            if c == '"':
                quote = not quote
            elif c == "}" and not quote:
                break
            i += 1
        end = i + 1
    else:
        end = len(line.split(" ", 1)[0])
    selector, rest = line[:end], line[end:].split()
    return parse_labels(selector), rest


def parse_labels(selector: str) -> Labels:
    if selector.strip() == "{}":
        return ()
    expr = promql_parser.parse(selector)
    labels = {m.name: m.value for m in expr.matchers.matchers}
    if expr.name is not None:
        labels["__name__"] = expr.name
    return tuple(sorted(labels.items()))


@dataclass
class Load:
    interval_ms: int
    series: list[tuple[Labels, list[float | None]]]


@dataclass
class Eval:
    line: int
    query: str
    start_ms: int
    end_ms: int = 0
    step_ms: int = 0  # 0: instant
    fail: bool = False
    ordered: bool = False
    fail_message: str = ""
    expected: list[tuple[Labels | None, list[float | None]]] = field(default_factory=list)

    @property
    def instant(self) -> bool:
        return self.step_ms == 0


_EVAL = re.compile(r"^(eval|eval_fail|eval_ordered)\s+instant\s+at\s+(\S+)\s+(.+)$")
_EVAL_RANGE = re.compile(
    r"^(eval|eval_fail)\s+range\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+)\s+(.+)$")


def parse(text: str) -> list[Load | Eval]:
    commands: list[Load | Eval] = []
    cur: Load | Eval | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            cur = None
            continue
        if not raw[0].isspace():
            if line.startswith("load "):
                cur = Load(duration_ms(line.split()[1]), [])
            elif (m := _EVAL.match(line)) is not None:
                cur = Eval(no, m.group(3), duration_ms(m.group(2)), fail=m.group(1) == "eval_fail",
                           ordered=m.group(1) == "eval_ordered")
            elif (m := _EVAL_RANGE.match(line)) is not None:
                cur = Eval(no, m.group(5), duration_ms(m.group(2)), duration_ms(m.group(3)),
                           duration_ms(m.group(4)), fail=m.group(1) == "eval_fail")
            else:
                raise ValueError(f"line {no}: unknown command {line!r}")
            commands.append(cur)
            continue
        if cur is None:
            raise ValueError(f"line {no}: indented line outside a command")
        body = line.strip()
        if isinstance(cur, Load):
            labels, tokens = split_series(body)
            cur.series.append((labels, expand_values(tokens)))
        elif body.startswith("expected_fail_message "):
            cur.fail_message = body.split(" ", 1)[1]
        elif re.fullmatch(r"[-+]?(\d|\.\d|Inf|NaN)\S*", body):  # a scalar result
            cur.expected.append((None, [_number(body)]))
        else:
            labels, tokens = split_series(body)
            cur.expected.append((labels, expand_values(tokens)))
    return commands


def samples_of(load: Load) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    return [(dict(labels), [(i * load.interval_ms, v) for i, v in enumerate(values)
                            if v is not None])
            for labels, values in load.series]


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _fmt(labels: Labels | None) -> str:
    if labels is None:
        return "scalar"
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"


def check(ev: Eval, status: int, body: dict[str, Any]) -> str | None:
    """None if the answer is what ``ev`` expects, else a description of the difference."""
    if ev.fail:
        if body.get("status") != "error":
            return f"expected an error, got {status} {str(body)[:300]}"
        if ev.fail_message and ev.fail_message not in body.get("error", ""):
            return f"error {body.get('error')!r} does not contain {ev.fail_message!r}"
        return None
    if body.get("status") != "success":
        return f"unexpected error {status}: {body.get('errorType')}: {body.get('error')}"
    data = body["data"]
    kind, result = data["resultType"], data["result"]
    got: list[tuple[Labels | None, list[float | None]]] = []
    if kind == "scalar":
        got.append((None, [float(result[1])]))
    elif kind == "vector":
        got = [(tuple(sorted(r["metric"].items())), [float(r["value"][1])]) for r in result]
    elif kind == "matrix":
        steps = list(range(ev.start_ms, ev.end_ms + 1, ev.step_ms)) if ev.step_ms else []
        for r in result:
            by_t = {round(float(t) * 1000): float(v) for t, v in r["values"]}
            if ev.instant:
                got.append((tuple(sorted(r["metric"].items())), list(by_t.values())))
            else:
                got.append((tuple(sorted(r["metric"].items())), [by_t.get(t) for t in steps]))
    else:
        return f"unexpected result type {kind}"
    if not ev.instant:
        expected = [(lab, vals + [None] * (len(range(ev.start_ms, ev.end_ms + 1, ev.step_ms))
                                           - len(vals))) for lab, vals in ev.expected]
    else:
        expected = ev.expected
    if ev.ordered and [lab for lab, _ in got] != [lab for lab, _ in expected]:
        return f"order: got {[_fmt(lab) for lab, _ in got]}, expected " \
                   f"{[_fmt(lab) for lab, _ in expected]}"
    want = {lab: vals for lab, vals in expected}
    have = {lab: vals for lab, vals in got}
    if set(want) != set(have):
        return (f"series differ: missing {[_fmt(x) for x in set(want) - set(have)]}, "
                f"unexpected {[_fmt(x) for x in set(have) - set(want)]}")
    for lab, vals in want.items():
        other = have[lab]
        if len(vals) != len(other) or not all(
                (a is None and b is None) or (a is not None and b is not None and _close(a, b))
                for a, b in zip(vals, other, strict=True)):
            return f"{_fmt(lab)}: expected {vals}, got {other}"
    return None


def params_of(ev: Eval) -> tuple[str, dict[str, str]]:
    if ev.instant:
        return "/api/v1/query", {"query": ev.query, "time": str(ev.start_ms / 1000)}
    return "/api/v1/query_range", {"query": ev.query, "start": str(ev.start_ms / 1000),
                                   "end": str(ev.end_ms / 1000),
                                   "step": str(ev.step_ms / 1000)}
