"""Request-scoped helpers: the app's services, a transaction, the JSON body, query parameters."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from orchestrator import wording
from orchestrator.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def services():
    return current_app.extensions["switchyard"]


def json_body() -> Any:
    """The request's JSON body; InvalidRequest if it is missing or malformed."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise InvalidRequest("the request needs a JSON body")
    try:
        data = request.get_json(force=True, silent=True)
    except RecursionError:
        data, raw = None, b"!"  # nested beyond what the parser can follow
    if data is None and raw.strip() != b"null":
        raise InvalidRequest("the request body is not valid JSON (or is nested too deeply)")
    problem = json_problem(data)
    if problem:
        raise InvalidRequest(problem)
    return data


MAX_JSON_DEPTH = 64


def json_problem(value: Any) -> str | None:
    """Why a parsed JSON value is refused, or None: a NUL character anywhere (PostgreSQL stores none in
    text or JSONB), or nesting deeper than MAX_JSON_DEPTH (which recursive code downstream cannot
    follow). Iterative, so it cannot itself run out of stack."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if "\x00" in item:
                return "strings in the body may not contain NUL (\\u0000) characters"
        elif isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def parse_body(model: type[M], *, optional: bool = False) -> M:
    """The JSON body validated by ``model``; with ``optional``, no body at all means ``model()``.

    Raises InvalidRequest naming every problem in plain words (orchestrator.wording: the field path and
    what to do, never pydantic's words): ``details.problems``, ``details.field`` when one field is at
    fault, ``details.unknown`` listing fields the model does not have.
    """
    if optional and not request.get_data(cache=True).strip():
        return model()
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", {"problems": ["the request body must be a "
                                                                                    "JSON object"]})
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        found = wording.problems(exc, model)
        raise InvalidRequest("invalid request body: " + wording.joined(found), problem_details(found)) from None


def problem_details(found: list[wording.Problem]) -> dict[str, Any]:
    """An invalid_request's details for these problems: ``problems`` (the sentences), ``field`` (the one
    field at fault, if there is one) and ``unknown`` (fields the body may not have, if any)."""
    details: dict[str, Any] = {"problems": [p.message for p in found]}
    fields = {p.field for p in found}
    if len(fields) == 1 and "" not in fields:
        details["field"] = fields.pop()
    unknown = [p.field for p in found if p.unknown]
    if unknown:
        details["unknown"] = unknown
    return details


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"query parameter {name!r} must be an integer from {low} to {high}") from None
    if not low <= value <= high:
        raise InvalidRequest(f"query parameter {name!r} must be from {low} to {high}, got {value}")
    return value
