"""Read query templates and variant arguments, and expand them into concrete test cases.

Templates use the compliance suite's format (``test_cases:`` with ``query``,
``variant_args``, ``should_fail``, ``skip_comparison``); placeholders are written
``{{.name}}``. Expansion rule (prometheus/compliance ``promql/testcases/expand.go``):
every combination of the listed arguments' values, the first listed argument varying
slowest. A placeholder without a listed argument, or a listed argument without values,
is an error here (the Go tool would print ``<no value>`` or panic).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class CaseFileError(ValueError):
    """A template or variant-argument file is malformed."""


@dataclass(frozen=True)
class Template:
    """One entry of a templates file."""

    index: int
    query: str
    variant_args: tuple[str, ...] = ()
    should_fail: bool = False
    skip_comparison: bool = False
    source: str = ""


@dataclass(frozen=True)
class Case:
    """One concrete query to run against both systems."""

    template_index: int
    template: str
    query: str
    should_fail: bool
    skip_comparison: bool
    source: str = ""

    def as_json(self) -> dict[str, Any]:
        """The fields of expanded-test-cases.json."""
        return {"template_index": self.template_index, "template": self.template,
                "query": self.query, "should_fail": self.should_fail,
                "skip_comparison": self.skip_comparison}


def load_templates(path: Path) -> list[Template]:
    """Parse a templates file (``test_cases:`` list); raise naming the entry that is wrong."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CaseFileError(f"{path}: {exc}") from exc
    entries = doc.get("test_cases") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise CaseFileError(f"{path}: expected a mapping with a 'test_cases:' list")
    known = {"query", "variant_args", "should_fail", "skip_comparison"}
    out = []
    for i, entry in enumerate(entries):
        where = f"{path}: test_cases[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("query"), str):
            raise CaseFileError(f"{where}: needs a string 'query'")
        unknown = set(entry) - known
        if unknown:
            raise CaseFileError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        args = entry.get("variant_args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise CaseFileError(f"{where}: 'variant_args' must be a list of names")
        for key in ("should_fail", "skip_comparison"):
            if not isinstance(entry.get(key, False), bool):
                raise CaseFileError(f"{where}: '{key}' must be true or false")
        out.append(Template(i, entry["query"], tuple(args), entry.get("should_fail", False),
                            entry.get("skip_comparison", False), str(path)))
    return out


def load_variant_args(path: Path) -> dict[str, list[str]]:
    """Parse a variant-arguments file: ``name: [value, ...]``, values as strings."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CaseFileError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CaseFileError(f"{path}: expected a mapping of name -> list of values")
    out = {}
    for name, values in doc.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            # Quoting matters: YAML would turn 0.90 into 0.9 and the query text would change.
            raise CaseFileError(f"{path}: '{name}' must be a list of quoted strings")
        out[str(name)] = values
    return out


def render(template: str, args: dict[str, str]) -> str:
    """Replace every ``{{.name}}`` with ``args[name]``."""
    if "{{" in _PLACEHOLDER.sub("", template):
        raise CaseFileError(f"unsupported template syntax in {template!r}: only {{{{.name}}}}")

    def value(m: re.Match[str]) -> str:
        if m.group(1) not in args:
            raise CaseFileError(f"placeholder {m.group(0)} in {template!r} is not listed "
                                f"in its variant_args")
        return args[m.group(1)]

    return _PLACEHOLDER.sub(value, template)


def expand(templates: list[Template], variant_args: dict[str, list[str]]) -> list[Case]:
    """Every concrete query of every template, in file order."""
    cases = []
    for t in templates:
        names = list(dict.fromkeys(t.variant_args))  # a repeated name varies once
        for name in names:
            if not variant_args.get(name):
                raise CaseFileError(f"{t.source}: test_cases[{t.index}] uses variant arg "
                                    f"{name!r}, which the variant-args file does not define")
        # itertools.product varies the last name fastest: the first listed is the outer loop.
        for combo in itertools.product(*(variant_args[n] for n in names)):
            query = render(t.query, dict(zip(names, combo, strict=True)))
            cases.append(Case(t.index, t.query, query, t.should_fail, t.skip_comparison,
                              t.source))
    return cases


def load_cases(template_paths: list[Path], variant_args_path: Path) -> list[Case]:
    """Expand every templates file with one variant-arguments file."""
    args = load_variant_args(variant_args_path)
    cases: list[Case] = []
    for path in template_paths:
        cases.extend(expand(load_templates(path), args))
    return cases
