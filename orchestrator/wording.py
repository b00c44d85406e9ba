"""Validation errors in the contract's words — pure.

pydantic says "Extra inputs are not permitted" or "Input should be a valid integer"; a client of the API
should read what is wrong and what to do: "unknown field 'inputs'; did you mean 'input'?", "'workflow_id'
is required". Every pydantic error that reaches a client goes through ``problems`` here: the API's body
parsing (api/context.py) and the definition gate (orchestrator/definitions.py).

A pydantic location holds, beside field names and list indexes, the tags of the unions it went through
(a step's ``type``, ``str`` or ``ScriptedTurn`` for a scripted reply); ``problems`` walks the model to
tell them apart, so a path names only what the client wrote (``steps.0.colour``, not
``steps.0.tool.colour``).
"""

from __future__ import annotations

import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One problem: the path of the field it is about ("" for the body itself), and the sentence that
    says it, naming the path and what to do."""

    field: str
    message: str
    unknown: bool = False  # the field is not one the model has


def problems(exc: ValidationError, model: Any) -> list[Problem]:
    """The plain problems of ``exc``, raised validating against ``model`` (a pydantic model class or an
    annotation), in pydantic's order, each once."""
    found: list[Problem] = []
    unions: dict[str, list[tuple[_Where, dict]]] = {}
    for err in exc.errors(include_url=False):
        where = _walk(model, err["loc"])
        if where.union is not None:
            unions.setdefault(where.union, []).append((where, err))
        else:
            found.append(_problem(where, err))
    for path, members in unions.items():
        found += _union_problems(path, members)
    return list(dict.fromkeys(found))


def joined(found: list[Problem]) -> str:
    """The problems as one sentence list, for an error's message."""
    return "; ".join(p.message for p in found)


# --- where an error is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    path: str                   # what the client wrote: "steps.0.retry.max_attempts"
    parent: Any                 # the annotation holding the last part (for an unknown field's neighbours)
    union: str | None = None    # the path of the plain union (not discriminated) it went through
    member: str | None = None   # that union's member the error is about
    depth: int = 0              # parts past the union's member (0: the value itself did not fit it)
    tags: tuple[str, ...] = ()  # where the path ends at a discriminated union: its members' tags


def _walk(model: Any, loc: tuple) -> _Where:
    """Follow ``loc`` through the model's annotations: union tags are left out of the path."""
    parts: list[str] = []
    current, parent = model, None
    union = member = None
    depth = 0
    for part in loc:
        current = _unwrapped(current)
        members = _union_members(current)
        if len(members) > 1 and isinstance(part, str):
            chosen = _member_tagged(members, part)
            if not _discriminated(members):
                union, member, depth = ".".join(parts), part, 0
            current = chosen
            continue
        parts.append(str(part))
        depth += 1
        parent, current = current, _child(current, part)
    members = _union_members(_unwrapped(current))
    tags = tuple(_type_tag(m) for m in members) if len(members) > 1 and _discriminated(members) else ()
    return _Where(".".join(parts), parent, union, member, depth if union is not None else 0, tags)


def _unwrapped(annotation: Any) -> Any:
    """The annotation without Annotated[...] and without None in X | None."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    members = _union_members(annotation)
    if len(members) == 1 and members[0] is not annotation:
        return _unwrapped(members[0])
    return annotation


def _union_members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [_strip(a) for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _type_tag(member: Any) -> str | None:
    """A model's discriminator value (its ``type: Literal[...]``), if it has one."""
    field = member.model_fields.get("type") if _is_model(member) else None
    values = typing.get_args(field.annotation) if field is not None else ()
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _discriminated(members: list[Any]) -> bool:
    return all(_type_tag(m) is not None for m in members)


def _member_tagged(members: list[Any], tag: str) -> Any:
    for member in members:
        if _type_tag(member) == tag or getattr(member, "__name__", None) == tag:
            return member
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _child(annotation: Any, part: Any) -> Any:
    """The annotation of ``part`` inside ``annotation``; None where it cannot be told (Any, a JSON value)."""
    if _is_model(annotation):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset) and args and isinstance(part, int):
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


# --- what to say ---------------------------------------------------------------------------------

# pydantic's error type -> what the value must be ("'version' must be an integer").
_MUST_BE = {
    "string_type": "a string", "string_unicode": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "finite_number": "a finite number", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
    "mapping_type": "an object", "list_type": "a list", "tuple_type": "a list", "set_type": "a list",
    "frozen_set_type": "a list", "none_required": "null", "datetime_type": "an RFC 3339 time (2024-05-01T12:00:00Z)",
    "datetime_parsing": "an RFC 3339 time (2024-05-01T12:00:00Z)",
    "datetime_from_date_parsing": "an RFC 3339 time (2024-05-01T12:00:00Z)",
    "timezone_aware": "an RFC 3339 time with its offset (Z or +01:00)", "date_type": "a date (2024-05-01)",
    "date_parsing": "a date (2024-05-01)", "json_type": "valid JSON", "json_invalid": "valid JSON",
}

_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most"),
           "multiple_of": ("multiple_of", "a multiple of")}


def _problem(where: _Where, err: dict) -> Problem:
    kind, ctx, path = err["type"], err.get("ctx") or {}, where.path
    named = f"'{path}'" if path else "the body"
    if kind == "missing":
        return Problem(path, f"{named} is required")
    if kind == "extra_forbidden":
        return Problem(path, _unknown_field(where), unknown=True)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = ctx.get("discriminator", "'type'").strip("'")
        at = f"'{path}.{field}'" if path else f"'{field}'"
        expected = ctx.get("expected_tags") or ", ".join(f"'{t}'" for t in where.tags)
        if kind == "union_tag_not_found":
            return Problem(f"{path}.{field}".strip("."), f"{at} is required: one of {expected}")
        # "steps.0" -> "step type": the list's name, singular, says what the tag is the type of.
        noun = " ".join(filter(None, [next((p for p in reversed(path.split(".")) if not p.isdigit()), "")
                                      .removesuffix("s"), field]))
        return Problem(f"{path}.{field}".strip("."), f"{at}: unknown {noun} {ctx.get('tag')!r}; use one of {expected}")
    if kind in ("value_error", "assertion_error"):
        said = str(ctx.get("error", "")) or "the value is not valid"
        return Problem(path, f"{path}: {said}" if path else said)
    return Problem(path, f"{named} must be {_must_be(kind, ctx)}{_got(kind, err)}")


def _must_be(kind: str, ctx: dict) -> str:
    """What a value must be, after pydantic error type ``kind`` (with its ``ctx``)."""
    if kind in _MUST_BE:
        return _MUST_BE[kind]
    if kind in ("literal_error", "enum"):
        return f"one of {str(ctx.get('expected')).replace(' or ', ', ')}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = ctx.get(key)
        return f"{words} {bound:g}" if isinstance(bound, float) else f"{words} {bound}"
    if kind == "string_too_short":
        low = ctx.get("min_length", 1)
        return "a non-empty string" if low == 1 else f"a string of at least {low} characters"
    if kind == "string_too_long":
        return f"a string of at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        low = ctx.get("min_length", 1)
        return f"a list of at least {low} item{'s' * (low != 1)}"
    if kind == "too_long":
        return f"a list of at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        return f"a string matching {ctx.get('pattern')}"
    log.info("a validation error of type %s has no plain wording yet", kind)
    return "a value of another kind (see the API reference, GET /api/v1/openapi.json)"


def _got(kind: str, err: dict) -> str:
    """", got …" for a value of the wrong kind, so the client sees what it sent (cut short)."""
    if kind in ("missing", "string_too_long", "too_long", "too_short") or "input" not in err:
        return ""
    shown = json.dumps(err["input"], default=str)
    return f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"


def _unknown_field(where: _Where) -> str:
    """"unknown field 'inputs'; did you mean 'input'?", or the fields there are."""
    parent, _, name = where.path.rpartition(".")
    # A discriminator (a step's `type`) is not a field to suggest: it picked these fields.
    fields = ([f for f in where.parent.model_fields if f != "type" or _type_tag(where.parent) is None]
              if _is_model(where.parent) else [])
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if close:
        return f"unknown field '{where.path}'; did you mean '{(parent + '.' if parent else '') + close[0]}'?"
    if fields:
        return f"unknown field '{where.path}'; remove it (the fields here are {', '.join(fields)})"
    return f"unknown field '{where.path}'; remove it"


def _union_problems(path: str, members: list[tuple[_Where, dict]]) -> list[Problem]:
    """A value that fits none of a union's forms: if it has the shape of one form (an object for a
    model), that form's problems; otherwise one problem naming the forms it may take."""
    deeper: dict[str, list[Problem]] = {}
    forms: list[str] = []
    for where, err in members:
        if where.depth > 0:
            deeper.setdefault(where.member or "", []).append(_problem(where, err))
        else:
            forms.append(_must_be(err["type"], err.get("ctx") or {}))
    if deeper:
        return next(iter(deeper.values()))
    got = _got("", members[0][1]) if members else ""
    named = f"'{path}'" if path else "the body"
    return [Problem(path, f"{named} must be {' or '.join(dict.fromkeys(forms))}{got}")]
