"""What a request is and how its answer is read — no I/O, shared by ``Client`` and ``AsyncClient``.

A ``Call`` describes one request to the API (under ``/api/v1``) and the model its answer becomes;
``read_answer`` turns the answer into that model or raises the error's exception. The event stream's
Server-Sent Events are parsed by ``SseParser``, a line at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from switchyard.client import errors
from switchyard.client.models import Event, EventPage, Run, RunPage, RunSummary


def seg(value: str | int) -> str:
    """A path segment, quoted (an id never changes the path it is put in)."""
    return quote(str(value), safe="")


@dataclass(frozen=True)
class Call:
    """One request: method, path under /api/v1, query, JSON body, and what its answer becomes."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    model: type[BaseModel] | None = None  # None: no body expected (204) or the JSON as it is
    key: str | None = None  # the answer's field to return (a list's items), else the whole model
    headers: dict[str, str] = field(default_factory=dict)

    def query(self) -> dict[str, Any]:
        """The query parameters that are set (None means absent; booleans as the API spells them)."""
        return {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in self.params.items() if v is not None}

    def with_params(self, **params: Any) -> Call:
        return replace(self, params={**self.params, **params})


def read_answer(call: Call, response: httpx.Response) -> Any:
    """The answer as ``call.model`` (or its ``key`` field); raise the error's exception for 4xx/5xx."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise errors.error_for(response.status_code, body, response.headers.get("Retry-After"))
    if response.status_code == 204 or not response.content:
        return None
    data = response.json()
    if call.model is None:
        return data
    parsed = call.model.model_validate(data)
    return getattr(parsed, call.key) if call.key else parsed


def bind(value: Any, client: Any) -> Any:
    """Give every run in ``value`` its client, so ``run.wait()`` works; returns ``value``."""
    runs = value.runs if isinstance(value, RunPage) else value if isinstance(value, list) else [value]
    for item in runs:
        if isinstance(item, RunSummary):
            item._client = client
    return value


# --- pagination: how the next page's call follows from a page --------------------------------------

Advance = Callable[[Call, Any], "tuple[list[Any], Call | None]"]


def by_cursor(field_name: str) -> Advance:
    """Pages by cursor (GET /runs, a step's items): the next call carries ``next_cursor`` until there is none."""

    def advance(call: Call, page: Any) -> tuple[list[Any], Call | None]:
        return getattr(page, field_name), (call.with_params(cursor=page.next_cursor) if page.next_cursor else None)

    return advance


runs_advance = by_cursor("runs")
items_advance = by_cursor("items")


def events_advance(call: Call, page: EventPage) -> tuple[list[Event], Call | None]:
    """GET /runs/{id}/events pages by ``after``: a short page is the last one."""
    full = len(page.events) >= int(call.params.get("limit") or 1000)
    return page.events, (call.with_params(after=page.next_after) if full and page.events else None)


# --- Server-Sent Events ------------------------------------------------------------------------------

@dataclass
class SseParser:
    """Server-Sent Events, fed one line at a time; a blank line completes a message."""

    data: list[str] = field(default_factory=list)
    event_id: str | None = None
    kind: str | None = None
    retry_ms: int | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        """(event name, data, id) when ``line`` completes a message with data, else None."""
        line = line.rstrip("\r\n")
        if not line:
            message = (self.kind or "message", "\n".join(self.data), self.event_id) if self.data else None
            self.data, self.kind = [], None
            return message
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.kind = value
        elif name == "id":
            self.event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def event_of_line(parser: SseParser, line: str) -> Event | None:
    """The run event a stream's ``line`` completes, if it completes one."""
    message = parser.feed(line)
    return stream_event(message) if message else None


def stream_event(message: tuple[str, str, str | None]) -> Event | None:
    """A run event from a stream message (None for anything that is not one)."""
    try:
        data = json.loads(message[1])
    except ValueError:
        return None
    return Event.model_validate(data) if isinstance(data, dict) and "seq" in data else None


def stream_call(run_id: str, after: int) -> Call:
    return Call("GET", f"/runs/{seg(run_id)}/events/stream", {"after": after},
                headers={"Accept": "text/event-stream"})


# Reconnects in a row before follow() gives up on an API that does not answer.
STREAM_RECONNECTS = 5


def reconnect_delay(run_id: str, failures: int, exc: Exception) -> float:
    """How long to wait before reconnecting to a run's stream after ``failures`` failures in a row;
    Unreachable once there have been too many."""
    if failures > STREAM_RECONNECTS:
        raise errors.Unreachable(f"the event stream of {run_id} keeps failing: {exc}") from exc
    return min(0.2 * 2 ** failures, 5.0)


@dataclass
class Poll:
    """``wait``'s schedule: read the run until its status is one of ``statuses``, backing off from 50 ms
    to ``interval``; WaitTimeout once ``timeout`` seconds have passed."""

    run_id: str
    statuses: frozenset[str]
    timeout: float | None
    interval: float
    run: Run | None = None

    def __post_init__(self) -> None:
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self.delay = min(0.05, self.interval)

    def pause_after(self, run: Run) -> float | None:
        """None when ``run`` is where it was awaited; else the seconds to sleep before reading it again."""
        self.run = run
        if run.status in self.statuses:
            return None
        left = None if self.deadline is None else self.deadline - time.monotonic()
        if left is not None and left <= 0:
            raise errors.WaitTimeout(f"run {self.run_id} is still {run.status} after {self.timeout} s", run)
        pause, self.delay = (self.delay if left is None else min(self.delay, left)), min(self.delay * 2, self.interval)
        return pause


# The longest a refused request waits before it is sent again (a Retry-After beyond it is not waited).
MAX_RETRY_PAUSE_S = 10.0


def retry_pause(exc: errors.ApiError, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending again a request refused with ``exc`` (429 rate_limited, 503
    unavailable: the API applied nothing, so sending it again is safe), or None to raise it now."""
    if not isinstance(exc, errors.RateLimited | errors.Unavailable) or attempt > retries:
        return None
    wanted = exc.retry_after if exc.retry_after is not None else 0.5 * 2 ** (attempt - 1)
    return None if wanted > MAX_RETRY_PAUSE_S else wanted
