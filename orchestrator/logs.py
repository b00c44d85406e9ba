"""Logging: one line per record, as JSON or text, carrying the run it concerns.

Code that works on a run binds it (``with logs.bound(run_id=…, step_id=…, attempt=…, tenant=…)``);
every record logged inside, by any logger, carries those fields, and ``extra={"run_id": …}`` on a
single call works too. A ContextVar holds the binding, so threads and requests never mix theirs.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

RUN_FIELDS = ("tenant", "run_id", "step_id", "attempt")
FORMATS = ("text", "json")

_bound: ContextVar[dict[str, Any] | None] = ContextVar("switchyard_log_fields", default=None)


def bind(**fields: Any) -> Token:
    """Add fields to the current context (None values are ignored); undo with ``unbind(token)``."""
    return _bound.set({**(_bound.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: Token) -> None:
    _bound.reset(token)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """The fields are on every record logged inside the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The run fields of a record: its own ``extra`` first, then what the context binds."""
    context = _bound.get() or {}
    found = {}
    for name in RUN_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = context.get(name)
        if value is not None:
            found[name] = value
    return found


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "tenant", "run_id", "step_id", "attempt", "pid", "exc"}``."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **fields(record),
            "pid": record.process,
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line, with ``[run_id=… step_id=…]`` when the record concerns a run."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        found = fields(record)
        if not found:
            return line
        head, sep, tail = line.partition("\n")
        return head + " [" + " ".join(f"{k}={v}" for k, v in found.items()) + "]" + sep + tail


def configure(log_format: str = "text", level: str | int = "INFO") -> None:
    """Send every logger's records to stderr as ``log_format`` lines (replacing the root's handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
