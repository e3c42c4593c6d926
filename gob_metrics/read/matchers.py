"""Prometheus label matchers (``=``, ``!=``, ``=~``, ``!~``) with Prometheus 2.42's
semantics, validated before any SQL is built.

Regexes are Go RE2 (Prometheus 2.42 is built with Go 1.19). ClickHouse's ``match()`` is
C++ RE2 with one deliberate difference, and C++ RE2 accepts two constructs Go refuses;
each is handled here and nowhere else:

* ClickHouse compiles with ``dot_nl`` on, so ``.`` matches ``\\n`` there but not in Go:
  the pattern sent to ClickHouse starts with ``(?-s)``, which turns it off for the whole
  pattern (a ``(?s)`` inside the user's regex still turns it back on, as in Go).
* ``\\C`` (any byte) and ``(?<name>...)`` named groups are C++-RE2-only: refused with 400,
  as Prometheus refuses them.

The same regex is compiled here with google-re2 (the C++ library ClickHouse embeds) to
reject invalid patterns with a 400 naming them, and to know whether it matches "".
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

from gob_metrics.errors import BadRequest

METRIC_NAME = "__name__"


class MatchType(enum.Enum):
    EQ = "="
    NEQ = "!="
    RE = "=~"
    NRE = "!~"


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def anchored(regex: str) -> str:
    """The pattern ClickHouse runs for a Prometheus regex matcher.

    Prometheus: "Regex matches are fully anchored. A match of env=~"foo" is treated as
    env=~"^foo$"." (FastRegexMatcher compiles "^(?:" + v + ")$"); ``(?-s)`` gives Go's
    `.` on ClickHouse (see the module docstring)."""
    return "(?-s)^(?:" + regex + ")$"


def _go_incompatibility(regex: str) -> str | None:
    """Name a construct C++ RE2 accepts but Go 1.19's regexp refuses, if ``regex`` has one."""
    i, n = 0, len(regex)
    in_class = False
    while i < n:
        c = regex[i]
        if c == "\\" and i + 1 < n:
            nxt = regex[i + 1]
            if nxt == "Q":  # \Q...\E is literal text
                end = regex.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                continue
            if nxt == "C":
                return "\\C (match any byte) is not supported"
            i += 2
            continue
        if in_class:
            if c == "[" and regex.startswith("[:", i):
                end = regex.find(":]", i + 2)
                i = n if end < 0 else end + 2
                continue
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            i += 1
            if regex.startswith("^", i):
                i += 1
            if regex.startswith("]", i):  # a leading ] is literal
                i += 1
            continue
        elif c == "(" and regex.startswith("(?<", i) and not regex.startswith(("(?<=", "(?<!"), i):
            return "named groups must be written (?P<name>...)"
        i += 1
    return None


@functools.lru_cache(maxsize=4096)
def _compile(regex: str) -> Any:
    problem = _go_incompatibility(regex)
    if problem is not None:
        raise ValueError(problem)
    try:
        return re2.compile(anchored(regex), _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(str(detail)) from None


@dataclass(frozen=True)
class Matcher:
    """One label matcher; build it with :func:`new_matcher` so regexes are validated."""

    type: MatchType
    name: str
    value: str
    _regex: Any = field(default=None, compare=False, repr=False, hash=False)

    @property
    def pattern(self) -> str:
        """The value as ClickHouse must see it: regexes anchored and translated."""
        return anchored(self.value) if self.type in (MatchType.RE, MatchType.NRE) else self.value

    def matches(self, value: str) -> bool:
        """Whether a label value matches; an absent label is the value ""."""
        if self.type is MatchType.EQ:
            return value == self.value
        if self.type is MatchType.NEQ:
            return value != self.value
        found = self._regex.search(value) is not None
        return found if self.type is MatchType.RE else not found

    def matches_empty(self) -> bool:
        return self.matches("")

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.type.value}"{escaped}"'


def new_matcher(mtype: MatchType, name: str, value: str) -> Matcher:
    """Build a matcher; raise BadRequest (400) naming an invalid regex."""
    if mtype in (MatchType.RE, MatchType.NRE):
        try:
            regex = _compile(value)
        except ValueError as exc:
            raise BadRequest(
                f"invalid regular expression {value!r} in matcher {name}{mtype.value}: {exc}"
            ) from None
        return Matcher(mtype, name, value, regex)
    return Matcher(mtype, name, value)


def format_selector(matchers: Iterable[Matcher]) -> str:
    return "{" + ", ".join(str(m) for m in matchers) + "}"


def check_selector(matchers: Sequence[Matcher]) -> None:
    """Refuse a selector that would select every series.

    Prometheus: "Vector selectors must either specify a name or at least one label matcher
    that does not match the empty string" (a matcher that matches "" also selects every
    series without that label)."""
    if not matchers:
        raise BadRequest("a selector needs at least one matcher")
    if all(m.matches_empty() for m in matchers):
        raise BadRequest(
            f"selector {format_selector(matchers)} must contain at least one matcher that "
            "does not match the empty string"
        )
