"""``AsyncClient``: the API over httpx, with asyncio. The same resources and methods as ``Client``;
each answers an awaitable, and ``runs.list``, ``runs.events`` and ``runs.follow`` async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from switchyard.client import calls, errors, models
from switchyard.client.calls import Call
from switchyard.client.sync import (
    STREAM_READ_TIMEOUT_S,
    _Resources,
    base_url,
    default_headers,
)


class AsyncClient(_Resources):
    """The Switchyard API at ``url`` with ``token``, for asyncio: ``async with AsyncClient(url, token) as c``."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 2,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = base_url(url)
        self.retries = retries
        self._http = httpx.AsyncClient(base_url=self.url, headers=default_headers(token), timeout=timeout,
                                       transport=transport)
        self._attach()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        attempt = 1
        while True:
            try:
                return await self._send_once(call)
            except (errors.RateLimited, errors.Unavailable) as exc:
                pause = calls.retry_pause(exc, attempt, self.retries)
                if pause is None:
                    raise
                attempt += 1
                await asyncio.sleep(pause)

    async def _send_once(self, call: Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, params=call.query(), json=call.body,
                                                headers=call.headers)
        except httpx.HTTPError as exc:
            raise errors.Unreachable(f"{call.method} {self.url}{call.path}: {exc or type(exc).__name__}") from exc
        return calls.bind(calls.read_answer(call, response), self)

    async def _paginate(self, call: Call | None, advance: calls.Advance) -> AsyncIterator[Any]:
        while call is not None:
            items, call = advance(call, await self._send(call))
            for item in items:
                yield item

    async def _follow(self, run_id: str, after: int) -> AsyncIterator[models.Event]:
        failures = 0
        while True:
            try:
                async for event in self._stream_once(run_id, after):
                    after, failures = event.seq, 0
                    yield event
                return  # the API ended the stream: the run has ended
            except (httpx.TransportError, errors.Unavailable) as exc:
                failures += 1
                await asyncio.sleep(calls.reconnect_delay(run_id, failures, exc))

    async def _stream_once(self, run_id: str, after: int) -> AsyncIterator[models.Event]:
        call = calls.stream_call(run_id, after)
        timeout = httpx.Timeout(self._http.timeout.connect or 10, read=STREAM_READ_TIMEOUT_S)
        async with self._http.stream("GET", call.path, params=call.query(), headers=call.headers,
                                     timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                calls.read_answer(call, response)
            parser = calls.SseParser()
            async for line in response.aiter_lines():
                if (event := calls.event_of_line(parser, line)) is not None:
                    yield event

    async def _wait(self, run_id: str, timeout: float | None, interval: float,
                    statuses: frozenset[str]) -> models.Run:
        poll = calls.Poll(run_id, statuses, timeout, interval)
        while (pause := poll.pause_after(await self.runs.get(run_id))) is not None:
            await asyncio.sleep(pause)
        return poll.run
