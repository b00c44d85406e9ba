"""``Client``: the API over httpx, synchronously."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from switchyard import __version__
from switchyard.client import calls, errors, models, resources
from switchyard.client.calls import Call

# A stream sends a keepalive at least every 15 s; a minute of silence means the connection is gone.
STREAM_READ_TIMEOUT_S = 60.0


def base_url(url: str) -> str:
    """The API's root (…/api/v1) from the server's base URL (with or without /api/v1)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the API's URL must start with http:// or https://, not {url!r}")
    return url if url.endswith("/api/v1") else f"{url}/api/v1"


def default_headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"switchyard-client/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class _Resources:
    """The resources every client has, as attributes."""

    def _attach(self) -> None:
        self.workflows = resources.Workflows(self)
        self.runs = resources.Runs(self)
        self.approvals = resources.Approvals(self)
        self.questions = resources.Questions(self)
        self.events = resources.Events(self)
        self.schedules = resources.Schedules(self)


class Client(_Resources):
    """The Switchyard API at ``url`` (the server's base URL, e.g. ``http://127.0.0.1:8080``) with ``token``.

    Every method answers a typed model or raises an ``ApiError`` subclass named by the error's code
    (``NotFound``, ``InvalidTransition``, …), or ``Unreachable`` when the API does not answer. A request
    refused with 429 or 503 (nothing applied) is sent again up to ``retries`` times, after its
    Retry-After. Use it as a context manager, or ``close()`` it.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 2,
                 transport: httpx.BaseTransport | None = None):
        self.url = base_url(url)
        self.retries = retries
        self._http = httpx.Client(base_url=self.url, headers=default_headers(token), timeout=timeout,
                                  transport=transport)
        self._attach()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        attempt = 1
        while True:
            try:
                return self._send_once(call)
            except (errors.RateLimited, errors.Unavailable) as exc:
                pause = calls.retry_pause(exc, attempt, self.retries)
                if pause is None:
                    raise
                attempt += 1
                time.sleep(pause)

    def _send_once(self, call: Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, params=call.query(), json=call.body,
                                          headers=call.headers)
        except httpx.HTTPError as exc:
            raise errors.Unreachable(f"{call.method} {self.url}{call.path}: {exc or type(exc).__name__}") from exc
        return calls.bind(calls.read_answer(call, response), self)

    def _paginate(self, call: Call | None, advance: calls.Advance) -> Iterator[Any]:
        while call is not None:
            items, call = advance(call, self._send(call))
            yield from items

    def _follow(self, run_id: str, after: int) -> Iterator[models.Event]:
        failures = 0
        while True:
            try:
                for event in self._stream_once(run_id, after):
                    after, failures = event.seq, 0
                    yield event
                return  # the API ended the stream: the run has ended
            except (httpx.TransportError, errors.Unavailable) as exc:
                failures += 1
                time.sleep(calls.reconnect_delay(run_id, failures, exc))

    def _stream_once(self, run_id: str, after: int) -> Iterator[models.Event]:
        call = calls.stream_call(run_id, after)
        timeout = httpx.Timeout(self._http.timeout.connect or 10, read=STREAM_READ_TIMEOUT_S)
        with self._http.stream("GET", call.path, params=call.query(), headers=call.headers,
                               timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                calls.read_answer(call, response)
            parser = calls.SseParser()
            for line in response.iter_lines():
                if (event := calls.event_of_line(parser, line)) is not None:
                    yield event

    def _wait(self, run_id: str, timeout: float | None, interval: float,
              statuses: frozenset[str]) -> models.Run:
        poll = calls.Poll(run_id, statuses, timeout, interval)
        while (pause := poll.pause_after(self.runs.get(run_id))) is not None:
            time.sleep(pause)
        return poll.run
