"""Request-scoped helpers: the app's services, a transaction, the JSON body, query parameters."""

from __future__ import annotations

from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

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

    Raises InvalidRequest naming every problem (``details.problems``; ``details.unknown`` lists
    fields the model does not have).
    """
    if optional and not request.get_data(cache=True).strip():
        return model()
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems, unknown = [], []
        for err in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in err["loc"]) or "body"
            if err["type"] == "extra_forbidden":
                unknown.append(where)
            problems.append(f"{where}: {err['msg']}")
        details: dict[str, Any] = {"problems": problems}
        if unknown:
            details["unknown"] = unknown
        raise InvalidRequest("invalid request body: " + "; ".join(problems), details) from None


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
