"""Limits on what one request and one tenant may ask: clean URLs and a rate limit.

The rate limit is a fixed window of one minute per tenant (per client address for the signed
endpoints, webhooks and file URLs, which carry no token): a counter in Redis when the broker is
Redis (so every API process shares it; in process memory for a while when Redis does not answer),
in process memory otherwise (the embedded default has one API process). Over the limit answers 429
``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import redis
from flask import Flask, g, request
from prometheus_client import Counter

from api.auth import ROUTE_ROLES, SIGNED
from api.errors import error_response
from orchestrator import broker
from orchestrator.errors import InvalidRequest
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
WINDOW_S = 60
DEGRADED = Counter("switchyard_rate_limit_degraded", "Requests whose rate limit was counted in the API process "
                   "because Redis did not answer.", registry=broker.process_metrics()["registry"])


class MemoryWindow:
    """Fixed-window counters in this process; the clock is injected for tests."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, limit: int) -> float | None:
        """Count one request for ``key``; None if within ``limit``, else seconds until the next window."""
        now = self.clock()
        window = int(now // WINDOW_S)
        with self.lock:
            if len(self.counts) > 10000:  # forget finished windows
                self.counts = {k: v for k, v in self.counts.items() if k[1] == window}
            count = self.counts[(key, window)] = self.counts.get((key, window), 0) + 1
        return None if count <= limit else (window + 1) * WINDOW_S - now


class RedisWindow:
    """Fixed-window counters in Redis, shared by every API process (INCR, then EXPIRE with the window).

    Redis is asked with a short timeout: when it does not answer (down, or frozen), the request is
    counted in this process instead (``MemoryWindow``: the limit then holds per API process) and
    Redis is not asked again for ``retry_after_s``, so a broker outage costs at most one short
    timeout every few seconds, never one per request. Each such request is counted in
    ``switchyard_rate_limit_degraded``."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time, timeout_s: float = 0.05,
                 retry_after_s: float = 5.0):
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.clock = clock
        self.local = MemoryWindow(clock)
        self.retry_after_s = retry_after_s
        self.down_until = 0.0  # time.monotonic() until which Redis is not asked

    def hit(self, key: str, limit: int) -> float | None:
        if time.monotonic() < self.down_until:
            return self._local(key, limit)
        now = self.clock()
        window = int(now // WINDOW_S)
        name = f"switchyard:ratelimit:{key}:{window}"
        try:
            with self.client.pipeline(transaction=False) as pipe:  # one round trip, no MULTI/EXEC
                count, _ = pipe.incr(name).expire(name, WINDOW_S * 2).execute()
        except redis.RedisError as exc:
            if time.monotonic() >= self.down_until:
                log.warning("rate limit counted in this process for %.0f s: Redis did not answer (%s)",
                            self.retry_after_s, exc)
            self.down_until = time.monotonic() + self.retry_after_s
            return self._local(key, limit)
        return None if count <= limit else (window + 1) * WINDOW_S - now

    def _local(self, key: str, limit: int) -> float | None:
        DEGRADED.inc()
        return self.local.hit(key, limit)


def make_window(settings: Settings) -> MemoryWindow | RedisWindow:
    url = settings.resolved_broker_url
    return RedisWindow(url) if url.startswith(("redis://", "rediss://")) else MemoryWindow()


def register(app: Flask, settings: Settings) -> None:
    """Refuse NUL characters in the URL and rate-limit each tenant (after authentication)."""
    window = make_window(settings) if settings.rate_limit_per_min > 0 else None

    @app.before_request
    def _limits():
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
            raise InvalidRequest("the URL may not contain NUL characters")
        who = g.get("principal")
        if who is not None:
            key = who.tenant_id
        elif ROUTE_ROLES.get(request.endpoint) == SIGNED:
            # No tenant before the signature is checked: count the caller's address instead, so a
            # flood of forged deliveries is turned away before it costs a database query each.
            key = f"addr:{request.remote_addr}"
        else:
            return None
        if window is None:
            return None
        wait = window.hit(key, settings.rate_limit_per_min)
        if wait is None:
            return None
        retry_after = str(max(1, math.ceil(wait)))
        return error_response(
            429, "rate_limited", f"over the limit of {settings.rate_limit_per_min} requests a minute; "
            f"retry in {retry_after} s", {"limit_per_min": settings.rate_limit_per_min}, {"Retry-After": retry_after})
