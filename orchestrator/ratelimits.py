"""LLM rate limits: requests and tokens per minute by provider or ``provider/model``, as sliding
window logs shared by every worker (docs/flow-control.md, "LLM rate limits").

A limit's window is a log of charges (when, how much). A call is let through only if, with its
estimate charged now, no window of ``window_s`` seconds would hold more than the limit; otherwise it
learns how long until the oldest charges have left the window and there is room (its step waits
that long with its worker given back). After the call its charges are replaced by the provider's
reported usage, stamped with the time of the answer: a call counts from the moment it is let
through until a window's length after it was answered, so every window in which the provider saw
the request holds its charge, however long the request took to get there.

Where the logs live: in Redis (one Lua script checks and charges every limit of a call at once, so
workers on every machine share them) when the broker is Redis; on the embedded default (filesystem
broker, SQLite) in the worker process' memory, which holds across the threads of one worker.

Why not pyrate-limiter (installed): its buckets take a weight before the call and cannot change a
charge afterwards, which charging from the reported usage needs.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

REQUESTS, TOKENS = "requests_per_min", "tokens_per_min"
KINDS = (REQUESTS, TOKENS)
WINDOW_S = 60.0


@dataclass(frozen=True)
class Limit:
    """One limit on one key: at most ``limit`` of ``kind`` (requests or tokens) in any window, of the
    calls of every tenant (``tenant`` empty: the installation's limit) or of one tenant's (its policy's)."""

    key: str  # "openai" or "openai/gpt-4o-mini"
    kind: str  # REQUESTS or TOKENS
    limit: int
    tenant: str = ""

    @property
    def log_name(self) -> str:
        return f"{self.tenant}|{self.key}|{self.kind}"


def limits_for(model: str, installation: Mapping[str, Mapping[str, int]] | None,
               tenant: Mapping[str, Mapping[str, int]] | None = None, tenant_id: str = "") -> list[Limit]:
    """Every limit that applies to a call of ``model`` ("openai/gpt-4o-mini"): the provider's and the
    model's, the installation's (counting every tenant's calls) and the tenant's (counting its own);
    all of them must have room."""
    provider = model.partition("/")[0]
    found = []
    for table, scope in ((installation, ""), (tenant, tenant_id)):
        for key in dict.fromkeys((provider, model)):
            for kind, limit in ((table or {}).get(key) or {}).items():
                if kind in KINDS and limit is not None:
                    found.append(Limit(key, kind, int(limit), scope))
    return found


def wait_for_room(log: Sequence[tuple[float, float]], now: float, limit: float, amount: float,
                  window_s: float = WINDOW_S) -> float:
    """Seconds until ``amount`` can be charged to a window log of (time, amount) charges without any
    window holding more than ``limit``; 0 if it fits now. An amount larger than the limit is taken as
    the limit (it goes through alone, once the window is empty) rather than never."""
    amount = min(amount, limit)
    live = sorted((t, a) for t, a in log if t > now - window_s)
    used = sum(a for _, a in live)
    if used + amount <= limit:
        return 0.0
    for at, charged in live:  # oldest first: room comes as they leave the window
        used -= charged
        if used + amount <= limit:
            return max(at + window_s - now, 0.0)
    return window_s  # unreachable: an empty window has room for the limit


@dataclass(frozen=True)
class Grant:
    """What a let-through call reserved: the id of its charges and their amounts (one per limit), to
    settle them from its usage."""

    charge_id: str
    limits: tuple[Limit, ...]
    amounts: tuple[float, ...]


def _charges(limits: Sequence[Limit], tokens: float) -> tuple[float, ...]:
    """What a call of ``tokens`` is charged on each limit: one request, or its tokens (at most the
    limit: a larger call goes through alone, once the window is empty)."""
    return tuple(min(1 if lim.kind == REQUESTS else max(tokens, 0), lim.limit) for lim in limits)


class Windows(Protocol):
    def reserve(self, limits: Sequence[Limit], tokens: int) -> Grant | float:
        """Charge one request and ``tokens`` to every limit if all have room (a Grant), else the
        seconds until they may (nothing charged)."""

    def settle(self, grant: Grant, tokens: int) -> None:
        """Replace the grant's token estimate by the tokens the call used, every charge of the grant
        stamped with the time of the answer."""


class MemoryWindows:
    """The window logs in this process' memory (the embedded default): shared by its threads only."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.time):
        self.window_s, self.clock = window_s, clock
        self.logs: dict[str, dict[str, tuple[float, float]]] = {}
        self.lock = threading.Lock()

    def reserve(self, limits: Sequence[Limit], tokens: int) -> Grant | float:
        """See Windows.reserve."""
        with self.lock:
            now, amounts = self.clock(), _charges(limits, tokens)
            wait = 0.0
            for lim, amount in zip(limits, amounts, strict=True):
                log = self._pruned(lim.log_name, now)
                wait = max(wait, wait_for_room(list(log.values()), now, lim.limit, amount, self.window_s))
            if wait > 0:
                return wait
            grant = Grant(uuid.uuid4().hex, tuple(limits), amounts)
            for lim, amount in zip(limits, amounts, strict=True):
                self.logs.setdefault(lim.log_name, {})[grant.charge_id] = (now, amount)
            return grant

    def settle(self, grant: Grant, tokens: int) -> None:
        """See Windows.settle."""
        with self.lock:
            now = self.clock()
            for lim, amount in zip(grant.limits, _charges(grant.limits, tokens), strict=True):
                log = self.logs.get(lim.log_name, {})
                if grant.charge_id in log:
                    log[grant.charge_id] = (now, amount)

    def _pruned(self, name: str, now: float) -> dict[str, tuple[float, float]]:
        log = self.logs.setdefault(name, {})
        for charge_id in [c for c, (at, _) in log.items() if at <= now - self.window_s]:
            del log[charge_id]
        return log


# KEYS: one sorted set per limit (member "<charge id>:<amount>", score the time). ARGV: window_s,
# charge id, then per key its limit and amount. Every limit is checked before any is charged, so a
# call is charged everywhere or nowhere; the time is Redis' own, the same for every machine.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local log = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local used = 0
  for j = 1, #log, 2 do used = used + tonumber(string.match(log[j], ':([^:]+)$')) end
  if used + amount > limit then
    for j = 1, #log, 2 do
      used = used - tonumber(string.match(log[j], ':([^:]+)$'))
      if used + amount <= limit then
        wait = math.max(wait, tonumber(log[j + 1]) + window - now)
        break
      end
    end
  end
end
if wait > 0 then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2] .. ':' .. ARGV[2 + 2 * i])
  redis.call('EXPIRE', key, math.ceil(window) + 1)
end
return {1, '0'}
"""

# KEYS: the logs of a grant. ARGV: charge id, then per key the amount charged and the amount used.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
for i, key in ipairs(KEYS) do
  if redis.call('ZREM', key, ARGV[1] .. ':' .. ARGV[2 * i]) == 1 then
    redis.call('ZADD', key, now, ARGV[1] .. ':' .. ARGV[1 + 2 * i])
  end
end
return 1
"""


class RedisWindows:
    """The window logs in Redis, shared by every worker process on every machine."""

    PREFIX = "switchyard:ratelimit:"

    def __init__(self, client: Any, window_s: float = WINDOW_S):
        self.client, self.window_s = client, window_s
        self._reserve, self._settle = client.register_script(_RESERVE), client.register_script(_SETTLE)

    def reserve(self, limits: Sequence[Limit], tokens: int) -> Grant | float:
        """See Windows.reserve."""
        charge_id, amounts = uuid.uuid4().hex, tuple(int(a) for a in _charges(limits, tokens))
        args: list[Any] = [self.window_s, charge_id]
        for lim, amount in zip(limits, amounts, strict=True):
            args += [lim.limit, amount]
        granted, value = self._reserve(keys=self._keys(limits), args=args)
        if not int(granted):
            return max(float(value), 0.001)
        return Grant(charge_id, tuple(limits), amounts)

    def settle(self, grant: Grant, tokens: int) -> None:
        """See Windows.settle."""
        args: list[Any] = [grant.charge_id]
        for charged, used in zip(grant.amounts, _charges(grant.limits, tokens), strict=True):
            args += [int(charged), int(used)]
        self._settle(keys=self._keys(grant.limits), args=args)

    def _keys(self, limits: Sequence[Limit]) -> list[str]:
        return [self.PREFIX + lim.log_name for lim in limits]


def estimate_tokens(prompt_words: int, max_tokens: int | None = None) -> int:
    """What a call is charged before it is made: its prompt (in words, times 4/3 as tokenizers count
    them) and the reply it may get (``max_tokens``, else as much as the prompt). The provider's
    reported usage replaces it after the call; a call that used more than its estimate can make a
    window hold more than the limit by that difference (docs/flow-control.md)."""
    prompt = math.ceil(prompt_words * 4 / 3)
    return prompt + (max_tokens if max_tokens is not None else prompt)
