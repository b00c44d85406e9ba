"""The LLM rate limits as a worker applies them around each model call (orchestrator.ratelimits).

A call that would exceed a limit, and a provider's 429 with Retry-After, raise RateLimited; the
executor turns it into a suspension with a due time (``waiting_on: "rate_limit"``): the worker is
given back and the scheduler queues the step again, at the same attempt, once the time has come.
"""

from __future__ import annotations

import functools
import logging

import redis

from orchestrator import ratelimits
from orchestrator.errors import RetryableStepError
from orchestrator.settings import Settings
from workers.context import StepContext, Suspend

log = logging.getLogger(__name__)

WAITED_KEY = "rate_limit_waited_s"  # in a checkpoint: how long the attempt waited on 429s so far


class RateLimited(Exception):  # noqa: N818 - control flow
    """The call must wait ``wait_s`` seconds: a limit of ours has no room, or the provider said so."""

    def __init__(self, wait_s: float, text: str, waited_s: float = 0.0):
        super().__init__(text)
        self.wait_s, self.text, self.waited_s = wait_s, text, waited_s

    def suspend(self, checkpoint: dict) -> Suspend:
        """The suspension of the step, going on from ``checkpoint`` after the wait."""
        return Suspend("rate_limit", self.text, {**checkpoint, WAITED_KEY: self.waited_s}, due_in_s=self.wait_s)


@functools.cache
def _windows(broker_url: str, window_s: float) -> ratelimits.Windows:
    if broker_url.startswith(("redis://", "rediss://")):
        return ratelimits.RedisWindows(redis.Redis.from_url(broker_url, socket_timeout=5), window_s)
    return ratelimits.MemoryWindows(window_s)  # the embedded default: this process' threads


def windows(settings: Settings) -> ratelimits.Windows:
    """This process' window logs: in Redis when the broker is Redis, else in memory."""
    return _windows(settings.resolved_broker_url, settings.rate_limit_window_s)


def admit(ctx: StepContext, model: str, estimate: int) -> ratelimits.Grant | None:
    """Charge a call of ``model`` ("openai/gpt-4o-mini") to every limit that applies (the
    installation's and the tenant's); raise RateLimited if one has no room. None with no limits."""
    tenant = ctx.tenant_policy.rate_limits if ctx.tenant_policy is not None else None
    limits = ratelimits.limits_for(model, ctx.settings.rate_limits,
                                   {k: v.model_dump(exclude_none=True) for k, v in (tenant or {}).items()},
                                   ctx.tenant_id)
    if not limits:
        return None
    granted = windows(ctx.settings).reserve(limits, estimate)
    if isinstance(granted, ratelimits.Grant):
        return granted
    names = ", ".join(f"{lim.key} {lim.kind}={lim.limit}{' (the tenant policy)' if lim.tenant else ''}"
                      for lim in limits)
    raise RateLimited(granted, f"rate limit of {names}: the call waits {granted:.1f}s for room",
                      waited_s=_waited(ctx))


def settle(ctx: StepContext, grant: ratelimits.Grant | None, tokens: int) -> None:
    """Charge the tokens the call used instead of its estimate."""
    if grant is not None:
        windows(ctx.settings).settle(grant, tokens)


def provider_busy(ctx: StepContext, retry_after_s: float, status: int) -> RateLimited:
    """The provider answered 429 with Retry-After: wait that long without spending an attempt, unless
    the attempt's waits would come to more than SWITCHYARD_MAX_RATE_LIMIT_WAIT_S in all, then a
    retryable llm_unavailable."""
    waited = _waited(ctx) + retry_after_s
    if waited > ctx.settings.max_rate_limit_wait_s:
        raise RetryableStepError(
            f"the LLM provider answered {status} with Retry-After {retry_after_s:g}s; with the waits before, that is "
            f"{waited:g}s, past SWITCHYARD_MAX_RATE_LIMIT_WAIT_S={ctx.settings.max_rate_limit_wait_s:g}; the step is "
            "retried after its backoff (raise the setting or the provider's limits to wait longer)",
            code="llm_unavailable")
    return RateLimited(retry_after_s, f"the LLM provider answered {status}: retry after {retry_after_s:g}s",
                       waited_s=waited)


def _waited(ctx: StepContext) -> float:
    return float((ctx.checkpoint or {}).get(WAITED_KEY) or 0.0)
