"""Domain errors -> the contract's error bodies, in one place. No input produces a 500."""

from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from orchestrator import errors
from orchestrator.db.session import database_unavailable

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
}

HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 415: "invalid_request", 429: "rate_limited"}


def error_response(status: int, code: str, message: str, details: dict | None = None, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


_ANY = re.compile(r"<any\(([^)]*)\):\w+>")


def _action_groups(app: Flask) -> list[tuple[int, re.Pattern, str, list[str]]]:
    """The app's places where the last part of a path names an action: rules sharing a head (the path
    but its last part) and a method, of which one at least offers a choice (``<any(pause, resume):action>``);
    each as (how many parts of the head are fixed, a pattern matching the head and any last part, the
    method, the actions: the choices and the fixed last parts beside them, such as ``fork``). Built once
    per app."""
    cached = app.extensions.get("action_groups")
    if cached is not None:
        return cached
    groups: dict[tuple[str, str], tuple[list[str], bool]] = {}
    for rule in app.url_map.iter_rules():
        head, _, last = rule.rule.rpartition("/")
        choice = _ANY.fullmatch(last)
        if "<" in last and not choice:
            continue
        for method in rule.methods or ():
            actions, offers_choice = groups.get((head, method), ([], False))
            actions += [a.strip() for a in choice.group(1).split(",")] if choice else [last]
            groups[(head, method)] = (actions, offers_choice or bool(choice))
    cached = []
    for (head, method), (actions, offers_choice) in groups.items():
        if offers_choice:
            parts = head.split("/")
            pattern = "/".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts) + "/[^/]+"
            cached.append((sum(not p.startswith("<") for p in parts), re.compile(pattern), method, actions))
    app.extensions["action_groups"] = cached
    return cached


def valid_actions(app: Flask, method: str, path: str) -> list[str]:
    """The actions a path with an unknown last part could have named (POST /runs/{id}/frobnicate: pause,
    resume, …, fork), or [] if no rule of the app ends in a choice of actions there; where several
    places match (/runs/bulk/x is also /runs/{id}/x), the most specific."""
    found = [(static, actions) for static, pattern, wanted, actions in _action_groups(app)
             if wanted == method and pattern.fullmatch(path)]
    return max(found, key=lambda f: f[0])[1] if found else []


def register(app: Flask) -> None:
    @app.errorhandler(errors.SwitchyardError)
    def _domain(exc: errors.SwitchyardError):
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        return error_response(status, exc.code, exc.message, exc.details)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(413, "payload_too_large", f"the request body is over the limit of {limit} bytes",
                              {"limit_bytes": limit})

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        if status == 404:
            valid = valid_actions(app, request.method, request.path)
            if valid:
                return error_response(404, "not_found", f"no action {request.path.rsplit('/', 1)[-1]!r} here; "
                                      f"the actions are {valid}", {"valid_actions": valid})
        return error_response(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name)

    @app.errorhandler(DBAPIError)
    def _database_error(exc: DBAPIError):
        if database_unavailable(exc):
            log.warning("database unavailable: %s", exc.orig)
            return error_response(503, "unavailable", "the database is unavailable; retry shortly",
                                  headers={"Retry-After": "2"})
        log.exception("database error")
        return error_response(500, "internal", "internal error; the request was not applied")

    @app.errorhandler(Exception)
    def _unexpected(exc):
        log.exception("unhandled error")
        return error_response(500, "internal", "internal error; the request was not applied")
