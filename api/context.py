"""Request-scoped helpers: the app's services, a transaction, the JSON body, query parameters."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from orchestrator.errors import InvalidRequest


def services():
    return current_app.extensions["switchyard"]


def json_body() -> Any:
    """The request's JSON body; InvalidRequest if it is missing or malformed."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise InvalidRequest("the request needs a JSON body")
    data = request.get_json(force=True, silent=True)
    if data is None and raw.strip() != b"null":
        raise InvalidRequest("the request body is not valid JSON")
    return data


def json_object(allowed: set[str], required: set[str] = frozenset()) -> dict:
    """A JSON object body with only ``allowed`` keys and every ``required`` one."""
    body = json_body()
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields: {unknown}; allowed: {sorted(allowed)}", {"unknown": unknown})
    missing = sorted(required - set(body))
    if missing:
        raise InvalidRequest(f"missing fields: {missing}", {"missing": missing})
    return body


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
