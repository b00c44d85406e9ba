"""A definition as people edit it in the web UI's editor — pure: text (JSON or YAML) in and out, the
steps a preview can draw from a draft that may still be wrong, and a line diff between two versions."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

import yaml

FORMATS = ("json", "yaml")


@dataclass(frozen=True)
class Parsed:
    value: Any = None
    problem: str | None = None  # why the text cannot be read at all (the API never saw it)


def parse(text: str, fmt: str) -> Parsed:
    """Read ``text`` as JSON or YAML; a problem names the line and column where reading stopped."""
    if not text.strip():
        return Parsed(problem="the definition is empty: paste or write one")
    if fmt == "yaml":
        try:
            return Parsed(yaml.safe_load(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return Parsed(problem=f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}")
    try:
        return Parsed(json.loads(text))
    except ValueError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
        return Parsed(problem=f"not valid JSON{where}: {getattr(exc, 'msg', exc)}")


def dump(definition: Any, fmt: str) -> str:
    """A definition as text to edit, keys in the order they were written."""
    if fmt == "yaml":
        return yaml.safe_dump(definition, sort_keys=False, allow_unicode=True, width=100)
    return json.dumps(definition, indent=2, ensure_ascii=False)


def drawable_steps(value: Any) -> list[dict]:
    """The steps of a draft that a graph can show (each a mapping with a string id), however wrong
    the rest of it is: the preview follows the text while the API lists the problems."""
    steps = value.get("steps") if isinstance(value, dict) else None
    if not isinstance(steps, list):
        return []
    result, seen = [], set()
    for step in steps:
        if isinstance(step, dict) and isinstance(step.get("id"), str) and step["id"] not in seen:
            seen.add(step["id"])
            needs = step.get("needs") if isinstance(step.get("needs"), list) else []
            result.append({"id": step["id"], "type": str(step.get("type", "?")),
                           "needs": [n for n in needs if isinstance(n, str)]})
    return result


@dataclass(frozen=True)
class Line:
    kind: str  # "same", "added", "removed" or "hunk" (an @@ header)
    text: str


def diff(old: Any, new: Any, *, old_name: str, new_name: str) -> list[Line]:
    """A unified line diff of two definitions as indented JSON (keys sorted, so only changes show)."""
    def lines(value: Any) -> list[str]:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    result = []
    for text in difflib.unified_diff(lines(old), lines(new), old_name, new_name, lineterm="", n=3):
        if text.startswith(("---", "+++")):
            continue
        kind = {"@": "hunk", "+": "added", "-": "removed"}.get(text[:1], "same")
        result.append(Line(kind, text))
    return result
