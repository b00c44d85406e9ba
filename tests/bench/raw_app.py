"""The raw Celery baseline of `make bench`: no-op tasks on the same broker, with Switchyard's own
Celery configuration (``broker.make_celery``: acks late, prefetch 1, task events on).

``link`` records its start and end times (``time.time()``) in a Redis list, so the bench can measure
the gap between one link of a chain finishing and the next starting; ``noop`` counts itself and
keeps the first start and the last end, for throughput. Started as
``celery --app tests.bench.raw_app worker --queues bench.raw``.
"""

from __future__ import annotations

import time

import redis

from orchestrator import broker
from orchestrator.settings import load

QUEUE = "bench.raw"
CHAIN_KEY = "bench:chain"
COUNT_KEY, FIRST_KEY, LAST_KEY = "bench:noop:count", "bench:noop:first", "bench:noop:last"

settings = load()
app = broker.make_celery(settings)
app.conf.task_routes = {"bench.*": {"queue": QUEUE}}
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.resolved_broker_url)
    return _client


@app.task(name="bench.link", ignore_result=True)
def link(i: int) -> None:
    started = time.time()
    _redis().rpush(CHAIN_KEY, f"{i} {started} {time.time()}")


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    started = time.time()
    pipe = _redis().pipeline(transaction=False)
    pipe.set(FIRST_KEY, started, nx=True)
    pipe.incr(COUNT_KEY)
    pipe.set(LAST_KEY, time.time())
    pipe.execute()
