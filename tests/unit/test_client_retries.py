"""The client sends again what the API refused with 429 or 503 (it applied nothing), after Retry-After,
a bounded number of times; other refusals are raised at once. The API is an httpx transport here."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from switchyard.client import AsyncClient, Client, NotFound, Unavailable, calls, errors

WORKFLOWS = {"workflows": []}


def answering(*statuses: int) -> tuple[list[httpx.Request], httpx.MockTransport, httpx.MockTransport]:
    """Transports (sync, async) answering ``statuses`` in turn, then 200; and the requests they saw."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses[len(seen) - 1] if len(seen) <= len(statuses) else 200
        if status == 200:
            return httpx.Response(200, json=WORKFLOWS)
        code = {429: "rate_limited", 503: "unavailable", 404: "not_found"}[status]
        return httpx.Response(status, json={"error": {"code": code, "message": code, "details": {}}},
                              headers={"Retry-After": "0"})

    return seen, httpx.MockTransport(answer), httpx.MockTransport(answer)


def test_a_rate_limited_then_unavailable_request_is_sent_again_and_answers():
    seen, transport, _ = answering(429, 503)
    with Client("http://api.test", "sy_t", transport=transport) as client:
        assert client.workflows.list() == []
    assert len(seen) == 3 and all(r.headers["Authorization"] == "Bearer sy_t" for r in seen)


def test_the_async_client_sends_again_too_and_gives_up_after_its_retries():
    seen, _, transport = answering(503, 503, 503)

    async def scenario():
        async with AsyncClient("http://api.test", "sy_t", transport=transport, retries=2) as client:
            with pytest.raises(Unavailable):
                await client.workflows.list()

    asyncio.run(scenario())
    assert len(seen) == 3


def test_other_refusals_are_raised_at_once():
    seen, transport, _ = answering(404)
    with Client("http://api.test", "sy_t", transport=transport) as client, pytest.raises(NotFound):
        client.workflows.get("nope")
    assert len(seen) == 1


def test_a_retry_after_longer_than_the_client_waits_is_raised():
    long = errors.RateLimited("slow down", status=429, retry_after=calls.MAX_RETRY_PAUSE_S + 1)
    assert calls.retry_pause(long, 1, 2) is None
    assert calls.retry_pause(errors.Unavailable("down", status=503), 2, 2) == 1.0
