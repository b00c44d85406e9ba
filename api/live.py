"""Live streams as Server-Sent Events: one run's events, and the tenant's run status changes.

A stream holds one worker thread of the API for as long as it is open (README "Live streams").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from flask import Blueprint, Response, request, stream_with_context

from api.auth import principal
from api.context import int_arg, services
from orchestrator import streams
from orchestrator.db import repository as repo
from orchestrator.errors import InvalidRequest, NotFound

bp = Blueprint("live", __name__)

MAX_SEQ = 2**31 - 1
# Browsers' EventSource reconnects after this many milliseconds, sending Last-Event-ID.
RETRY_MS = 1000


def sse(event_id: str | int | None, kind: str, data: dict) -> str:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {kind}", f"data: {json.dumps(data, separators=(',', ':'), default=str)}"]
    return "\n".join(lines) + "\n\n"


def _after() -> int:
    """Where to resume: the Last-Event-ID header (an event's seq), else ``?after=``, else 0."""
    header = request.headers.get("Last-Event-ID")
    if header is None or header.strip() == "":
        return int_arg("after", 0, 0, MAX_SEQ)
    try:
        value = int(header)
    except ValueError:
        raise InvalidRequest("Last-Event-ID must be the seq of an event this stream sent") from None
    if not 0 <= value <= MAX_SEQ:
        raise InvalidRequest("Last-Event-ID is out of range")
    return value


def _response(items: Iterable[str]) -> Response:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a live stream
    return Response(stream_with_context(items), mimetype="text/event-stream", headers=headers)


@bp.get("/runs/<run_id>/events/stream")
def run_stream(run_id: str):
    """The run's events after Last-Event-ID / ``after``, then live; ends once the run is terminal."""
    return follow_run(run_id)


def follow_run(run_id: str, *, typed: bool = True) -> Response:
    """The run's stream for the caller's tenant; each message named by its event type, or (``typed``
    false, for a browser's ``EventSource.onmessage``) all of them plain messages."""
    after = _after()
    svc = services()
    with svc.sessions() as session:
        if repo.get_run(session, principal().tenant_id, run_id) is None:
            raise NotFound(f"run {run_id!r} not found")
    follow = streams.follow_run(svc.sessions, svc.bus, svc.settings, run_id, after)

    def items() -> Iterator[str]:
        try:
            yield f"retry: {RETRY_MS}\n\n"
            for event in follow:
                yield ": keepalive\n\n" if event is streams.KEEPALIVE else sse(event["seq"], event["type"] if typed else "message", event)
        finally:
            follow.close()  # the client may leave before the follower ever ran

    return _response(items())


@bp.get("/events/stream")
def tenant_stream():
    """The tenant's run status changes as they happen (no replay: read GET /runs after reconnecting)."""
    svc = services()
    changes = streams.follow_tenant(svc.bus, svc.sessions, svc.settings, principal().tenant_id)

    def items() -> Iterator[str]:
        try:
            yield f"retry: {RETRY_MS}\n\n"
            for change in changes:
                if change is streams.KEEPALIVE:
                    yield ": keepalive\n\n"
                else:
                    yield sse(f"{change['run_id']}:{change['seq']}", "run_status", change)
        finally:
            changes.close()  # closes the subscription, even if the generator never started

    return _response(items())
