"""The LLM rate limits' sliding windows (orchestrator.ratelimits), with the clock injected; the Redis
script against the real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from orchestrator import ratelimits
from orchestrator.ratelimits import REQUESTS, TOKENS, Grant, Limit, MemoryWindows, RedisWindows, wait_for_room
from workers.providers.openai import retry_after_s


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_wait_for_room_is_zero_while_the_window_has_room():
    assert wait_for_room([(990.0, 40)], 1000.0, 100, 60) == 0


def test_wait_for_room_waits_for_the_oldest_charges_to_leave_the_window():
    log = [(950.0, 50), (970.0, 30), (990.0, 20)]
    # 100 used; 30 more needs the charge of 950 gone: at 1010.
    assert wait_for_room(log, 1000.0, 100, 30) == pytest.approx(10.0)
    # 60 more needs 950 and 970 gone: at 1030.
    assert wait_for_room(log, 1000.0, 100, 60) == pytest.approx(30.0)


def test_charges_older_than_the_window_do_not_count():
    assert wait_for_room([(939.0, 100)], 1000.0, 100, 100) == 0
    assert wait_for_room([(939.0, 100)], 1000.0, 100, 100, window_s=70) == pytest.approx(9.0)


def test_a_call_larger_than_the_limit_goes_alone_once_the_window_is_empty():
    assert wait_for_room([], 1000.0, 100, 500) == 0
    assert wait_for_room([(990.0, 1)], 1000.0, 100, 500) == pytest.approx(50.0)


def test_limits_for_takes_the_provider_and_the_model_of_the_installation_and_of_the_tenant():
    installation = {"openai": {"requests_per_min": 100}, "openai/gpt-4o-mini": {"tokens_per_min": 1000}}
    tenant = {"openai/gpt-4o-mini": {"tokens_per_min": 500, "requests_per_min": 10}, "other": {"requests_per_min": 1}}
    found = set(ratelimits.limits_for("openai/gpt-4o-mini", installation, tenant, "acme"))
    assert found == {Limit("openai", REQUESTS, 100), Limit("openai/gpt-4o-mini", TOKENS, 1000),
                     Limit("openai/gpt-4o-mini", TOKENS, 500, "acme"), Limit("openai/gpt-4o-mini", REQUESTS, 10, "acme")}
    assert ratelimits.limits_for("openai/gpt-4o", installation, tenant, "acme") == [Limit("openai", REQUESTS, 100)]
    assert ratelimits.limits_for("scripted/scripted", installation, None) == []


def test_a_tenants_limit_counts_its_own_calls_and_the_installations_every_tenants():
    windows = MemoryWindows(window_s=60, clock=Clock())
    table = {"openai": {"requests_per_min": 1}}
    assert isinstance(windows.reserve(ratelimits.limits_for("openai/m", None, table, "acme"), 1), Grant)
    assert isinstance(windows.reserve(ratelimits.limits_for("openai/m", None, table, "globex"), 1), Grant)
    assert windows.reserve(ratelimits.limits_for("openai/m", None, table, "acme"), 1) > 0
    installation = ratelimits.limits_for("openai/m", {"openai": {"requests_per_min": 1}})
    assert isinstance(windows.reserve(installation, 1), Grant)
    assert windows.reserve(installation, 1) > 0


def test_memory_windows_never_let_a_window_hold_more_than_the_limit():
    clock = Clock()
    windows = MemoryWindows(window_s=60, clock=clock)
    limits = [Limit("openai", TOKENS, 100), Limit("openai", REQUESTS, 3)]
    first = windows.reserve(limits, 40)
    assert isinstance(first, Grant)
    clock.now += 10
    assert isinstance(windows.reserve(limits, 40), Grant)
    clock.now += 10
    # 80 tokens held: 40 more must wait until the first call (at 1000) leaves the window, at 1060.
    assert windows.reserve(limits, 40) == pytest.approx(40.0)
    # Charged from the reported usage, as of its answer (now, 1020): the first call used 10 tokens,
    # not 40: now there is room.
    windows.settle(first, 10)
    assert isinstance(windows.reserve(limits, 40), Grant)
    clock.now += 1
    # Three requests in the window: the fourth waits for the oldest charge, the second call's (1010),
    # to leave it; the first call's counts from its answer (1020) on.
    assert windows.reserve(limits, 1) == pytest.approx(49.0)
    clock.now = 1070.0
    assert isinstance(windows.reserve(limits, 1), Grant)


def test_a_refused_call_charges_nothing():
    clock = Clock()
    windows = MemoryWindows(window_s=60, clock=clock)
    tokens, requests = Limit("m", TOKENS, 10), Limit("m", REQUESTS, 100)
    assert windows.reserve([tokens, requests], 10) != 0
    assert windows.reserve([tokens, requests], 1) > 0  # refused: the request limit is not charged either
    assert len(windows.logs[requests.log_name]) == 1


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("2") == 2.0
    assert retry_after_s("0.5") == 0.5
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == pytest.approx(10.0)


@pytest.fixture
def redis_windows():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    windows = RedisWindows(client, window_s=2.0)
    windows.PREFIX = f"test:ratelimit:{uuid.uuid4().hex}:"
    yield windows
    for key in client.scan_iter(windows.PREFIX + "*"):
        client.delete(key)


def test_redis_windows_share_one_log_and_settle_from_usage(redis_windows):
    other = RedisWindows(redis_windows.client, window_s=2.0)  # as another worker process would
    other.PREFIX = redis_windows.PREFIX
    limits = [Limit("openai/m", TOKENS, 100), Limit("openai", REQUESTS, 5)]
    first = redis_windows.reserve(limits, 60)
    assert isinstance(first, Grant)
    wait = other.reserve(limits, 60)
    assert isinstance(wait, float) and 0 < wait <= 2.0
    redis_windows.settle(first, 20)  # the call used 20 tokens: 60 more now fit
    assert isinstance(other.reserve(limits, 60), Grant)
    # The refused call charged no request: 2 of 5 requests are held.
    assert redis_windows.client.zcard(redis_windows.PREFIX + "|openai|requests_per_min") == 2
