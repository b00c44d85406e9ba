"""Domain errors -> the contract's error bodies, in one place. No input produces a 500."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
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
